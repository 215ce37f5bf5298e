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

# The oldest versions keras-bn declares (scripts/oldest.txt, held to pyproject.toml's
# floors by scripts/check_floors.py), in a virtual environment of their own, on the
# backends those floors install: TensorFlow 2.16.1, JAX 0.4.30, PyTorch 2.13.
OLDEST_VENV=${KERAS_BN_OLDEST_VENV:-.venv-oldest}
# The files whose tests a floor can break and that ask nothing of Keras's own layer
# newer than Keras 3.10 (README "Requirements" lists what needs a newer Keras): every
# private hook (_keras_compat), the framework kernels and the closed-form backward
# against each backend's autodiff, training through Keras's trainers and PyTorch's
# plain call, and the tools that rebuild models through Keras's clone_model, with the
# conversion to Keras's own layer (issue 31). About 2.5 minutes over the three backends.
OLDEST_TESTS=(
    tests/layer/test_keras_compat.py
    tests/layer/test_native.py
    tests/layer/test_gradient.py
    tests/layer/test_training.py
    tests/layer/test_plain_call.py
    tests/layer/test_batch_norm_properties.py
    tests/tools/test_convert.py
    tests/tools/test_graph.py
    tests/tools/test_custom_layers.py
    tests/tools/test_layer_statistics.py
    tests/tools/test_porting.py
)
echo "== oldest versions: scripts/oldest.txt in $OLDEST_VENV"
"$PY" scripts/check_floors.py
if [ ! -x "$OLDEST_VENV/bin/python" ]; then
    "$PYTHON" -m venv "$OLDEST_VENV"
fi
OLDEST_PY="$OLDEST_VENV/bin/python"
"$OLDEST_PY" -m pip install --quiet --upgrade pip
"$OLDEST_PY" -m pip install --quiet -r scripts/oldest.txt -e ".[tensorflow,jax,torch,test]"
"$OLDEST_PY" -m pip check
for backend in tensorflow jax torch; do
    echo "== oldest versions, $backend backend"
    # Keras 3.10 warns when a reloaded Functional model is called on a bare tensor
    # (its input structure is a list of one); Keras 3.15 does not. Keras's noise.
    KERAS_BACKEND=$backend "$OLDEST_PY" -m pytest -q -rs \
        -W "ignore:The structure of \`inputs\` doesn't match the expected structure:UserWarning" \
        "${OLDEST_TESTS[@]}"
done
echo "== oldest versions: the wheel, installed under scripts/oldest.txt outside the checkout"
KERAS_BN_VENV="$OLDEST_VENV" KERAS_BN_WHEEL_PINS=scripts/oldest.txt bash scripts/check_wheel.sh
