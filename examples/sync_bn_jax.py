"""Synchronized batch norm across processes with JAX (`jax.distributed`) and Keras's `DataParallel`.

`keras.distribution.initialize` joins the processes (it calls
`jax.distributed.initialize`); `keras.distribution.DataParallel` over every
process's devices makes each batch one global array sharded along the batch
axis. XLA then computes batch statistics over the global batch by itself: the
batch norm needs no all-reduce of its own, and `synchronized=True` changes
nothing (it is still the setting that says what is meant). On CPU the
processes exchange data through gloo (`jax_cpu_collectives_implementation`).

Two processes on this machine (the script starts both and checks them):

    KERAS_BACKEND=jax python examples/sync_bn_jax.py

Several hosts, one process each (HOST0 is the first host's address; R is 0 on
the first host, 1 on the second, ...):

    KERAS_BACKEND=jax python examples/sync_bn_jax.py --rank R --world-size N \\
        --host HOST0 --port 29500

Every worker prints its result as JSON.

A global array is sharded evenly, so the processes must hold batches of the
same size. Uneven batches (12 and 20 examples here) are padded to the same size
and the padding is masked out: `ManualBatchNorm` then takes the statistics of
the 32 real examples, sums and counts.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sync_bn_common as common
import sync_bn_launch as launcher


def fit(model, x, y, batch_size):
    """Compiles `model` with SGD and mean squared error and fits one pass over `x`, in order."""
    import keras

    model.compile(optimizer=keras.optimizers.SGD(common.LEARNING_RATE), loss="mse")
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)


def check_fit(rank):
    """Fits under `DataParallel` on this process's halves; returns the initial and final weights."""
    import keras

    keras.utils.set_random_seed(0)
    model = common.build_model()
    initial = common.weights_of(model)
    x, y = common.global_data()
    part = common.local_slice(rank, common.EVEN_SPLIT)
    local = common.EVEN_SPLIT[rank]
    fit(
        model,
        x[:, part].reshape(-1, *common.IMAGE_SHAPE),
        y[:, part].reshape(-1, common.OUTPUTS),
        batch_size=local,
    )
    return initial, common.weights_of(model)


def check_uneven(rank):
    """Uneven batches, padded and masked; returns the errors against NumPy on the 32 real examples."""
    import jax

    from keras_bn import ManualBatchNorm

    inputs, weights, mask = padded_global_arrays(rank)
    layer = ManualBatchNorm(synchronized=True, momentum=common.MOMENTUM)
    layer.build(inputs.shape)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(inputs, mask, weights, trainable, non_trainable):
        """`sum(y * w) / 32` (the padding has weight 0), with y and the new moving statistics.

        Global arrays are arguments: a jitted function may not close over them.
        """
        outputs, statistics = layer.stateless_call(
            trainable, non_trainable, inputs, training=True, mask=mask
        )
        return (outputs * weights).sum() / common.GLOBAL_BATCH, (outputs, statistics)

    (_, (outputs, statistics)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        inputs, mask, weights, trainable, non_trainable
    )
    names = [v.name for v in layer.non_trainable_variables]
    statistics = dict(zip(names, statistics))
    local = common.UNEVEN_SPLIT[rank]
    return common.uneven_report(
        rank,
        local_rows(outputs, local),
        local_rows(grad, local),
        replicated(statistics["moving_mean"]),
        replicated(statistics["moving_variance"]),
    )


def padded_global_arrays(rank):
    """Returns the inputs, loss weights and mask of every process as global arrays.

    Each process pads its rows with zeros to the larger batch (its mask is 0 there);
    the arrays are sharded over the processes along the batch axis.
    """
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    x, w = common.uneven_data()
    part = common.local_slice(rank, common.UNEVEN_SPLIT)
    local = common.UNEVEN_SPLIT[rank]
    padded = max(common.UNEVEN_SPLIT)

    def pad(a):
        """Pads the local rows to `padded` with zeros."""
        return np.concatenate([a, np.zeros((padded - len(a), *a.shape[1:]), a.dtype)])

    sharding = NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch")
    )
    local_arrays = (x[part], w[part], np.ones((local, 4, 4), "float32"))
    return tuple(
        jax.make_array_from_process_local_data(sharding, pad(a)) for a in local_arrays
    )


def local_rows(a, local):
    """This process's `local` real rows of a global array."""
    import numpy as np

    (shard,) = a.addressable_shards
    return np.asarray(shard.data)[:local]


def replicated(a):
    """A replicated global array as NumPy, read from this process's copy."""
    import numpy as np

    return np.asarray(a.addressable_shards[0].data)


def reference_fit(initial, final):
    """One process, no distribution: the same training on the concatenated batches."""
    import keras

    keras.distribution.set_distribution(None)
    model = common.build_model()
    for v in model.variables:
        v.assign(initial[v.path])
    x, y = common.global_data()
    fit(
        model,
        x.reshape(-1, *common.IMAGE_SHAPE),
        y.reshape(-1, common.OUTPUTS),
        batch_size=common.GLOBAL_BATCH,
    )
    reference = common.weights_of(model)
    moving = [k for k in reference if "moving" in k]
    return {
        "weights_error": common.max_gap(final, reference),
        "moving_statistics_error": common.max_gap(
            {k: final[k] for k in moving}, {k: reference[k] for k in moving}
        ),
        "weights_scale": max(float(abs(v).max()) for v in reference.values()),
        "weights_moved": common.max_gap(initial, reference),
    }


def worker(args):
    """One worker: joins the JAX processes, runs the checks, writes its result."""
    import jax

    # On CPU, collectives across processes go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    keras.utils.set_random_seed(0)
    keras.distribution.initialize(
        job_addresses=f"{args.host}:{args.port}",
        num_processes=args.world_size,
        process_id=args.rank,
    )
    devices = keras.distribution.list_devices()
    # Each process already holds its own part of every global batch.
    distribution = keras.distribution.DataParallel(
        devices=devices, auto_shard_dataset=False
    )
    keras.distribution.set_distribution(distribution)
    result = {
        "rank": args.rank,
        "processes": jax.process_count(),
        "devices": len(devices),
    }
    if args.benchmark:
        raise SystemExit(
            "--benchmark: under DataParallel the statistics are global with or without "
            "synchronized=True, so there is nothing to compare on JAX"
        )
    result["warnings"] = []
    with launcher.warnings_of_interest(result["warnings"]):
        initial, final = check_fit(args.rank)
        result["uneven"] = check_uneven(args.rank)
    result["fit"] = reference_fit(initial, final)
    result["final_weights"] = {k: v.tolist() for k, v in final.items()}
    launcher.write_result(args.result, result)
    jax.distributed.shutdown()


def main(argv=None):
    """Launches two workers on 127.0.0.1, or is one worker (with `--rank`)."""
    args = launcher.parse_worker_args(__doc__.splitlines()[0], argv)
    if args.rank is not None:
        return worker(args)
    (port,) = launcher.free_ports(1)
    return launcher.run_launcher(__file__, "jax", args, extra_args=["--port", str(port)])


if __name__ == "__main__":
    main()
