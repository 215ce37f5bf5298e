"""`run_experiment`: the notebook's experiment (no BN, Keras BN, `ManualBatchNorm`) over seeds."""

import contextlib
import os
import sys

import keras

from keras_bn import _checks
from keras_bn.experiment import distribute
from keras_bn.experiment.checkpoint import remove_partial_writes
from keras_bn.experiment.config import DESCRIPTIONS, ExperimentError, RunConfig
from keras_bn.experiment.interrupt import STOP_SIGNALS, StopOnSignal, TrainingInterrupted
from keras_bn.experiment.lock import RunLock
from keras_bn.experiment.figures import INSTALL, matplotlib_missing
from keras_bn.experiment.results import (format_summary, seed_statistics, short_run_note,
                                         write_results)
from keras_bn.experiment.run import Run, prepare_data

__all__ = ["make_config", "run_experiment", "run_folder"]


def make_config(config=None, **settings):
    """Returns a `RunConfig`: `config` itself, or one made from variants and `settings`.

    `config` may be a `RunConfig` (then `settings` must be empty), or the
    variants. `seed=N` is accepted for `seeds=(N,)`.
    """
    if isinstance(config, RunConfig):
        if settings:
            raise ValueError(f"Pass a RunConfig or settings, not both. Received: {settings}")
        return config
    if config is not None:
        settings["variants"] = config
    seed = settings.pop("seed", None)
    if seed is not None:
        if settings.get("seeds") is not None:
            raise ValueError(f"Pass `seed` or `seeds`, not both. Received: seed={seed!r}, "
                             f"seeds={settings['seeds']!r}")
        settings["seeds"] = (_checks.non_negative_int("seed", seed),)
    elif settings.get("seeds") is None:
        settings.pop("seeds", None)
    return RunConfig(**settings)


def run_folder(out_dir, config):
    """Returns `out_dir/<config.name>`, raising `ExperimentError` unless it can be written.

    Nothing is created: the nearest existing folder on the path is checked.
    """
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    else:
        return os.path.join(os.fspath(out_dir), config.name)
    raise ExperimentError(f"`out_dir` must be a folder that can be written to. Received: "
                          f"out_dir={os.fspath(out_dir)!r} ({reason})")


def _progress_stream(progress):
    """Returns the stream a `progress` argument asks for: `None` for no progress bar."""
    if progress is True or progress is False or progress is None:
        return sys.stderr if progress else None
    if not callable(getattr(progress, "write", None)):
        raise ValueError("`progress` must be a bool or a writable text stream. "
                         f"Received: progress={progress!r}")
    return progress


