"""Synchronized batch norm across processes with PyTorch's `torch.distributed` (gloo).

The Keras model is a `torch.nn.Module` on the PyTorch backend, so it is trained
the PyTorch way: wrapped in `DistributedDataParallel`, with a `torch.optim`
optimizer. `ManualBatchNorm(synchronized=True)` all-reduces its statistics over
the default process group, forward and backward.

Two processes on this machine (the script starts both and checks them):

    KERAS_BACKEND=torch python examples/sync_bn_torch.py
    KERAS_BACKEND=torch python examples/sync_bn_torch.py --benchmark

Several hosts, one process each, with `torchrun` (run on every host, with its
own `--node-rank`; HOST0 is the first host's address):

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 \\
        --master-addr HOST0 --master-port 29500 examples/sync_bn_torch.py

or by hand: `python examples/sync_bn_torch.py --rank R --world-size N --host
HOST0 --port 29500` on each host. Every worker prints its result as JSON.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sync_bn_common as common
import sync_bn_launch as launcher

BENCHMARK_BATCH = 50  # images per worker and step (the notebook's batch is 50)


def _sum_hook(process_group, bucket):
    """A DDP communication hook that sums the gradients over the processes (DDP's default averages).

    Each worker's loss is its share of the global mean (its sum over the
    global batch size), so the sum over workers is the gradient of the global loss.
    """
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def train(model, batches, wrap=None):
    """Trains `model` with SGD on `batches` of `(x, y)`; returns the gradients w.r.t. every `x`.

    `wrap` turns the model into what is called (`DistributedDataParallel`).
    The loss of a batch is its squared error summed over examples and outputs,
    divided by the global batch size and the number of outputs.
    """
    import torch

    module = wrap(model) if wrap else model
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=common.LEARNING_RATE
    )
    input_grads = []
    for x, y in batches:
        x = torch.tensor(x, requires_grad=True)
        outputs = module(x, training=True)
        loss = ((outputs - torch.tensor(y)) ** 2).sum() / (
            common.GLOBAL_BATCH * common.OUTPUTS
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        input_grads.append(x.grad.numpy().copy())
    return input_grads


def ddp(model):
    """Wraps `model` in `DistributedDataParallel` with gradients summed over the processes."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(model)
    wrapped.register_comm_hook(None, _sum_hook)
    return wrapped


def check_fit(rank):
    """Trains with DDP on this worker's halves; returns what the single-process check needs."""
    import keras

    keras.utils.set_random_seed(0)
    model = common.build_model()
    initial = common.weights_of(model)
    x, y = common.global_data()
    part = common.local_slice(rank, common.EVEN_SPLIT)
    grads = train(
        model, [(x[s, part], y[s, part]) for s in range(common.STEPS)], wrap=ddp
    )
    return initial, common.weights_of(model), grads


def check_uneven(rank):
    """A synchronized `ManualBatchNorm` on 12 or 20 examples; returns the errors against NumPy."""
    import keras
    import torch

    from keras_bn import ManualBatchNorm

    x, w = common.uneven_data()
    part = common.local_slice(rank, common.UNEVEN_SPLIT)
    layer = ManualBatchNorm(synchronized=True, momentum=common.MOMENTUM)
    inputs = torch.tensor(x[part], requires_grad=True)
    outputs = layer(inputs, training=True)
    (outputs * torch.tensor(w[part])).sum().div(common.GLOBAL_BATCH).backward()
    return common.uneven_report(
        rank,
        outputs.detach().numpy(),
        inputs.grad.numpy(),
        keras.ops.convert_to_numpy(layer.moving_mean),
        keras.ops.convert_to_numpy(layer.moving_variance),
    )


def reference_fit(rank, initial, final, grads):
    """One process, no process group: the same training on the concatenated batches."""
    model = common.build_model()
    for v in model.variables:
        v.assign(initial[v.path])
    x, y = common.global_data()
    reference_grads = train(model, list(zip(x, y)))
    part = common.local_slice(rank, common.EVEN_SPLIT)
    reference = common.weights_of(model)
    moving = [k for k in reference if "moving" in k]
    return {
        "weights_error": common.max_gap(final, reference),
        "moving_statistics_error": common.max_gap(
            {k: final[k] for k in moving}, {k: reference[k] for k in moving}
        ),
        "input_grad_error": max(
            float(abs(g - r[part]).max()) for g, r in zip(grads, reference_grads)
        ),
        "input_grad_scale": max(float(abs(r).max()) for r in reference_grads),
        "weights_scale": max(float(abs(v).max()) for v in reference.values()),
        "weights_moved": common.max_gap(initial, reference),
    }


def benchmark(rank, world_size, steps=8):
    """Median seconds per DDP training step of `deep_mnist_model`, synchronized or not."""
    import functools

    import keras
    import numpy as np
    import torch

    from keras_bn import ManualBatchNorm, deep_mnist_model

    x = (
        np.random.default_rng(rank)
        .normal(size=(BENCHMARK_BATCH, 28, 28, 1))
        .astype("float32")
    )
    y = np.zeros((BENCHMARK_BATCH, 10), "float32")
    times = {}
    for synchronized in (False, True):
        keras.utils.set_random_seed(0)
        model = deep_mnist_model(
            bn=functools.partial(ManualBatchNorm, synchronized=synchronized)
        )
        module = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.01
        )
        elapsed = []
        for _ in range(steps + 2):  # the first two are warm-up
            start = time.perf_counter()
            loss = (
                (module(torch.tensor(x), training=True) - torch.tensor(y)) ** 2
            ).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            elapsed.append(time.perf_counter() - start)
        times["synchronized" if synchronized else "local"] = float(
            np.median(elapsed[2:])
        )
    return {
        "batch_per_worker": BENCHMARK_BATCH,
        "workers": world_size,
        "seconds_per_step": times,
    }


def worker(args):
    """One worker: joins the gloo group, runs the checks (or the benchmark), writes its result."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    init = f"tcp://{args.host}:{args.port}" if args.port else "env://"
    dist.init_process_group(
        "gloo", init_method=init, rank=args.rank, world_size=args.world_size
    )
    result = {"rank": args.rank, "world_size": dist.get_world_size(), "warnings": []}
    try:
        if args.benchmark:
            result["benchmark"] = benchmark(args.rank, args.world_size)
        else:
            with launcher.warnings_of_interest(result["warnings"]):
                initial, final, grads = check_fit(args.rank)
                result["uneven"] = check_uneven(args.rank)
    finally:
        dist.destroy_process_group()
    if not args.benchmark:
        # The process group is gone: synchronized=True now changes nothing.
        result["fit"] = reference_fit(args.rank, initial, final, grads)
        result["final_weights"] = {k: v.tolist() for k, v in final.items()}
    launcher.write_result(args.result, result)


def main(argv=None):
    """Launches two workers on 127.0.0.1, or is one worker (with `--rank` or under torchrun)."""
    args = launcher.parse_worker_args(__doc__.splitlines()[0], argv)
    if args.rank is None and "RANK" in os.environ:  # started by torchrun
        args.rank, args.world_size = (
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
        )
    if args.rank is not None:
        return worker(args)
    (port,) = launcher.free_ports(1)
    return launcher.run_launcher(
        __file__, "torch", args, extra_args=["--port", str(port)]
    )


if __name__ == "__main__":
    main()
