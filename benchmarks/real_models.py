"""fold_batch_norm and convert_batch_norm on keras.applications: what folds, the errors, the speed-up.

Usage (any backend, from the repository root; no download: weights=None):

    python benchmarks/real_models.py
    python benchmarks/real_models.py --models MobileNetV2 --size 96 --repeats 7

For each model: how many batch norms `fold_batch_norm` folded and kept, the largest
difference of the folded and of the converted model's inference logits relative to
the logits' scale, and the same for training mode after `convert_batch_norm` in
float64 (on TensorFlow; float32 elsewhere). Then inference throughput of the
original and the folded model, run alternately, as medians. A script, not a test:
it asserts nothing.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras_bn import convert_batch_norm, fold_batch_norm  # noqa: E402

MODELS = ("ResNet50", "MobileNetV2", "EfficientNetB0")


def build(name, size, dtype="float32"):
    """Returns the application with moving statistics and gamma/beta moved off their initial values."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    try:
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None
        )
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    for _ in range(2):
        model(rng.uniform(0, 255, size=(4, size, size, 3)).astype(dtype), training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0, 0.5, layer.beta.shape))
    return model, rng.uniform(0, 255, size=(4, size, size, 3)).astype(dtype)


def relative_error(ours, ref):
    """Returns max |ours - ref| / max |ref| of two model outputs."""
    ours, ref = keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(ref)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def training_error(name, size):
    """Returns the training-mode error of the converted model against Keras's layer, and its dtype."""
    dtype = "float64" if keras.backend.backend() == "tensorflow" else "float32"
    model, x = build(name, size, dtype)
    converted = convert_batch_norm(model)
    for layer in converted.layers + model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # random masks differ between two models
    return relative_error(converted(x, training=True), model(x, training=True)), dtype


def throughput(model, x, batch, repeats):
    """Returns images per second of `model.predict_on_batch` over `x`, one timing per repeat."""
    model.predict_on_batch(x[:batch])  # trace and warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            model.predict_on_batch(x[i : i + batch])
        rates.append(len(x) / (time.perf_counter() - start))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=32, help="input height and width for the error checks")
    parser.add_argument("--speed-model", default="MobileNetV2")
    parser.add_argument("--speed-size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}, {os.cpu_count()} cores")
    print("| model | batch norms | folded | kept | fold error | convert error (inference) | convert error (training) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, x = build(name, args.size)
        folded, report = fold_batch_norm(model, return_report=True)
        expected = model(x, training=False)
        fold_error = relative_error(folded(x, training=False), expected)
        convert_error = relative_error(convert_batch_norm(model)(x, training=False), expected)
        train_error, dtype = training_error(name, args.size)
        total = len(report.folded) + len(report.kept)
        print(
            f"| {name} | {total} | {len(report.folded)} | {len(report.kept)} | {fold_error:.1e} "
            f"| {convert_error:.1e} | {train_error:.1e} ({dtype}) |"
        )
        for path, why in report.kept.items():
            print(f"    kept {path}: {why}")

    model, _ = build(args.speed_model, args.speed_size)
    folded = fold_batch_norm(model)
    x = np.random.default_rng(1).uniform(0, 255, size=(256, args.speed_size, args.speed_size, 3)).astype("float32")
    original_rates, folded_rates = [], []
    for _ in range(args.repeats):  # alternate, so both see the same machine
        original_rates += throughput(model, x, 32, 1)
        folded_rates += throughput(folded, x, 32, 1)
    a, b = statistics.median(original_rates), statistics.median(folded_rates)
    print(
        f"\n{args.speed_model} at {args.speed_size}x{args.speed_size}, predict_on_batch of 32, "
        f"{args.repeats} alternating runs of 256 images: {a:.0f} images/s unfolded, "
        f"{b:.0f} folded, speed-up {b / a:.2f}x"
    )


if __name__ == "__main__":
    main()
