"""The figure of `keras_bn.corruptions`: one MNIST test digit under every corruption.

Usage (from the repository root, with the real MNIST):

    KERAS_BN_MNIST_DIR=/path/to/mnist python benchmarks/corruptions_figure.py
    python benchmarks/corruptions_figure.py --index 7 --out /tmp/corruptions.png

Draws a grid of 15 rows, one per corruption in `CORRUPTIONS` order, by 6 columns,
severities 0 (the clean digit) to 5, of test image `--index` corrupted with seed 0,
and writes it as a PNG (by default `docs/images/corruptions.png`).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from keras_bn import load_mnist
from keras_bn.corruptions import CORRUPTIONS, corrupt

SEVERITIES = range(6)


def draw(digit, path):
    """Writes the grid of `digit` (a float image `(28, 28, 1)`) to `path`."""
    rows, cols = len(CORRUPTIONS), len(SEVERITIES)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * 0.8 + 1.2, rows * 0.8 + 0.3))
    for row, name in enumerate(CORRUPTIONS):
        for col, severity in enumerate(SEVERITIES):
            image = corrupt(digit[None], name, severity, seed=0)[0, ..., 0]
            axis = axes[row, col]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"severity {severity}" if severity else "clean", fontsize=7)
            if col == 0:
                axis.set_ylabel(name.replace("_", " "), fontsize=7, rotation=0,
                                ha="right", va="center")
    figure.subplots_adjust(left=0.2, right=0.99, top=0.97, bottom=0.01,
                           wspace=0.05, hspace=0.05)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def main():
    """Parses the flags, loads the test digit and writes the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, default=0, help="which MNIST test image")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the MNIST files (else KERAS_BN_MNIST_DIR)")
    parser.add_argument("--out", default=os.path.join("docs", "images", "corruptions.png"))
    args = parser.parse_args()
    images = load_mnist(args.data_dir).test.images
    if not 0 <= args.index < len(images):
        parser.error(f"--index must be in [0, {len(images) - 1}]. Received: {args.index}")
    draw(images[args.index], args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
