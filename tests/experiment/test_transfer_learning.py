"""A smoke test of `examples/transfer_learning.py`: one seed, a few batches, on the real MNIST."""

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MNIST_DIR = os.environ.get("KERAS_BN_MNIST_DIR")


@pytest.mark.skipif(not MNIST_DIR or not os.path.isdir(MNIST_DIR), reason="KERAS_BN_MNIST_DIR is not set")
def test_one_seed_prints_the_table(capsys):
    spec = importlib.util.spec_from_file_location("transfer_learning", ROOT / "examples" / "transfer_learning.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = study.main(["--seeds", "1", "--pretrain-batches", "2", "--finetune-batches", "2",
                       "--labelled", "48"])
    assert len(rows) == 1 and set(rows[0]) == set(study.ROWS)
    assert all(0.0 <= value <= 1.0 for value in rows[0].values())
    printed = capsys.readouterr().out
    assert "no dropout layer" in printed
    assert "test accuracy on the digits 5-9 (4861 images), over 1 seeds:" in printed
    for name in study.ROWS:
        assert name in printed