def run_experiment(config=None, /, *, data=None, data_dir=None, out_dir=None, wait=False,
                   progress=True, quiet=False, print_fn=print, **settings):
    """Runs the seed notebook's experiment: the same deep CNN with and without batch norm.

    For each seed, and each variant in order, a `Run` sets the seed, builds
    `deep_mnist_model(bn=variant)`, compiles it like the notebook and trains
    it on a `BatchFeeder` with that seed's batch order while `RunLogger`
    prints the notebook's log (and scores the validation set after the last
    batch, the final validation). It trains with `fit_batches`: on TensorFlow
    each step is Keras's own `train_step` in a `tf.function` that gathers its
    batch by index (under `distribute="multiworker"`, run on each replica's
    share with `strategy.run`); on JAX and PyTorch, and under
    `distribute="mirrored"`, it is `model.fit`. Then the summary table is
    printed (with several seeds: the mean, standard deviation, min and max of
    each variant's final test accuracy), and under it, for a run with batch
    norm of fewer than `LEARNS_BY` (300) batches, one line saying that it is
    too short for the network to learn (`short_run_note`).

    With `out_dir`, everything goes to the run folder `out_dir/<config.name>`
    (named by the settings, so other settings get another folder):
    `results.json`, `curves.png` (where Matplotlib is installed: without it,
    a line says so before anything trains, and the run writes the rest), and
    a checkpoint per variant and seed in
    `checkpoints/`, written atomically every `checkpoint_every` batches and
    when the run ends. The same call again resumes unfinished runs where they
    stopped, with the numbers of an uninterrupted run, and does not train
    finished ones again. The run folder is this call's alone from the first
    checkpoint read to the last file written (`RunLock`, an `fcntl.flock` the
    system drops when the process ends): another process that holds it makes
    the call raise `RunFolderBusy`, or wait for it with `wait=True`. SIGINT
    (Ctrl-C) and SIGTERM stop training after the current batch, save a
    checkpoint and raise `TrainingInterrupted` (one that arrives while the
    results are written does so once they are written whole); the signal
    handlers are put back afterwards.

    Args:
        config: A `RunConfig`, or the variants (names from `VARIANTS`, a
            sequence or a comma-separated string). Defaults to `None`: a
            `RunConfig` made from `settings`.
        data: MNIST-like `(train, validation, test)` splits to use instead of
            loading MNIST. Defaults to `None`: `keras_bn.load_mnist(data_dir)`.
        data_dir: Folder of the MNIST files for `load_mnist`. Defaults to
            `None` (`KERAS_BN_MNIST_DIR`, then the Keras download).
        out_dir: Folder under which the run folder is made. Defaults to
            `None`: write nothing, keep no checkpoints.
        wait: When another process holds the run folder, wait until it lets
            go (then resume, or reuse, what it left) instead of raising
            `RunFolderBusy`. Defaults to `False`.
        progress: `True` for a progress bar per run on standard error, a text
            stream to write it to, or `False`. Defaults to `True`.
        quiet: Print only the summary and the notes (no Matplotlib, a run too
            short to learn): no log, no progress. Defaults to `False`.
        print_fn: Receives every line printed. Defaults to `print`.
        **settings: `RunConfig` fields (`batches=300`, `seeds=[0, 1]`, ...);
            `seed=N` means `seeds=(N,)`.

    Returns:
        The dict written to `results.json` (layout: `docs/results.schema.json`):
        `config` (`RunConfig.to_dict()`), `keras_version`, `data` (a digest of
        the data), `runs` (`{variant: {seed: run}}`, each run as
        `Run.result()` gives it) and `statistics` (`seed_statistics(runs)`).

    Raises:
        ValueError: if a setting is invalid.
        ExperimentError: if `out_dir` cannot be written, `distribute` is set
            off TensorFlow, or `distribute="multiworker"` has no valid
            `TF_CONFIG` or a `batch_size` its replicas cannot share equally.
        keras_bn.experiment.CheckpointMismatchError: if the run folder holds a
            checkpoint of one of these runs written with other data.
        keras_bn.experiment.CheckpointError: if such a checkpoint is corrupt.
        keras_bn.experiment.RunFolderBusy: if another process holds the run
            folder and `wait` is `False`.
        keras_bn.experiment.TrainingInterrupted: after SIGINT or SIGTERM.
        keras_bn.MNISTError: if MNIST cannot be loaded.
    """
    config = make_config(config, **settings)
    stream = _progress_stream(progress)
    # Under "multiworker" every worker trains the same runs; only the chief writes files, and
    # none keeps checkpoints: a worker resuming alone would wait forever for the others.
    chief = distribute.is_chief(config.distribute)  # Makes the strategy before any other op.
    multiworker = config.distribute == "multiworker"
    if multiworker:
        distribute.check_batch_size(distribute.strategy(config.distribute), config.batch_size)
    folder = None if out_dir is None or not chief else run_folder(out_dir, config)
    # Found before anything trains, and said then: the run goes on without its figures.
    missing = None if folder is None else matplotlib_missing()
    if missing is not None:
        print_fn(f"Note: Matplotlib cannot be imported ({missing}), so this run writes "
                 f"results.json but no figures; {INSTALL} to have them.")
    if data is None:
        from keras_bn.notebook.mnist import load_mnist

        data = load_mnist(data_dir)
    data = prepare_data(data)
    log = (lambda *args, **kwargs: None) if quiet else print_fn
    # The folder is this process's from the first checkpoint read to the last file written.
    with _hold(folder, wait=wait, print_fn=print_fn):
        # A worker that stopped alone would leave the others waiting: signals keep their default.
        with StopOnSignal(signals=() if multiworker else STOP_SIGNALS) as stop:
            runs = [Run(config, variant, seed, data, folder=None if multiworker else folder,
                        stop=stop, print_fn=log, progress=None if quiet else stream)
                    for seed in config.seeds for variant in config.variants]
            results = _train(runs, config, data, log)
            print_fn(format_summary(results))
            note = short_run_note(results["config"])
            if note is not None:
                print_fn(note)
            if folder is not None:  # A stop meanwhile waits for complete files.
                paths = write_results(results, folder, figures=missing is None)
                print_fn(f"Wrote {_listed(paths)}")
            if stop.requested:
                raise TrainingInterrupted(stop.signal_number, run=runs[-1].label,
                                          checkpoint=runs[-1].path)
    return results


def _listed(paths):
    """Returns `a`, `a and b`, or `a, b and c`."""
    return " and ".join([", ".join(paths[:-1]), paths[-1]] if len(paths) > 1 else paths)


@contextlib.contextmanager
def _hold(folder, *, wait, print_fn):
    """Holds the run folder `folder` (`None`: nothing) and clears what a killed holder left."""
    if folder is None:
        yield
        return
    with RunLock(folder, wait=wait, print_fn=print_fn) as lock:
        if lock.held:  # Else (no lock on this system) another process may be writing there.
            remove_partial_writes(folder)
        yield


def _train(runs, config, data, log):
    """Trains (or resumes, or skips) each run in turn; returns `results.json`'s content."""
    results = {variant: {} for variant in config.variants}
    for run in runs:
        seed = "" if len(config.seeds) == 1 else f", seed {run.seed}"
        log(f"=== {run.variant}: {DESCRIPTIONS[run.variant]}{seed} ===")
        results[run.variant][str(run.seed)] = run.train()
        log("")
    return {"config": config.to_dict(), "keras_version": keras.__version__,
            "data": data.fingerprint, "runs": results, "statistics": seed_statistics(results)}
