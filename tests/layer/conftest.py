"""The layer's tests: ManualBatchNorm's maths, options, paths and masks.

They run on every backend, since each backend takes its own path through the
layer. The saving test starts TensorFlow processes of its own.
"""

from helpers import BACKENDS, left_out

collect_ignore = left_out(__file__, BACKENDS, {"test_saving.py": ("tensorflow",)})
