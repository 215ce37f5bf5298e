"""Loading a `.keras` file in a fresh process, with and without `import keras_bn` first.

Keras finds a custom layer by its registered name (`keras_bn>ManualBatchNorm`), and the
name is registered when `keras_bn` is imported. Keras imports by itself only the modules
of `keras`, `keras_hub`, `keras_cv` and `keras_nlp`, so a process that has not imported
`keras_bn` cannot load the model; the training guide and the README say so, quoting the
error. Each step runs in a process of its own, on TensorFlow, with a tiny model.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "training.md"

#: Saves a model with `ManualBatchNorm` and its folded copy (`FoldedBatchNorm`), with
#: moving statistics moved off their initial values, and the inputs and predictions.
_SAVE = """
import numpy as np
import keras
from keras_bn import ManualBatchNorm, fold_batch_norm

rng = np.random.default_rng(0)
x = rng.normal(loc=3.0, size=(8, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False),
                          ManualBatchNorm(momentum=0.5)])
for _ in range(3):
    model(x, training=True)  # Moves the moving statistics towards the batch's.
folded = fold_batch_norm(model)
for name, saved in (("model", model), ("folded", folded)):
    saved.save(f"{name}.keras")
    np.save(f"{name}.npy", saved.predict(x, verbose=0))
np.save("x.npy", x)
print([type(layer).__name__ for layer in folded.layers])
"""

#: Loads both models in a fresh process, `import keras_bn` first or not, and prints, as JSON
#: on the last line, the error each raised (its type and text) or how far its predictions are
#: from the saved ones.
_LOAD = """
import json, sys
import numpy as np
import keras
if sys.argv[1] == "import":
    import keras_bn  # noqa: F401 - registers keras-bn's layers with Keras.
assert ("keras_bn" in sys.modules) == (sys.argv[1] == "import")
x = np.load("x.npy")
found = {}
for name in ("model", "folded"):
    try:
        loaded = keras.saving.load_model(f"{name}.keras")
    except Exception as error:
        found[name] = [type(error).__name__, str(error)]
    else:
        gap = np.abs(loaded.predict(x, verbose=0) - np.load(f"{name}.npy")).max()
        found[name] = float(gap)
print(json.dumps(found))
"""


def _quoted_error():
    """Returns the error the training guide quotes, its lines joined, up to the config."""
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(r"```text\n(\s*Exception encountered: .*?)```", text, re.DOTALL)[1]
    quoted = " ".join(line.strip() for line in block.splitlines() if line.strip())
    return quoted[:quoted.index(" Full object config:")]


def _python(code, cwd, *args):
    """Runs `code` in a fresh Python process on TensorFlow in `cwd`; returns its stdout."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A folder holding `model.keras` and `folded.keras`, saved by another process."""
    folder = tmp_path_factory.mktemp("saved")
    out = _python(_SAVE, folder)
    assert "FoldedBatchNorm" in out, out  # The folded copy has something to register too.
    return folder


def test_loading_without_importing_keras_bn_fails_naming_the_class(saved):
    found = json.loads(_python(_LOAD, saved, "no-import").splitlines()[-1])
    for name, layer in (("model", "ManualBatchNorm"), ("folded", "FoldedBatchNorm")):
        kind, message = found[name]
        assert kind == "TypeError"
        # The text the training guide and the README quote, for users who search for it.
        assert f"Could not locate class '{layer}'" in message
        assert _quoted_error().replace("ManualBatchNorm", layer) in message
        assert "'registered_name': 'keras_bn>" in message


def test_loading_after_import_keras_bn_predicts_the_same(saved):
    found = json.loads(_python(_LOAD, saved, "import").splitlines()[-1])
    assert found == {"model": 0.0, "folded": 0.0}
