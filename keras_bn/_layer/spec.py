"""What `ManualBatchNorm`'s paths read of the layer, declared: its layout, its options, its variables.

The layer makes a `Spec` and a `Weights` at `build`, and again whenever one of
the attributes they carry is set (`recalibrate_batch_norm` sets `momentum` for
its passes), and hands them to the path each call takes
(keras_bn/_layer/paths.py); no helper reads the layer. Both are plain frozen
values, which Keras's attribute tracking and saving pass over.
"""

import dataclasses
from typing import Any, Optional

__all__ = ["Layout", "Spec", "Weights"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the statistics are taken, for inputs of the built shape (`layout.resolve` makes it)."""

    #: The `axis` argument as given, for messages.
    axis: Any
    #: The channel axes, sorted and non-negative: one statistic per position along them.
    channel_axes: tuple
    #: Every other axis, reduced by the statistics.
    reduction_axes: tuple
    #: The input's rank, the channel sizes on the channel axes and 1 elsewhere: the
    #: statistics keep their reduced dims, and the weights take this shape to broadcast.
    broadcast_shape: tuple
    #: How many statistics there are (the product of the channel sizes).
    channels: int


@dataclasses.dataclass(frozen=True)
class Spec:
    """The layer's layout and options as this call reads them."""

    layout: Layout
    epsilon: float
    momentum: Optional[float]
    renorm: bool
    renorm_clipping: Optional[dict]
    renorm_momentum: float
    virtual_batch_size: Optional[int]
    unbiased_variance: bool
    fused: Optional[bool]


@dataclasses.dataclass(frozen=True)
class Weights:
    """The layer's variables: `None` for those its options do not use."""

    gamma: Any
    beta: Any
    moving_mean: Any
    moving_variance: Any
    moving_stddev: Any = None  # renorm
    renorm_mean: Any = None  # renorm
    renorm_stddev: Any = None  # renorm
    num_batches_tracked: Any = None  # momentum=None
