"""The seed notebook's experiment, as a harness around the library: configure, run, resume.

One frozen `RunConfig` describes an experiment and names its folder;
`run_experiment` trains every variant once per seed, each as a `Run` whose
`RunCheckpoint` callback saves and restores it, while a `RunLock` keeps the
run folder to one process; `RunProgress` shows it;
`StopOnSignal` turns Ctrl-C into a clean stop; `keras_bn.experiment.cli` is
the `keras-bn` command.
"""

from keras_bn.experiment.checkpoint import CheckpointError, CheckpointMismatchError
from keras_bn.experiment.config import DESCRIPTIONS, VARIANTS, ExperimentError, RunConfig
from keras_bn.experiment.interrupt import StopOnSignal, TrainingInterrupted
from keras_bn.experiment.lock import RunFolderBusy, RunLock
from keras_bn.experiment.figures import plot_curves
from keras_bn.experiment.results import format_summary, seed_statistics
from keras_bn.experiment.run import Run
from keras_bn.experiment.runner import run_experiment

__all__ = [
    "DESCRIPTIONS",
    "VARIANTS",
    "CheckpointError",
    "CheckpointMismatchError",
    "ExperimentError",
    "Run",
    "RunConfig",
    "RunFolderBusy",
    "RunLock",
    "StopOnSignal",
    "TrainingInterrupted",
    "format_summary",
    "plot_curves",
    "run_experiment",
    "seed_statistics",
]
