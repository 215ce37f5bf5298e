"""Keras's own tests for its `BatchNormalization`, run on `ManualBatchNorm`.

Keras ships its test module (`keras/src/layers/normalization/batch_normalization_test.py`)
inside the wheel. This test copies it with every `layers.BatchNormalization` replaced
by `ManualBatchNorm` and runs it with pytest in a fresh process, on the backend of this
run: a drop-in passes the tests of the layer it replaces, masks with `axis=1` included.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

KERAS_TESTS = Path(keras.__file__).parent / "src" / "layers" / "normalization" / "batch_normalization_test.py"


@pytest.mark.skipif(not KERAS_TESTS.exists(), reason=f"this Keras ships no {KERAS_TESTS.name}")
def test_keras_batch_normalization_tests_pass_on_manual_batch_norm(tmp_path):
    source = KERAS_TESTS.read_text()
    assert source.count("layers.BatchNormalization(") >= 10, "Keras's test module changed shape"
    copy = tmp_path / "test_keras_batch_normalization.py"
    copy.write_text("from keras_bn import ManualBatchNorm\n" + source.replace("layers.BatchNormalization", "ManualBatchNorm"))
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(copy)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, f"Keras's tests failed on ManualBatchNorm:\n{result.stdout[-4000:]}"
    assert " passed" in summary and "failed" not in summary, summary
