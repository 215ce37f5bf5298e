"""How far each layer's batch variance is from the truth when the inputs sit far from zero.

Usage, from the repository root:

    python benchmarks/large_offset.py                   # every backend, one process each
    python benchmarks/large_offset.py --backend torch   # one backend
    python benchmarks/large_offset.py --json out.json   # also the figures, for make_page.py

The input is one batch of 32 x 16 x 16 x 16 values drawn from N(1e4, 1) in float32,
channels last: a unit spread on a large offset, where a one-pass variance
`E[x^2] - E[x]^2` subtracts two numbers near 1e8 whose float32 spacing is 8. Each
layer (Keras's `BatchNormalization`, and `ManualBatchNorm` with `fused=None`, `True`
and `False`) is called once in training mode, with `gamma` 1, `beta` 0 and
`momentum=0`, so that its moving variance after the step is the batch variance it
computed. The figures, per channel and the largest over the 16 channels, are the
relative errors against `numpy.var` of the same float32 input in float64:

- the batch variance the layer normalized with, read back from its output: with
  `gamma` 1 and `beta` 0 the output is `(x - mean) / sqrt(var + epsilon)`, so
  `var = numpy.var(x) / numpy.var(output) - epsilon`, both in float64;
- the moving variance after the step;
- the output: its largest difference from `(x - mean) / sqrt(var + epsilon)` in
  float64, over the finite outputs (the output has unit spread, so this is relative
  to it too).

What is left of the two-pass variance's error is the square of the mean's float32
rounding (a mean off by d gives `var + d**2`): the script prints how far the moving
mean is off, to show it.

A layer that cannot take a path (`fused=True` on JAX, which has no kernel) shows
"refused". A script, not a test: it asserts nothing.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
SHAPE = (32, 16, 16, 16)
OFFSET, SPREAD = 1e4, 1.0
EPSILON = 1e-3
LAYERS = ("Keras BatchNormalization", "fused=None", "fused=True", "fused=False")
ROOT = Path(__file__).resolve().parent.parent


def _layer(name):
    """Returns the layer `name` of `LAYERS`, built for `SHAPE`, with `momentum=0`."""
    import keras

    from keras_bn import ManualBatchNorm

    if name == "Keras BatchNormalization":
        layer = keras.layers.BatchNormalization(momentum=0.0, epsilon=EPSILON)
    else:
        fused = {"fused=None": None, "fused=True": True, "fused=False": False}[name]
        layer = ManualBatchNorm(momentum=0.0, epsilon=EPSILON, fused=fused)
    layer.build(SHAPE)
    return layer


def _errors(name, x):
    """Returns the largest relative errors of layer `name`'s batch and moving variance on `x`.

    A dict: `batch` and `moving`, the largest relative errors over the channels
    (`batch` over the channels whose output is finite, None if none is);
    `output`, the largest error of a finite output; `mean`, of the moving mean;
    `nan_channels`, the channels whose output is not finite (a negative variance
    under the square root); `negative_moving`, the channels whose moving variance
    came out negative. Or `{"refused": message}` where the layer refuses the path.
    """
    import keras
    import numpy as np

    axes = tuple(range(x.ndim - 1))
    truth = np.var(x.astype("float64"), axis=axes)
    try:
        layer = _layer(name)
        y = keras.ops.convert_to_numpy(layer(x, training=True)).astype("float64")
    except ValueError as error:  # fused=True where no kernel applies
        return {"refused": str(error).splitlines()[0]}
    finite = np.isfinite(y).all(axis=axes)
    used = truth / np.var(y, axis=axes) - EPSILON
    moving = keras.ops.convert_to_numpy(layer.moving_variance).astype("float64")
    mean = keras.ops.convert_to_numpy(layer.moving_mean).astype("float64")
    batch = np.abs(used - truth)[finite] / truth[finite]
    exact = (x.astype("float64") - x.astype("float64").mean(axis=axes)) / np.sqrt(truth + EPSILON)
    output = np.abs(y - exact)[np.isfinite(y)]
    return {
        "batch": float(batch.max()) if batch.size else None,
        "moving": float(np.max(np.abs(moving - truth) / truth)),
        "output": float(output.max()) if output.size else None,
        "mean": float(np.max(np.abs(mean - x.astype("float64").mean(axis=axes)))),
        "nan_channels": int((~finite).sum()),
        "negative_moving": int((moving < 0).sum()),
        "channels": int(truth.size),
    }


def measure():
    """Returns this process's backend and, per layer of `LAYERS`, its errors."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    x = np.random.default_rng(0).normal(OFFSET, SPREAD, size=SHAPE).astype("float32")
    return {"backend": backend, "version": __import__(backend).__version__, "keras": keras.__version__,
            "errors": {name: _errors(name, x) for name in LAYERS}}


def _cell(errors):
    """Formats one layer's errors for the printed table."""
    if "refused" in errors:
        return "refused"
    batch = "none finite" if errors["batch"] is None else f"{errors['batch']:.1e}"
    return (f"batch {batch} ({errors['nan_channels']} of {errors['channels']} channels NaN), "
            f"moving {errors['moving']:.1e} ({errors['negative_moving']} negative), "
            f"output {errors['output']:.1e}, moving mean off by {errors['mean']:.1e}")


def _child(backend):
    """Runs this script on `backend` in a process of its own; returns its `measure()`."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, __file__, "--child"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"large_offset.py on {backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main():
    """Measures every backend asked for, each in its own process, and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, action="append",
                        help="a backend to measure (repeatable; default: all three)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure()))
        return
    results = [_child(backend) for backend in args.backend or BACKENDS]
    print(f"large_offset  N({OFFSET:g}, {SPREAD:g}) float32, shape {SHAPE}, momentum 0: "
          "largest relative error over the channels, against float64 NumPy")
    for result in results:
        for name, errors in result["errors"].items():
            print(f"large_offset  {result['backend']:10s} {name:24s}: {_cell(errors)}")
    if args.json:
        from _machine import cpu_name

        machine = {"cpu": cpu_name(), "python": platform.python_version(), "keras": results[0]["keras"],
                   "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv])}
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))


if __name__ == "__main__":
    main()
