"""Tests for `--recalibrate` and `--plot-activations`: keras_bn.experiment.probes and .figures."""

import json
import zipfile
from pathlib import Path

import jsonschema
import keras
import numpy as np
import pytest

from keras_bn import recalibrate_batch_norm
from keras_bn.experiment import RunConfig, format_summary, run_experiment
from keras_bn.experiment.cli import build_parser, main
from keras_bn.experiment.probes import merge_statistics
from keras_bn.experiment.run import Run
from keras_bn.notebook.feeder import BatchFeeder

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "results.schema.json").read_text(encoding="utf-8"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A short run: 6 batches of 8, validation at batches 0, 2 and 4, recalibration on 3 batches.
SHORT = dict(batches=6, batch_size=8, validate_every=2, check_every=1, num_samples=3,
             checkpoint_every=100)


def _synthetic_mnist(seed=0):
    """Returns MNIST-shaped random `(train, validation, test)` pairs, labels one-hot."""
    rng = np.random.default_rng(seed)

    def split(n):
        """One random split of `n` images."""
        return (rng.random((n, 28, 28, 1), dtype="float32"),
                np.eye(10, dtype="float32")[rng.integers(0, 10, n)])

    return split(96), split(24), split(30)


DATA = _synthetic_mnist()


def _notebook(run):
    """The notebook's own log entries (no recalibrated score), without their times."""
    return [(e["event"], e["batch"], e["loss"], e["accuracy"]) for e in run["history"]
            if "recalibrated" not in e["event"]]


def _final_weights(folder, config, variant, seed=0):
    """The weights (moving statistics included) of a finished run, from its checkpoint."""
    model, _ = Run(config, variant, seed, DATA).build()
    model.optimizer.build(model.trainable_variables)  # The checkpoint holds Adam's state too.
    path = Path(folder) / config.name / "checkpoints" / f"{variant}-seed{seed}.zip"
    with zipfile.ZipFile(path) as archive:
        weights = path.parent / "final.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    model.load_weights(weights)
    return model, [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The short run of `none` and `keras` without the flags, and with both."""
    out = tmp_path_factory.mktemp("probes")
    plain = run_experiment(variants="none,keras", data=DATA, out_dir=out / "plain",
                           progress=False, print_fn=lambda _: None, **SHORT)
    lines = []
    probed = run_experiment(variants="none,keras", data=DATA, out_dir=out / "probed",
                            progress=False, print_fn=lines.append, recalibrate=3,
                            plot_activations=True, **SHORT)
    config = RunConfig(variants="none,keras", recalibrate=3, plot_activations=True, **SHORT)
    return plain, probed, lines, out, config


def test_the_flags_do_not_change_training(runs):
    plain, probed, _, out, config = runs
    plain_config = RunConfig(variants="none,keras", **SHORT)
    for variant in ("none", "keras"):
        # The notebook's numbers, to the last bit, and the same final weights and statistics.
        assert _notebook(probed["runs"][variant]["0"]) == _notebook(plain["runs"][variant]["0"])
        _, with_flags = _final_weights(out / "probed", config, variant)
        _, without = _final_weights(out / "plain", plain_config, variant)
        assert len(with_flags) == len(without)
        for a, b in zip(with_flags, without):
            np.testing.assert_array_equal(a, b)


def test_recalibrated_scores_are_logged_after_each_validation(runs):
    _, probed, lines, _, _ = runs
    keras_run = probed["runs"]["keras"]["0"]
    events = [(e["event"], e["batch"]) for e in keras_run["history"]]
    assert events == [
        ("validation", 0), ("recalibrated_validation", 0), ("training", 1),
        ("validation", 2), ("recalibrated_validation", 2), ("training", 3),
        ("validation", 4), ("recalibrated_validation", 4), ("training", 5),
        ("final_validation", 5), ("final_test", 5), ("samples", 5),
        ("final_recalibrated_validation", 5), ("final_recalibrated_test", 5)]
    final = {e["event"]: e["accuracy"] for e in keras_run["history"]}
    assert keras_run["final_recalibrated_validation_accuracy"] == \
        final["final_recalibrated_validation"]
    assert keras_run["final_recalibrated_test_accuracy"] == final["final_recalibrated_test"]
    assert any(line.startswith("Batch: 2, Recalibrated validation loss: ") and
               ", Recalibrated validation accuracy: " in line for line in lines)
    assert f"Final test accuracy, recalibrated: {final['final_recalibrated_test']}" in lines
    # Without batch norm there is nothing to recalibrate: no entry, null results.
    none_run = probed["runs"]["none"]["0"]
    assert not any("recalibrated" in e["event"] for e in none_run["history"])
    assert none_run["final_recalibrated_validation_accuracy"] is None
    assert none_run["final_recalibrated_test_accuracy"] is None
    stats = probed["statistics"]
    assert stats["none"]["final_recalibrated_test_accuracy"]["mean"] is None
    assert stats["keras"]["final_recalibrated_test_accuracy"]["mean"] == \
        final["final_recalibrated_test"]
    header = format_summary(probed).splitlines()[0]
    assert header.split()[-6:] == ["recal", "val", "acc", "recal", "test", "acc"]


def test_the_recalibrated_score_is_that_of_the_final_weights_recalibrated(runs):
    _, probed, _, out, config = runs
    model, _ = _final_weights(out / "probed", config, "keras")
    # The run's first 3 batches, in its own order: the statistics recalibrate_batch_norm
    # computes from them, then the arg-max accuracy on the validation images in NumPy.
    recalibrate_batch_norm(model, BatchFeeder(*DATA[0], 8, seed=0, num_batches=3), steps=3)
    logits = keras.ops.convert_to_numpy(model(DATA[1][0], training=False))
    expected = np.mean(np.argmax(logits, axis=1) == np.argmax(DATA[1][1], axis=1))
    assert probed["runs"]["keras"]["0"]["final_recalibrated_validation_accuracy"] == \
        pytest.approx(expected)


def test_layer_statistics_are_in_results_json_and_follow_the_schema(runs):
    _, probed, lines, out, config = runs
    folder = out / "probed" / config.name
    saved = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(saved, SCHEMA, cls=jsonschema.Draft202012Validator)
    for variant, layer in (("none", "conv10"), ("keras", "relu10")):
        stats = saved["runs"][variant]["0"]["layer_statistics"]
        assert stats["step"] == [1, 2, 3, 4, 5, 6] and stats["percentiles"] == [15, 50, 85]
        (recorded,) = stats["inputs"]
        assert recorded == layer
        assert all(p15 <= p50 <= p85 for p15, p50, p85 in stats["inputs"][layer])
        norms = stats["gradient_norms"]
        assert list(norms) == [f"conv{d}" for d in range(1, 20)] + ["dense", "logits"]
        assert all(len(values) == 6 and all(np.isfinite(values)) for values in norms.values())
    for name in ("curves.png", "activations.png", "gradients.png"):
        assert (folder / name).read_bytes()[:8] == PNG_MAGIC
    assert lines[-1] == (f"Wrote {folder / 'results.json'}, {folder / 'curves.png'}, "
                         f"{folder / 'activations.png'} and {folder / 'gradients.png'}")


def test_without_the_flags_results_have_no_new_fields(runs):
    plain, *_ = runs
    run = plain["runs"]["keras"]["0"]
    assert not any("recalibrated" in key for key in run) and "layer_statistics" not in run
    assert "final_recalibrated_test_accuracy" not in plain["statistics"]["keras"]


def test_merge_statistics_appends_a_resumed_session():
    earlier = {"step": [2, 4], "percentiles": [15, 50, 85], "inputs": {"relu10": [[0, 1, 2]] * 2},
               "gradient_norms": {"conv1": [1.0, 2.0]}}
    later = {"step": [6], "percentiles": [15, 50, 85], "inputs": {"relu10": [[3, 4, 5]]},
             "gradient_norms": {"conv1": [3.0]}}
    assert merge_statistics(None, later) is later
    assert merge_statistics(earlier, later) == {
        "step": [2, 4, 6], "percentiles": [15, 50, 85],
        "inputs": {"relu10": [[0, 1, 2], [0, 1, 2], [3, 4, 5]]},
        "gradient_norms": {"conv1": [1.0, 2.0, 3.0]}}


def test_the_flags_parse():
    args = build_parser().parse_args(["--recalibrate", "100", "--plot-activations"])
    assert (args.recalibrate, args.plot_activations) == (100, True)
    args = build_parser().parse_args([])
    assert (args.recalibrate, args.plot_activations) == (None, False) == (
        RunConfig().recalibrate, RunConfig().plot_activations)


@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_a_bad_recalibrate_exits_2_naming_it(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--recalibrate", value])
    assert exit_info.value.code == 2
    received = value if value != "x" else "'x'"
    assert ("argument --recalibrate: `recalibrate` must be a positive int, or None to turn it "
            f"off. Received: recalibrate={received}") in capsys.readouterr().err


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"recalibrate": 0}, r"`recalibrate` must be a positive int, or None to turn it off. "
                             r"Received: recalibrate=0"),
        ({"recalibrate": 2.5}, r"`recalibrate` must be a positive int"),
        ({"recalibrate": True}, r"`recalibrate` must be a positive int"),
        ({"plot_activations": "yes"}, r"`plot_activations` must be True or False. "
                                      r"Received: plot_activations='yes'"),
        ({"plot_activations": 1}, r"`plot_activations` must be True or False"),
    ],
)
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**settings)


def test_the_flags_name_their_own_run_folder():
    names = {RunConfig().name, RunConfig(recalibrate=100).name,
             RunConfig(recalibrate=50).name, RunConfig(plot_activations=True).name}
    assert len(names) == 4


@pytest.mark.parametrize("start", [-1, 1.5, True])
def test_layer_statistics_refuses_a_bad_start(start):
    from keras_bn import LayerStatistics

    with pytest.raises(ValueError, match=rf"`start` must be an int >= 0. Received: start={start}"):
        LayerStatistics(np.zeros((2, 4), "float32"), start=start)
