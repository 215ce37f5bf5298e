"""Shared pytest fixtures: where the real MNIST files are, when they are anywhere."""

import os
from pathlib import Path

import pytest

# Spelled out rather than imported, so that collecting tests never depends on keras_bn
# importing cleanly. keras_bn.notebook.MNIST_DIR_ENV holds the same name.
MNIST_DIR_ENV = "KERAS_BN_MNIST_DIR"
_SHARED_MNIST = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "mnist"


def pytest_configure(config):
    """Points KERAS_BN_MNIST_DIR at ../shared/datasets/mnist when unset and that folder exists.

    Under CI, Hypothesis draws the same examples on every run and every version it is
    tested with (recent versions do so by themselves; the oldest supported one does not),
    so a CI failure can be reproduced and one run's luck cannot land or block a change.
    """
    if os.environ.get("CI"):
        from hypothesis import HealthCheck, settings

        settings.register_profile(
            "keras-bn-ci", derandomize=True, database=None, print_blob=True, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        settings.load_profile("keras-bn-ci")
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
