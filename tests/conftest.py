"""Shared pytest fixtures: where the real MNIST files are, when they are anywhere."""

import os
from pathlib import Path

import pytest

# Spelled out rather than imported, so that collecting tests never depends on keras_bn
# importing cleanly. keras_bn.notebook.MNIST_DIR_ENV holds the same name.
MNIST_DIR_ENV = "KERAS_BN_MNIST_DIR"
_SHARED_MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "mnist"


def pytest_configure(config):
    """Points KERAS_BN_MNIST_DIR at ../shared/datasets/mnist when unset and that folder exists."""
    if not os.environ.get(MNIST_DIR_ENV) and _SHARED_MNIST.is_dir():
        os.environ[MNIST_DIR_ENV] = str(_SHARED_MNIST)


@pytest.fixture(scope="session")
def mnist_dir():
    """Returns the folder of the real MNIST files from KERAS_BN_MNIST_DIR, or skips the test."""
    folder = os.environ.get(MNIST_DIR_ENV)
    if not folder or not Path(folder).is_dir():
        pytest.skip(
            "real MNIST not available: set KERAS_BN_MNIST_DIR to a folder with the four IDX "
            "files (see README)"
        )
    return Path(folder)
