"""Argument checks shared by the library and the experiment: one rule and one message each."""

import math

import numpy as np

__all__ = ["DROPOUT_MODES", "learning_rate", "names", "non_negative_int", "one_of", "positive_int", "seeds"]

#: The modes of the dropout layers while `recalibrate_batch_norm` collects statistics.
DROPOUT_MODES = ("inference", "training")


def _is_int(value):
    """Whether `value` is an int (NumPy's included), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name, value, *, allow_none=False):
    """Returns `int(value)`, or raises a `ValueError` naming `name` unless it is an int >= 1.

    With `allow_none`, `None` is accepted (and returned) to turn a cadence off.
    """
    if allow_none and value is None:
        return None
    if not _is_int(value) or value < 1:
        rule = "a positive int, or None to turn it off" if allow_none else "a positive int"
        raise ValueError(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return int(value)


def one_of(name, value, allowed):
    """Returns `value`, or raises a `ValueError` naming `name` unless it is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}. Received: {name}={value!r}")
    return value


def non_negative_int(name, value):
    """Returns `int(value)`, or raises a `ValueError` naming `name` unless it is an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
    return int(value)


def learning_rate(value, name="learning_rate"):
    """Returns `float(value)`, or raises a `ValueError` unless it is positive and finite.

    `inf` is refused: Adam would turn every weight into NaN at the first step.
    """
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = math.nan
    if isinstance(value, bool) or not (rate > 0 and math.isfinite(rate)):
        raise ValueError(
            f"`{name}` must be a positive finite number. Received: {name}={value!r}"
        )
    return rate


def _items(name, value, parse, rule):
    """Returns `parse(item)` of each item of a comma-separated string or a sequence, distinct."""
    if isinstance(value, str):
        value_items = [part.strip() for part in value.split(",") if part.strip()]
    else:
        try:
            value_items = list(value)
        except TypeError:
            value_items = []
    items = [parse(item) for item in value_items]
    if not items:
        raise ValueError(f"`{name}` must hold at least one {rule}. Received: {name}={value!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"`{name}` must not repeat a value. Received: {name}={value!r}")
    return tuple(items)


def names(name, value, allowed):
    """Returns distinct names from `allowed`, given as a comma-separated string or a sequence.

    Example:

    >>> names("variants", "none, manual", ("none", "keras", "manual"))
    ('none', 'manual')
    """

    def parse(item):
        """One name, checked."""
        if item not in allowed:
            raise ValueError(f"`{name}` may only hold {', '.join(allowed)}. "
                             f"Received: {item!r} in {name}={value!r}")
        return item

    return _items(name, value, parse, "of " + ", ".join(allowed))


def seeds(name, value):
    """Returns distinct ints >= 0 from an int, a comma-separated string or a sequence.

    Example:

    >>> seeds("seeds", "0, 1,2"), seeds("seeds", 3), seeds("seeds", [4, 5])
    ((0, 1, 2), (3,), (4, 5))
    """

    def parse(item):
        """One seed, checked."""
        if isinstance(item, str) and item.lstrip("-").isdigit():
            item = int(item)
        if not _is_int(item) or item < 0:
            raise ValueError(f"`{name}` must be ints >= 0. Received: {item!r} in {name}={value!r}")
        return int(item)

    return _items(name, [value] if _is_int(value) else value, parse, "seed")
