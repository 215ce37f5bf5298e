"""Images per second of test-time adaptation online (`BatchNormAdapter`) against plain prediction.

Usage, from the repository root (random weights and inputs, nothing downloaded):

    KERAS_BACKEND=tensorflow python benchmarks/adapt_speed.py
    KERAS_BACKEND=jax python benchmarks/adapt_speed.py --batch-size 128 --rounds 9 --block 5
    KERAS_BACKEND=torch python benchmarks/adapt_speed.py --device cpu

On the notebook's network, `deep_mnist_model(bn="keras")` (19 convolutions
and a dense layer, each with a batch norm), one batch of random 28x28 images
goes through four runners, each warmed up (compiled) first, then alternated
round by round, `--block` calls each per round (`_common.alternate`):

- `model.predict`: Keras's `predict` on the batch, what a user calls first;
- `model.predict_on_batch`: the same forward pass without `predict`'s loop;
- statistics: `BatchNormAdapter(model).predict_on_batch`, every batch
  norm on the batch's own statistics (one forward pass);
- tent: `BatchNormAdapter(model, method="tent", outputs="sigmoid")`, one
  entropy step on `gamma` and `beta`, then the predictions (a forward and
  backward pass, then a forward pass).

It prints the machine, then per runner the median images per second over
the rounds and their range. A script, not a test: it asserts nothing, and
its figures mean something only on a quiet machine.
"""

import argparse
import statistics

import _common

try:  # where the description of the machine lives, _machine.py, or _common.py before it
    import _machine as machine
except ImportError:
    machine = _common


def _runners(batch_size, seed):
    """Returns the four runners on one batch, each called once already (compiled)."""
    import keras
    import numpy as np

    from keras_bn import BatchNormAdapter, deep_mnist_model

    keras.utils.set_random_seed(seed)
    model = deep_mnist_model(bn="keras", seed=seed)
    x = np.random.default_rng(seed).random((batch_size, 28, 28, 1), dtype="float32")
    statistics_adapter = BatchNormAdapter(model)
    tent = BatchNormAdapter(model, method="tent", outputs="sigmoid")
    runners = {
        "model.predict": lambda: model.predict(x, batch_size=batch_size, verbose=0),
        "model.predict_on_batch": lambda: model.predict_on_batch(x),
        "statistics": lambda: statistics_adapter.predict_on_batch(x),
        "tent": lambda: tent.predict_on_batch(x),
    }
    for run in runners.values():
        run()
    return runners


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="alternated rounds (default 7)")
    parser.add_argument("--block", type=int, default=5, help="calls per runner per round (default 5)")
    parser.add_argument("--device", choices=("cpu", "default"), default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    machine.choose_device(args.device)
    import keras

    backend = keras.backend.backend()
    print(f"keras {keras.version()}, backend {backend}, on {machine.device_name(backend)}; "
          f"CPU {machine.cpu_name()}, {machine.cores()} cores")
    print(f"deep_mnist_model(bn='keras'), batches of {args.batch_size}, {args.rounds} rounds "
          f"of {args.block} calls each")
    times = _common.alternate(_runners(args.batch_size, args.seed), args.rounds, args.block)
    baseline = statistics.median(times["model.predict_on_batch"])
    for name, samples in times.items():
        rates = [args.batch_size / (ms / 1000) for ms in samples]
        print(f"  {name:24s} median {statistics.median(rates):8.0f} images/s "
              f"(min {min(rates):.0f}, max {max(rates):.0f}); "
              f"{statistics.median(samples) / baseline:.2f} x predict_on_batch's time")


if __name__ == "__main__":
    main()
