"""Validation of user-given numbers, shared by rules, schedules and recipes: any real number type
(int, float, numpy scalars, one-element tensors) is accepted and converted; NaN, values that do
not fit a float and bools are refused with a message naming the field."""

from __future__ import annotations

import math
import numbers

import torch

from .errors import ConfigError


def real_number(value: object, field: str, *, allow_inf: bool = False) -> float:
    """``value`` as a float; ``field`` names it in the error (e.g. ``"bias(value)"``)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{field} must be a real number, got {value!r}")
    try:
        number = float(value)
    except (OverflowError, ValueError):
        raise ConfigError(f"{field} must be a real number representable as a float, got {value!r}") from None
    if math.isnan(number):
        raise ConfigError(f"{field} must not be NaN")
    if math.isinf(number) and not allow_inf:
        raise ConfigError(f"{field} must be finite, got {value!r}")
    return number


def integer(value: object, field: str, minimum: int | None = None) -> int:
    """``value`` as an int (Python or numpy integer), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{field} must be an int, got {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ConfigError(f"{field} must be an int >= {minimum}, got {value!r}")
    return number
