"""Reproduces the seed notebook: a 19-conv-layer CNN on MNIST with and without batch norm.

Usage (the same options as the `keras-bn` command):

    python examples/deep_mnist.py --variants none,keras,manual --batches 800 --out runs/deep_mnist
    python examples/deep_mnist.py --seeds 0,1,2,3,4 --out runs/seeds

It prints each variant's notebook log and a summary table, and writes
`results.json`, `curves.png` and a checkpoint per run to `OUT/<run folder>`, a
folder named by the settings (other flags, another folder). MNIST is read from
`--data-dir`, else from `$KERAS_BN_MNIST_DIR`, else downloaded by Keras. With
`--seeds` every variant is trained once per seed and the table gives the spread.
After Ctrl-C or a crash, the same command resumes where it stopped.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("keras_bn") is None:  # Run from a checkout that is not installed.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_bn.experiment.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
