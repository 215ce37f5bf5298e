#!/usr/bin/env bash
# Sets up a virtual environment and reproduces the notebook: the deep CNN on MNIST
# without batch normalization, with keras.layers.BatchNormalization and with
# ManualBatchNorm. Extra arguments go to the `keras-bn` command, e.g.
#
#   bash scripts/demo.sh --variants manual --batches 300
#
# Each configuration gets its own run folder under runs/deep_mnist (named by its
# settings); the same command again resumes it, or reuses it once finished.
# Uses KERAS_BN_MNIST_DIR, or ../shared/datasets/mnist when it exists; otherwise
# Keras downloads MNIST (needs the internet).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${KERAS_BN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[tensorflow,plot]"

if [ -z "${KERAS_BN_MNIST_DIR:-}" ] && [ -d ../shared/datasets/mnist ]; then
    export KERAS_BN_MNIST_DIR="$(cd ../shared/datasets/mnist && pwd)"
fi
export KERAS_BACKEND=${KERAS_BACKEND:-tensorflow}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec "$VENV/bin/keras-bn" --out runs/deep_mnist "$@"
