"""The `keras-bn` command's entry point: it parses the arguments before Keras is imported.

`import keras_bn` imports Keras, and with it the backend (about 3 s with TensorFlow),
because that import is what registers keras-bn's layers (`ManualBatchNorm`, ...) for
`keras.saving.load_model`. The command's parser needs none of it: its modules
(`keras_bn.experiment.cli`, `keras_bn.experiment.config`, `keras_bn._checks`) import
only the standard library and NumPy. So this module, which lives outside the package,
imports them under placeholders of `keras_bn` and `keras_bn.experiment` whose
`__init__` does not run, lets the parser answer `--help`, `--version` and bad
arguments, and only for a run that may start drops the placeholders and imports the
package for real, with the garbage collector off (`_import_command`). The command
itself is `keras_bn.experiment.cli.main`, run by `keras_bn.experiment.cli.run_command`.
"""

import gc
import importlib
import importlib.util
import sys

__all__ = ["main"]

#: The packages above the parser's modules, placeholders of which skip their `__init__`.
_PACKAGES = ("keras_bn", "keras_bn.experiment")


def _parse_before_keras(argv):
    """Parses `argv` with the command's parser, imported without its packages' `__init__`.

    argparse exits here (status 0 after `--help` or `--version`, 2 after a bad
    argument); otherwise the modules imported are dropped again.
    """
    for name in _PACKAGES:
        sys.modules[name] = importlib.util.module_from_spec(importlib.util.find_spec(name))
    try:
        importlib.import_module("keras_bn.experiment.cli").build_parser().parse_args(argv)
    finally:
        for name in [name for name in sys.modules if name.partition(".")[0] == "keras_bn"]:
            del sys.modules[name]


def _import_command():
    """Imports `keras_bn.experiment.cli`, and with it Keras, without garbage collections or pyplot.

    The import makes millions of objects that live as long as the process;
    the collector would scan them all several times on the way (about 0.7 s
    with TensorFlow). It is off during the import, the objects are then frozen
    (`gc.freeze`: kept out of every later collection) and it is on again.

    Keras imports `matplotlib.pyplot` where it is installed, for
    `keras.visualization` alone (0.4 s). The command draws its figures without
    pyplot (`keras_bn.experiment.figures`) and never calls
    `keras.visualization`, so pyplot is kept out of this import: Keras sees
    it as absent. It stays importable for anything after.
    """
    enabled = gc.isenabled()
    gc.disable()
    blocked = sys.modules.setdefault("matplotlib.pyplot", None) is None
    try:
        return importlib.import_module("keras_bn.experiment.cli")
    finally:
        if blocked and sys.modules.get("matplotlib.pyplot", 0) is None:
            del sys.modules["matplotlib.pyplot"]
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv=None):
    """Runs the `keras-bn` command with `argv` (default: `sys.argv[1:]`); see `cli.main`.

    It is the process's command (`cli.run_command`): it ends by freezing the
    heap, for a faster exit.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "keras_bn" not in sys.modules:  # Else Keras is imported already: nothing to save.
        _parse_before_keras(argv)
    return _import_command().run_command(argv)


if __name__ == "__main__":
    raise SystemExit(main())
