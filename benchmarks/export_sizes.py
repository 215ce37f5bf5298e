"""From a trained model to files to serve: sizes, and how far each one's outputs are from Keras's.

Usage (from the repository root, with the real MNIST; the table of
docs/guide/deploying.md was made on the TensorFlow backend):

    KERAS_BACKEND=tensorflow KERAS_BN_MNIST_DIR=/path/to/mnist \\
        python benchmarks/export_sizes.py
    python benchmarks/export_sizes.py --batches 300 --out /tmp/exports

It trains the notebook's network with `ManualBatchNorm` (`deep_mnist_model`,
compiled like the notebook) for `--batches` batches, folds its batch norms into
its convolutions (`fold_batch_norm`), and writes, into `--out`:

- `model.keras` and `folded.keras` (`model.save`; both compiled, so with the
  optimizer's state), and `bare.keras`, the folded layers in a model never
  compiled, loaded back with `keras.saving.load_model`;
- `folded_saved_model/` (`model.export(format="tf_saved_model")`), loaded with
  `tf.saved_model.load`, as TensorFlow Serving would, without keras-bn;
- `folded.tflite` (`format="litert"`), run by LiteRT's interpreter
  (`ai_edge_litert`, else TensorFlow's deprecated `tf.lite.Interpreter`);
- `folded.onnx` (`format="onnx"`), run by ONNX Runtime, where `tf2onnx`,
  `onnx` and `onnxruntime` are installed (`pip install tf2onnx onnx
  onnxruntime`); else the row says what is missing.

Each file's outputs (logits) on the first `--images` test images are compared
with the trained model's own `predict` (inference mode): the largest absolute
difference, and how many predicted classes differ. A script, not a test: it
asserts nothing and prints a Markdown table.
"""

import argparse
import importlib.util
import os
import platform
import shutil
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn import BatchFeeder, compile_like_notebook, deep_mnist_model, fold_batch_norm, load_mnist


def trained_model(batches, seed=0):
    """Returns the notebook's network with `ManualBatchNorm`, trained for `batches` batches, and MNIST."""
    mnist = load_mnist()
    keras.utils.set_random_seed(seed)
    model = compile_like_notebook(deep_mnist_model(bn="manual"))
    feeder = BatchFeeder(mnist.train.images, mnist.train.labels, 32, seed=seed, num_batches=batches)
    model.fit(feeder, epochs=1, shuffle=False, verbose=0)
    return model, mnist


def size(path):
    """Returns the bytes of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def run_keras_file(path, images):
    """Loads a `.keras` file (keras-bn imported: its layers are registered) and predicts."""
    return keras.saving.load_model(path).predict(images, verbose=0)


def run_saved_model(path, images):
    """Loads an exported SavedModel with TensorFlow alone and calls its `serve` signature."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # Kept: the function needs its variables alive.
    return loaded.serve(tf.constant(images)).numpy()


def _litert_interpreter(path):
    """Returns a LiteRT interpreter of `path`: `ai_edge_litert`'s, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():  # Its deprecation notice, on every creation.
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter(model_path=path)
    return Interpreter(model_path=path)


def run_litert(path, images):
    """Runs a `.tflite` file on `images`, the batch size set to theirs."""
    interpreter = _litert_interpreter(path)
    (source,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images)
    interpreter.invoke()
    (target,) = interpreter.get_output_details()
    return interpreter.get_tensor(target["index"])


def run_onnx(path, images):
    """Runs an `.onnx` file with ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _missing(*modules):
    """Returns the modules of `modules` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def artefacts(model, folded, out):
    """Writes each file; returns `[(name, path or why not, run)]` in the table's order."""
    rows = []
    # A compiled model's file carries its optimizer's state (Adam: two moments per weight);
    # a Functional model over the same layers, never compiled, carries the weights alone.
    bare = keras.Model(folded.inputs, folded.outputs, name=folded.name)
    for name, source in (("model.keras", model), ("folded.keras", folded), ("bare.keras", bare)):
        path = os.path.join(out, name)
        source.save(path)
        rows.append((f"`{name}` (`model.save`)", path, run_keras_file))
    exports = [("folded_saved_model", "tf_saved_model", run_saved_model, ["tensorflow"]),
               ("folded.tflite", "litert", run_litert, ["tensorflow"]),
               ("folded.onnx", "onnx", run_onnx, ["tf2onnx", "onnx", "onnxruntime"])]
    for name, format, run, needs in exports:
        label = f'`{name}` (`format="{format}"`)'
        missing = _missing(*needs)
        if missing:
            rows.append((label, f"needs {', '.join(missing)}", None))
            continue
        path = os.path.join(out, name)
        folded.export(path, format=format, verbose=False)
        rows.append((label, path, run))
    return rows


def table(rows, reference, images):
    """Returns the Markdown table: each file's size and its outputs against `reference`."""
    lines = ["| file | size | max abs. difference | classes that differ |", "|---|---|---|---|"]
    for label, path, run in rows:
        if run is None:
            lines.append(f"| {label} | {path} | | |")
            continue
        outputs = np.asarray(run(path, images), dtype=np.float64)
        difference = np.abs(outputs - reference).max()
        changed = int((outputs.argmax(-1) != reference.argmax(-1)).sum())
        lines.append(f"| {label} | {size(path) / 1e6:.2f} MB | {difference:.1e} | "
                     f"{changed} of {len(images)} |")
    return "\n".join(lines)


def machine():
    """Returns the processor's name (from /proc/cpuinfo on Linux) and the number of CPUs."""
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        name = names[0] if names else name
    return f"{name}, {os.cpu_count()} CPUs"


def main():
    """Trains, folds, exports, reloads and compares; prints the table and the machine."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=800, help="training batches (default: 800)")
    parser.add_argument("--images", type=int, default=1000, help="test images compared (default: 1000)")
    parser.add_argument("--out", default="runs/export_sizes", help="where the files go")
    args = parser.parse_args()
    model, mnist = trained_model(args.batches)
    images = np.asarray(mnist.test.images[: args.images], dtype="float32")
    reference = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
    folded, report = fold_batch_norm(model, return_report=True)
    folded(images[:1])  # ONNX export wants a model that has been called once.
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    accuracy = float((reference.argmax(-1) == mnist.test.labels[: args.images].argmax(-1)).mean())
    print(str(report).splitlines()[0])
    print(f"Trained {args.batches} batches: test accuracy {accuracy:.4f} on {args.images} images; "
          f"logits up to {np.abs(reference).max():.1f} in absolute value.\n")
    print(table(artefacts(model, folded, args.out), reference, images))
    print(f"\nKeras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{platform.python_implementation()} {platform.python_version()}, {machine()}")


if __name__ == "__main__":
    main()
