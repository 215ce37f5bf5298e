"""Synchronized batch norm across processes with TensorFlow's `MultiWorkerMirroredStrategy`.

Each worker reads the cluster and its own place in it from `TF_CONFIG`, builds
and compiles the model under `strategy.scope()` and calls `model.fit`;
`ManualBatchNorm(synchronized=True)` all-reduces its sums, counts and squared
deviations over the workers (and, in the backward pass, their gradients).

Two processes on this machine (the script picks two free ports, writes each
worker's `TF_CONFIG`, starts both and checks them):

    KERAS_BACKEND=tensorflow python examples/sync_bn_tf_multiworker.py
    KERAS_BACKEND=tensorflow python examples/sync_bn_tf_multiworker.py --benchmark

Several hosts, one worker each: the same cluster list on every host, and the
host's own index (0 on HOST0, 1 on HOST1, ...):

    export TF_CONFIG='{"cluster": {"worker": ["HOST0:12345", "HOST1:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    KERAS_BACKEND=tensorflow python examples/sync_bn_tf_multiworker.py --rank 0 --world-size 2

Every worker prints its result as JSON. `model.fit` gives every worker the same
number of examples per step (16 and 16 here); uneven batches (12 and 20) go
through a custom step, `strategy.run` on each worker's own tensors.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sync_bn_common as common
import sync_bn_launch as launcher

BENCHMARK_BATCH = 50  # images per worker and step (the notebook's batch is 50)


def tf_config(rank, ports):
    """Returns the `TF_CONFIG` of worker `rank` in a cluster of workers on 127.0.0.1 at `ports`."""
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": rank},
        }
    )


def make_step(strategy, model, optimizer):
    """Returns a compiled training step of `model` on every worker of `strategy`.

    Keras's own train step, written out: the loss of a worker is its squared
    error summed over examples and outputs, divided by the global batch size and
    the number of outputs (so the sum over workers is the global mean), and the
    Keras optimizer sums the gradients over the workers before it applies them.
    The step returns this worker's gradient with respect to its inputs.
    """
    import tensorflow as tf

    @tf.function
    def step(x, y):
        """One step on every worker; returns this worker's gradient w.r.t. its inputs."""

        def replica_fn(x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = model(x, training=True)
                loss = tf.reduce_sum(tf.square(outputs - y)) / (
                    common.GLOBAL_BATCH * common.OUTPUTS
                )
            grads = tape.gradient(loss, [x, *model.trainable_variables])
            optimizer.apply_gradients(zip(grads[1:], model.trainable_variables))
            return grads[0]

        return strategy.experimental_local_results(
            strategy.run(replica_fn, args=(x, y))
        )[0]

    return step


def train(strategy, model, optimizer, batches):
    """Trains `model` under `strategy` on `batches` of this worker's `(x, y)`; returns the input gradients."""
    step = make_step(strategy, model, optimizer)
    return [step(x, y).numpy() for x, y in batches]


def new_model(strategy):
    """Builds the model and its SGD optimizer under `strategy`'s scope, from seed 0."""
    import keras

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = common.build_model()
        optimizer = keras.optimizers.SGD(common.LEARNING_RATE)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def check_fit(strategy, rank):
    """Trains under the strategy on this worker's halves; returns initial and final weights, input gradients."""
    model, optimizer = new_model(strategy)
    initial = common.weights_of(model)
    x, y = common.global_data()
    part = common.local_slice(rank, common.EVEN_SPLIT)
    grads = train(
        strategy,
        model,
        optimizer,
        [(x[s, part], y[s, part]) for s in range(common.STEPS)],
    )
    return initial, common.weights_of(model), grads


def check_uneven(strategy, rank):
    """A synchronized `ManualBatchNorm` on 12 or 20 examples in `strategy.run`; errors against NumPy."""
    import keras
    import tensorflow as tf

    from keras_bn import ManualBatchNorm

    x, w = common.uneven_data()
    part = common.local_slice(rank, common.UNEVEN_SPLIT)
    with strategy.scope():
        layer = ManualBatchNorm(synchronized=True, momentum=common.MOMENTUM)
        layer.build((None, *x.shape[1:]))

    @tf.function
    def step(inputs, weights):
        """One training-mode call on every worker; returns the outputs and the input gradients."""

        def replica_fn(inputs, weights):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = layer(inputs, training=True)
                loss = tf.reduce_sum(outputs * weights) / common.GLOBAL_BATCH
            return outputs, tape.gradient(loss, inputs)

        return strategy.run(replica_fn, args=(inputs, weights))

    outputs, grad = step(tf.constant(x[part]), tf.constant(w[part]))
    (outputs,), (grad,) = (
        strategy.experimental_local_results(t) for t in (outputs, grad)
    )
    return common.uneven_report(
        rank,
        outputs.numpy(),
        grad.numpy(),
        keras.ops.convert_to_numpy(layer.moving_mean),
        keras.ops.convert_to_numpy(layer.moving_variance),
    )


def reference_fit(rank, initial, final, grads):
    """One process, no strategy: the same training on the concatenated batches, twice.

    Once with the loop above (for the input gradients), once with Keras's own
    `model.fit` (mean squared error, SGD, batches of 32 in order).
    """
    import keras
    import tensorflow as tf

    x, y = common.global_data()
    part = common.local_slice(rank, common.EVEN_SPLIT)
    model, optimizer = new_model(tf.distribute.get_strategy())
    for v in model.variables:
        v.assign(initial[v.path])
    reference_grads = train(
        tf.distribute.get_strategy(), model, optimizer, list(zip(x, y))
    )
    reference = common.weights_of(model)

    fitted = common.build_model()
    for v in fitted.variables:
        v.assign(initial[v.path])
    fitted.compile(optimizer=keras.optimizers.SGD(common.LEARNING_RATE), loss="mse")
    fitted.fit(
        x.reshape(-1, *common.IMAGE_SHAPE),
        y.reshape(-1, common.OUTPUTS),
        batch_size=common.GLOBAL_BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
    )
    moving = [k for k in reference if "moving" in k]
    return {
        "weights_error": common.max_gap(final, reference),
        "weights_error_vs_model_fit": common.max_gap(final, common.weights_of(fitted)),
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


def benchmark(strategy, rank, world_size, steps=8):
    """Median seconds per training step of `deep_mnist_model`, synchronized or not."""
    import functools

    import keras
    import numpy as np

    from keras_bn import ManualBatchNorm, deep_mnist_model

    x = (
        np.random.default_rng(rank)
        .normal(size=(BENCHMARK_BATCH, 28, 28, 1))
        .astype("float32")
    )
    y = np.zeros((BENCHMARK_BATCH, 10), "float32")
    times = {}
    for synchronized in (False, True):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = deep_mnist_model(
                bn=functools.partial(ManualBatchNorm, synchronized=synchronized)
            )
            optimizer = keras.optimizers.SGD(0.01)
            optimizer.build(model.trainable_variables)
        step = make_step(strategy, model, optimizer)
        elapsed = []
        for _ in range(steps + 2):  # the first two trace and compile
            start = time.perf_counter()
            step(x, y).numpy()
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
    """One worker: joins the cluster of `TF_CONFIG`, runs the checks (or the benchmark), writes its result."""
    if "TF_CONFIG" not in os.environ:
        raise SystemExit(
            "A worker needs TF_CONFIG (the cluster and this worker's index); see the "
            "module docstring, or run the script without --rank to start two workers here."
        )
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    result = {"rank": args.rank, "replicas": strategy.num_replicas_in_sync}
    if args.benchmark:
        result["benchmark"] = benchmark(strategy, args.rank, args.world_size)
    else:
        result["warnings"] = []
        with launcher.warnings_of_interest(result["warnings"]):
            initial, final, grads = check_fit(strategy, args.rank)
            result["uneven"] = check_uneven(strategy, args.rank)
        result["fit"] = reference_fit(args.rank, initial, final, grads)
        result["final_weights"] = {k: v.tolist() for k, v in final.items()}
    launcher.write_result(args.result, result)


def main(argv=None):
    """Launches two workers on 127.0.0.1, or is one worker (with `--rank` and `TF_CONFIG`)."""
    args = launcher.parse_worker_args(__doc__.splitlines()[0], argv)
    if args.rank is not None:
        return worker(args)
    ports = launcher.free_ports(args.world_size)
    return launcher.run_launcher(
        __file__,
        "tensorflow",
        args,
        per_rank_env=lambda rank: {"TF_CONFIG": tf_config(rank, ports)},
    )


if __name__ == "__main__":
    main()
