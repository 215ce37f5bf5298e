#!/usr/bin/env bash
# Builds keras-bn's sdist and wheel and checks that they install and work outside the checkout.
#
#   bash scripts/check_wheel.sh          # from anywhere; uses .venv (or $KERAS_BN_VENV)
#
# 1. `python -m build`: the sdist, then the wheel built from that sdist, into a temp folder.
# 2. `twine check --strict` on both.
# 3. The wheel holds keras_bn/ (Python files only) and its metadata: the README as a
#    Markdown long description, the license, classifiers, project URLs, and the
#    `keras-bn` console script with its entry module _keras_bn_cli.py (outside the
#    package, so that --help does not import Keras); no tests/, docs/, examples/ or data
#    files.
# 4. A fresh virtual environment gets the wheel plus TensorFlow, and from a folder
#    outside the checkout a smoke script imports keras_bn, checks `__version__` against
#    the installed metadata, trains a ManualBatchNorm model one step, saves it as
#    .keras, reloads it and compares predictions; then `keras-bn --help` must run and
#    `keras-bn --version` print the version.
#
#
# KERAS_BN_WHEEL_PINS=scripts/oldest.txt makes step 4 install under those pins (as
# pip constraints): scripts/test.sh does so to check the wheel on the oldest
# versions keras-bn declares.
#
# Any failure stops the script with a message and a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

VENV=${KERAS_BN_VENV:-.venv}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "check_wheel: no Python at $PY; run scripts/test.sh first or set KERAS_BN_VENV" >&2
    exit 1
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$PY" -c "import build, twine" 2>/dev/null; then
    "$PY" -m pip install --quiet build twine
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/keras-bn-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
DIST="$TMP/dist"

fail() {
    echo "check_wheel: FAILED: $*" >&2
    exit 1
}

