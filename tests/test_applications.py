"""Folding and conversion on networks nobody here wrote: keras.applications built with weights=None.

Each model is built offline at a small input size, gets realistic moving
statistics (a few training-mode calls) and non-trivial gamma and beta, and is
then folded and converted. On TensorFlow every model runs; on PyTorch
MobileNetV2 stands for them, to keep the suite fast. On JAX the module is skipped:
the eager training-mode calls that give the model its statistics compile op by op
there, about 70 s of CI for one model; folding and conversion are the same Keras
code on every backend, and the layer's JAX numerics are checked by the option matrix
and the property tests.

Training mode is compared in float64 on TensorFlow: through 50 layers of batch
statistics on 4 samples, float32 round-off grows to a few 1e-4 of the logits'
scale (measured against a float64 run: 3.7e-4 for Keras's own layer on ResNet50,
7.5e-4 for ManualBatchNorm), so only float64 shows that both compute the same
thing. JAX has float64 only with jax_enable_x64, and Keras's own layer reduces
float64 in float32 on PyTorch, so the other backends compare float32 at the
round-off bound.
"""

import numpy as np
import pytest

import keras
from helpers import to_numpy
from keras_bn import ManualBatchNorm, convert_batch_norm, fold_batch_norm

BN = keras.layers.BatchNormalization
APPLICATIONS = {
    "ResNet50": keras.applications.ResNet50,
    "MobileNetV2": keras.applications.MobileNetV2,
    "EfficientNetB0": keras.applications.EfficientNetB0,
}
ON_EVERY_BACKEND = "MobileNetV2"

pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="JAX compiles the eager training-mode calls op by op (about 70 s of CI); "
    "TensorFlow and PyTorch run this module",
)


def _cases():
    """Every application on TensorFlow; MobileNetV2 alone on PyTorch."""
    for name in APPLICATIONS:
        marks = []
        if name != ON_EVERY_BACKEND and keras.backend.backend() != "tensorflow":
            marks = [pytest.mark.skip(reason=f"{name} runs on the TensorFlow backend; {ON_EVERY_BACKEND} covers this backend")]
        yield pytest.param(name, marks=marks, id=name)


def _build(name, dtype):
    """Returns the application with realistic statistics and affine weights, and an input batch."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(dtype)
    try:
        model = APPLICATIONS[name](weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    for k in range(2):
        model(rng.uniform(0, 255, size=(4, 32, 32, 3)).astype(dtype), training=True)
    for layer in model.layers:
        if isinstance(layer, BN):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, layer.beta.shape).astype("float32"))
    return model, rng.uniform(0, 255, size=(4, 32, 32, 3)).astype(dtype)


def _relative_error(ours, ref):
    """Returns max |ours - ref| relative to the largest |ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _batch_norms(model):
    """Returns the batch norms of `model` (they are all at the top level in these applications)."""
    return [layer for layer in model.layers if isinstance(layer, (BN, ManualBatchNorm))]


@pytest.fixture(scope="module")
def built():
    """Builds each application once per module; the tests never modify them."""
    cache = {}

    def get(name, dtype="float32"):
        if (name, dtype) not in cache:
            cache[name, dtype] = _build(name, dtype)
        return cache[name, dtype]

    return get


@pytest.mark.parametrize("name", list(_cases()))
def test_folding_predicts_the_same(name, built):
    model, x = built(name)
    folded, report = fold_batch_norm(model, return_report=True)
    total = len(_batch_norms(model))
    assert len(report.folded) + len(report.kept) == total
    # Every one of these BNs follows a conv with no activation whose output goes nowhere else.
    assert len(report.folded) == total, report.kept
    assert not _batch_norms(folded)
    expected = to_numpy(model(x, training=False))
    error = _relative_error(to_numpy(folded(x, training=False)), expected)
    assert error <= 1e-4, f"{name}: folding changed the logits by {error:.2e} of their scale"


@pytest.mark.parametrize("name", list(_cases()))
def test_conversion_predicts_the_same(name, built, tmp_path):
    model, x = built(name)
    converted = convert_batch_norm(model)
    layers = _batch_norms(converted)
    assert layers and all(type(layer) is ManualBatchNorm for layer in layers)
    assert len(layers) == len(_batch_norms(model))
    expected = to_numpy(model(x, training=False))
    error = _relative_error(to_numpy(converted(x, training=False)), expected)
    assert error <= 1e-5, f"{name}: conversion changed the logits by {error:.2e} of their scale"

    path = tmp_path / f"{name}.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded(x, training=False)), to_numpy(converted(x, training=False)))


@pytest.mark.parametrize("name", list(_cases()))
def test_every_batch_norm_config_loads_into_manual_batch_norm(name, built):
    model, _ = built(name)
    for layer in _batch_norms(model):
        config = layer.get_config()
        manual = ManualBatchNorm.from_config(config)
        ours = manual.get_config()
        assert {key: ours[key] for key in config} == config, layer.name


def _training_cases():
    """Float64 on TensorFlow, float32 elsewhere (see the module docstring), with their tolerances."""
    dtype, tolerance = ("float64", 1e-9) if keras.backend.backend() == "tensorflow" else ("float32", 1e-3)
    return [pytest.param(*case.values, dtype, tolerance, marks=case.marks, id=f"{case.id}-{dtype}") for case in _cases()]


@pytest.mark.parametrize("name,dtype,tolerance", _training_cases())
def test_conversion_trains_the_same(name, dtype, tolerance, built):
    model, x = built(name, dtype)
    # Both sides are copies, so the cached model keeps its statistics; dropout
    # is switched off, as its random masks differ between two models.
    converted = convert_batch_norm(model)
    reference = convert_batch_norm(converted, to="keras")
    for layer in converted.layers + reference.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    trained = to_numpy(reference(x, training=True))
    error = _relative_error(to_numpy(converted(x, training=True)), trained)
    assert error <= tolerance, f"{name}: training-mode logits differ by {error:.2e} of their scale"
    for ours, ref in zip(_batch_norms(converted), _batch_norms(reference)):
        for stat in ("moving_mean", "moving_variance"):
            ref_value = to_numpy(getattr(ref, stat))
            np.testing.assert_allclose(
                to_numpy(getattr(ours, stat)), ref_value, rtol=tolerance, atol=tolerance * np.abs(ref_value).max(),
                err_msg=f"{name}/{ours.name}:{stat}",
            )
