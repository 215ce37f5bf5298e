"""The argument checks of `ManualBatchNorm.__init__`: one rule and one message each.

They live apart from the layer so that its constructor reads as a list of
conversions. Each returns the converted value or raises a `TypeError` or
`ValueError` naming the argument, the rule and what was received, as Keras's
own layers do. Where `keras.layers.BatchNormalization` raises for the same
argument, the message also contains Keras's own words (users' code and tests
match on them), with the same exception type. `batch_norm.py` and nothing
else calls them.
"""

__all__ = [
    "as_float",
    "check_epsilon",
    "check_flag",
    "check_fused",
    "check_momentum",
    "check_renorm_clipping",
    "check_virtual_batch_size",
    "normalize_axis_arg",
]


def check_flag(name, value):
    """Returns `value` if it is a Python bool, else raises a `TypeError` naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a bool (True or False). Received: {name}={value!r}"
        )
    return value


def as_float(name, value):
    """Returns `float(value)`, raising a `TypeError` naming `name` when it is not a real number."""
    try:
        if isinstance(value, bool):  # An int to Python, never a sensible rate.
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a real number. Received: {name}={value!r}"
        ) from None


def normalize_axis_arg(axis):
    """Converts the `axis` argument to an int or a tuple of ints, validating its type."""

    def as_int(a):
        if isinstance(a, bool) or not isinstance(a, int):
            try:
                is_integral = int(a) == a
            except (TypeError, ValueError):
                is_integral = False
            if isinstance(a, bool) or not is_integral:
                raise TypeError(
                    "`axis` must be an int or a list/tuple of ints. "
                    f"Received: axis={axis!r}"
                )
        return int(a)

    if isinstance(axis, (list, tuple)):
        if not axis:
            raise ValueError(
                "`axis` must name at least one axis. Received: axis=" f"{axis!r}"
            )
        return tuple(as_int(a) for a in axis)
    return as_int(axis)


def check_renorm_clipping(renorm_clipping, *, renorm):
    """Validates `renorm_clipping` and returns it as a plain dict of floats.

    Without `renorm` a dict is only copied: Keras stores `renorm_clipping`
    unchecked when renorm is off, and a drop-in must load every config
    Keras's layer accepts.
    """
    if not renorm and isinstance(renorm_clipping, dict):
        return dict(renorm_clipping)
    if renorm_clipping is None:
        return None
    if not isinstance(renorm_clipping, dict):
        raise TypeError(
            "`renorm_clipping` must be a dict with keys among 'rmax', 'rmin', 'dmax', "
            f"or None. Received: renorm_clipping={renorm_clipping!r}"
        )
    unknown = sorted(set(renorm_clipping) - {"rmax", "rmin", "dmax"})
    if unknown:
        raise ValueError(
            "Received invalid keys for `renorm_clipping` argument: `renorm_clipping` "
            "accepts only the keys 'rmax', 'rmin' and 'dmax'. "
            f"Received: renorm_clipping={renorm_clipping!r} (unknown: {unknown})"
        )
    clipping = {
        k: None if v is None else as_float(f"renorm_clipping['{k}']", v)
        for k, v in renorm_clipping.items()
    }
    rmin, rmax, dmax = (clipping.get(k) for k in ("rmin", "rmax", "dmax"))
    if rmin is not None and rmin < 0:
        raise ValueError(
            "`renorm_clipping['rmin']` must be >= 0: r is a ratio of standard "
            f"deviations. Received: renorm_clipping={renorm_clipping!r}"
        )
    if rmin is not None and rmax is not None and rmax < rmin:
        raise ValueError(
            "rmax should be greater than rmin in the `renorm_clipping` argument: "
            "`renorm_clipping['rmax']` must be >= `renorm_clipping['rmin']`. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    if dmax is not None and dmax < 0:
        raise ValueError(
            "dmax should be non-negative in the `renorm_clipping` argument: "
            "`renorm_clipping['dmax']` must be >= 0: d is clipped to [-dmax, dmax]. "
            f"Received: renorm_clipping={renorm_clipping!r}"
        )
    return clipping


def check_momentum(name, value, *, allow_none):
    """Returns `value` as a float in [0, 1] (or `None` where allowed), else raises naming `name`.

    1 is allowed, as Keras allows it: the averages then never move (frozen statistics).
    """
    if value is None and allow_none:
        return None
    momentum = as_float(name, value)
    if not 0.0 <= momentum <= 1.0:
        extra = " or None (a cumulative average)" if allow_none else ""
        raise ValueError(
            f"`{name}` must be in [0, 1]{extra}: it is the weight of the old value "
            f"in the moving averages. Received: {name}={value!r}"
        )
    return momentum


def check_epsilon(epsilon):
    """Returns `epsilon` as a float, else raises unless it is a real number > 0 and finite."""
    value = as_float("epsilon", epsilon)
    if not 0.0 < value < float("inf"):
        raise ValueError(
            "`epsilon` must be > 0 and finite: it keeps the division away "
            f"from zero. Received: epsilon={epsilon!r}"
        )
    return value


def check_virtual_batch_size(virtual_batch_size, synchronized):
    """Returns `virtual_batch_size`: `None`, or a positive int when not `synchronized`; else raises."""
    if virtual_batch_size is not None and (
        isinstance(virtual_batch_size, bool)
        or not isinstance(virtual_batch_size, int)
        or virtual_batch_size < 1
    ):
        raise ValueError(
            "`virtual_batch_size` must be a positive int (samples per ghost "
            f"batch) or None. Received: virtual_batch_size={virtual_batch_size!r}"
        )
    if virtual_batch_size is not None and synchronized:
        raise ValueError(
            "`virtual_batch_size` and `synchronized=True` cannot be combined: "
            "ghost batches are local by design. Received: "
            f"virtual_batch_size={virtual_batch_size!r}, synchronized=True"
        )
    return virtual_batch_size


def check_fused(value):
    """Returns `value` if it is `None`, `True` or `False`, else raises a `TypeError`."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            "`fused` must be None (the native kernel where the options allow it), "
            f"True (always the native kernel) or False (never). Received: fused={value!r}"
        )
    return value
