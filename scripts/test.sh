#!/usr/bin/env bash
# Sets up a virtual environment with every backend and runs the whole test suite.
#
#   bash scripts/test.sh            # from the repository root, on a fresh machine
#
# The tests run once per Keras backend (TensorFlow, JAX, PyTorch), each in its own
# process, because Keras picks its backend once per process.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KERAS_BN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install --quiet --upgrade pip
# torch is pinned to the CPU build these machines keep on local disk; any other
# version is a multi-GB CUDA download.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet -e ".[tensorflow,jax,torch,test,docs]"

# The real MNIST, when the shared dataset folder is beside the checkout.
if [ -z "${KERAS_BN_MNIST_DIR:-}" ] && [ -d ../shared/datasets/mnist ]; then
    export KERAS_BN_MNIST_DIR="$(cd ../shared/datasets/mnist && pwd)"
fi
echo "KERAS_BN_MNIST_DIR=${KERAS_BN_MNIST_DIR:-<unset: MNIST tests will be skipped>}"

export TF_CPP_MIN_LOG_LEVEL=2
# The suite runs once per backend. Each area of tests/ (layer, tools, notebook,
# experiment, docs) declares in its conftest.py the backends it runs on; the
# docstrings' examples run once, with TensorFlow.
for backend in tensorflow jax torch; do
    echo "== tests, $backend backend"
    doctests=()
    if [ "$backend" = tensorflow ]; then doctests=(--doctest-modules keras_bn); fi
    KERAS_BACKEND=$backend "$PY" -m pytest -q -rs "${doctests[@]}" tests
done

echo "== docs: mkdocs build --strict"
SITE_DIR=$(mktemp -d)
KERAS_BACKEND=tensorflow NO_MKDOCS_2_WARNING=1 "$PY" -m mkdocs build --strict --quiet --site-dir "$SITE_DIR"
echo "== docs: internal links and anchors of the built site"
"$PY" scripts/check_links.py "$SITE_DIR"
rm -rf "$SITE_DIR"

echo "== packaging: sdist and wheel, installed and used outside the checkout"
KERAS_BN_VENV="$VENV" bash scripts/check_wheel.sh