echo "== build: sdist, then the wheel from the sdist"
"$PY" -m build --outdir "$DIST" . >"$TMP/build.log" 2>&1 || {
    cat "$TMP/build.log" >&2
    fail "python -m build"
}
shopt -s nullglob
SDISTS=("$DIST"/*.tar.gz)
WHEELS=("$DIST"/*.whl)
shopt -u nullglob
[ ${#SDISTS[@]} -eq 1 ] || fail "expected one sdist in $DIST, found: ${SDISTS[*]:-none}"
[ ${#WHEELS[@]} -eq 1 ] || fail "expected one wheel in $DIST, found: ${WHEELS[*]:-none}"
SDIST=${SDISTS[0]}
WHEEL=${WHEELS[0]}
echo "   $(basename "$SDIST")"
echo "   $(basename "$WHEEL")"

echo "== twine check --strict"
"$PY" -m twine check --strict "$SDIST" "$WHEEL" || fail "twine check --strict"

echo "== wheel and sdist contents"
"$PY" - "$WHEEL" "$SDIST" "$ROOT" <<'PYTHON' || fail "contents of the wheel or sdist"
import ast
import email
import re
import sys
import tarfile
import zipfile
from pathlib import Path

wheel_path, sdist_path, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
problems = []

# The version the source declares, read without importing keras_bn (and Keras).
init = (root / "keras_bn" / "__init__.py").read_text(encoding="utf-8")
version = next(
    node.value.value
    for node in ast.parse(init).body
    if isinstance(node, ast.Assign)
    and any(getattr(t, "id", None) == "__version__" for t in node.targets)
)
dist_info = f"keras_bn-{version}.dist-info"

with zipfile.ZipFile(wheel_path) as wheel:
    names = wheel.namelist()
    metadata = email.message_from_bytes(wheel.read(f"{dist_info}/METADATA"))
    entry_points_file = f"{dist_info}/entry_points.txt"
    entry_points = wheel.read(entry_points_file).decode() if entry_points_file in names else ""

for name in names:
    top = name.split("/", 1)[0]
    if top not in ("keras_bn", "_keras_bn_cli.py", dist_info):
        problems.append(f"unexpected top-level entry in the wheel: {name}")
    elif top == "keras_bn" and not name.endswith((".py", "/py.typed")):
        problems.append(f"non-Python file in the wheel's package: {name}")
for banned in ("tests/", "docs/", "examples/", "scripts/"):
    if any(f"/{banned}" in f"/{name}" for name in names):
        problems.append(f"the wheel holds {banned}")
# Every module of the checkout's package, so that a subpackage left out of
# pyproject.toml's explicit `packages` list fails here, not on a user's machine.
sources = sorted(str(path.relative_to(root)) for path in (root / "keras_bn").rglob("*.py"))
for required in sources + ["_keras_bn_cli.py"]:
    if required not in names:
        problems.append(f"the wheel lacks {required}")
if not any(re.match(rf"{dist_info}/(licenses/)?LICENSE", name) for name in names):
    problems.append("the wheel lacks the LICENSE file in its dist-info")

def field(key):
    return metadata.get_all(key) or []

if field("Name") != ["keras-bn"]:
    problems.append(f"Name is {field('Name')}, not keras-bn")
if field("Version") != [version]:
    problems.append(f"Version is {field('Version')}, but keras_bn.__version__ is {version}")
if not any(v.startswith("text/markdown") for v in field("Description-Content-Type")):
    problems.append(f"Description-Content-Type is {field('Description-Content-Type')}")
readme_title = (root / "README.md").read_text(encoding="utf-8").splitlines()[0]
if readme_title not in (metadata.get_payload() or ""):
    problems.append("the long description is not the README")
if not (field("License") or field("License-Expression")):
    problems.append("no License or License-Expression in the metadata")
if not field("Classifier"):
    problems.append("no classifiers")
urls = field("Project-URL")
if not urls:
    problems.append("no Project-URL")
if not any(req.startswith("keras") for req in field("Requires-Dist")):
    problems.append(f"keras is not a requirement: {field('Requires-Dist')}")
if not re.search(r"^\[console_scripts\]\s*$[^\[]*^keras-bn\s*=\s*_keras_bn_cli:main\s*$",
                 entry_points, re.M):
    problems.append(f"no `keras-bn = _keras_bn_cli:main` console script: {entry_points!r}")

with tarfile.open(sdist_path) as sdist:
    members = [m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name]
for required in ("pyproject.toml", "README.md", "LICENSE", "keras_bn/__init__.py"):
    if required not in members:
        problems.append(f"the sdist lacks {required}")
data = re.compile(r"(\.gz|\.npz|-ubyte|\.keras|\.png|\.h5)$|(^|/)(\.venv|\.git|runs|site)/")
for member in members:
    if data.search(member):
        problems.append(f"the sdist holds {member}")

print(f"   wheel: {len(names)} files; metadata {metadata['Name']} {metadata['Version']}, "
      f"{len(field('Classifier'))} classifiers, {len(urls)} project URLs")
print(f"   sdist: {len(members)} entries")
if problems:
    print("\n".join(f"   problem: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
PYTHON

PINS=()
if [ -n "${KERAS_BN_WHEEL_PINS:-}" ]; then
    [ -f "$KERAS_BN_WHEEL_PINS" ] || fail "KERAS_BN_WHEEL_PINS=$KERAS_BN_WHEEL_PINS is not a file"
    PINS=(--constraint "$(cd "$(dirname "$KERAS_BN_WHEEL_PINS")" && pwd)/$(basename "$KERAS_BN_WHEEL_PINS")")
fi
echo "== fresh virtual environment with the wheel and TensorFlow${PINS:+, pinned by $KERAS_BN_WHEEL_PINS}"
"$PY" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log" >&2; fail "upgrading pip"; }
"$VPY" -m pip install --quiet "${PINS[@]}" "$WHEEL" tensorflow >"$TMP/pip.log" 2>&1 || {
    cat "$TMP/pip.log" >&2
    fail "pip install of the wheel and tensorflow"
}
"$VPY" -m pip check || fail "pip check in the fresh environment"

echo "== smoke test from outside the checkout"
OUTSIDE="$TMP/outside"
mkdir -p "$OUTSIDE"
cat >"$OUTSIDE/smoke.py" <<'PYTHON'
import importlib.metadata
import os
import sys

import numpy as np

import keras
import keras_bn
from keras_bn import ManualBatchNorm

checkout = os.path.realpath(sys.argv[1])
location = os.path.realpath(keras_bn.__file__)
assert not location.startswith(checkout + os.sep), f"keras_bn imported from the checkout: {location}"
assert f"{os.sep}site-packages{os.sep}" in location, f"keras_bn not from site-packages: {location}"
installed = importlib.metadata.version("keras-bn")
assert keras_bn.__version__ == installed, (keras_bn.__version__, installed)

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(loc=2.0, size=(32, 6, 6, 3)).astype("float32")
y = np.eye(4, dtype="float32")[rng.integers(0, 4, size=32)]
model = keras.Sequential([
    keras.Input((6, 6, 3)),
    keras.layers.Conv2D(8, 3, use_bias=False),
    ManualBatchNorm(momentum=0.9),
    keras.layers.ReLU(),
    keras.layers.GlobalAveragePooling2D(),
    keras.layers.Dense(4),
])
model.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
bn = model.layers[1]
before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
loss = model.train_on_batch(x, y)
assert np.isfinite(loss), loss
assert not np.allclose(keras.ops.convert_to_numpy(bn.moving_mean), before), "no statistics update"

path = os.path.join(os.getcwd(), "model.keras")
model.save(path)
reloaded = keras.saving.load_model(path)
assert isinstance(reloaded.layers[1], ManualBatchNorm), type(reloaded.layers[1])
np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
print(f"   keras_bn {keras_bn.__version__} from {location}")
print(f"   keras {keras.__version__}, backend {keras.backend.backend()}: one step, saved, reloaded, same predictions")
PYTHON
# TensorFlow's start-up chatter goes to a log, shown only when something fails.
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
(
    cd "$OUTSIDE"
    PYTHONPATH= "$VPY" smoke.py "$ROOT" 2>"$TMP/smoke.log"
) || { cat "$TMP/smoke.log" >&2; fail "the smoke test in the fresh environment"; }

echo "== keras-bn --help"
(
    cd "$OUTSIDE"
    PYTHONPATH= "$TMP/venv/bin/keras-bn" --help >"$TMP/help.txt" 2>"$TMP/help.log"
) || { cat "$TMP/help.txt" "$TMP/help.log" >&2; fail "keras-bn --help"; }
grep -q "usage: keras-bn" "$TMP/help.txt" || {
    cat "$TMP/help.txt" "$TMP/help.log" >&2
    fail "keras-bn --help printed no usage line"
}
echo "   $(head -n 1 "$TMP/help.txt")"

echo "== keras-bn --version"
VERSION=$(cd "$OUTSIDE" && PYTHONPATH= "$TMP/venv/bin/keras-bn" --version 2>"$TMP/version.log") || {
    cat "$TMP/version.log" >&2
    fail "keras-bn --version"
}
[ "$VERSION" = "keras-bn $("$VPY" -c 'import importlib.metadata as m; print(m.version("keras-bn"))')" ] ||
    fail "keras-bn --version printed '$VERSION'"
echo "   $VERSION"

echo "check_wheel: OK"
