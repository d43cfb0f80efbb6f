"""Tolerances derived from a dtype and a magnitude, so that an exactness check holds on any CPU.

Two computations of the same value in a floating dtype with machine epsilon ``eps`` (``2**-23`` for
float32) differ when they sum in a different order: another vector width (``ATEN_CPU_CAPABILITY``),
blocking, thread count, batch shape or chunking. Each of the ``ops`` roundings along a reduction adds an
error of at most ``eps / 2`` relative to the running value, uniformly distributed, so with standard
deviation ``eps / sqrt(12)``; independent errors add in quadrature, so one result is off its exact value
by about ``sqrt(ops / 12) * eps * |x|`` and two results summed in different orders by ``sqrt(2)`` times
that: ``~0.4 * sqrt(ops) * eps * |x|``. :func:`tolerance` allows ``SIGMAS = 10`` such standard
deviations (``4.1 * sqrt(ops) * eps * |x|``): the largest of a million independent differences stays
below 5 of them, and a real error (a wrong bias of 1e-3 on one group of logits moves an attention weight
by about 2e-4) is still orders of magnitude above the tolerance of a float32 reduction over thousands
of terms (3e-5 at ``ops=4096``).

What this cannot cover: a float32 run of a whole pipeline compared with another float32 run; rounding
differences in one layer grow through the following layers and steps by an amount no formula bounds.
Compare such runs in float64 (both sides), or against a dense float64 reference of the same inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from attnsteer.errors import ConfigError

__all__ = ["SIGMAS", "assert_close", "tolerance"]

SIGMAS = 10.0  # standard deviations of the difference of two reduction orders that a tolerance allows


def tolerance(dtype: torch.dtype | np.dtype | type, magnitude: float = 1.0, ops: int = 1) -> float:
    """Absolute tolerance between two computations, in ``dtype``, of values of size ``magnitude`` that each
    round ``ops`` times in a different order: ``SIGMAS * sqrt(2 * ops / 12) * eps(dtype) * magnitude``."""
    eps = _eps(dtype)
    if not (math.isfinite(magnitude) and magnitude >= 0):
        raise ConfigError(f"magnitude must be a finite number >= 0, got {magnitude!r}")
    if isinstance(ops, bool) or not isinstance(ops, int) or ops < 1:
        raise ConfigError(f"ops must be an int >= 1 (the roundings along one reduction), got {ops!r}")
    return SIGMAS * math.sqrt(ops / 6.0) * eps * magnitude


def assert_close(actual: Any, expected: Any, *, dtype: torch.dtype | None = None, magnitude: float | None = None,
                 ops: int = 1, msg: str = "") -> None:
    """Assert ``|actual - expected| <= tolerance(dtype, magnitude, ops)`` elementwise (shapes equal).

    ``dtype``: the precision the values were computed in (default: the lower of the two inputs' dtypes);
    ``magnitude``: the size of the values (default: the largest finite ``|expected|``).
    Tensors and arrays of any float dtype are compared in float64."""
    a, e = _float64(actual), _float64(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{msg + ': ' if msg else ''}shapes differ: {tuple(a.shape)} != {tuple(e.shape)}")
    dtype = dtype if dtype is not None else _lower_dtype(actual, expected)
    if magnitude is None:
        finite = e[torch.isfinite(e)]
        magnitude = float(finite.abs().max()) if finite.numel() else 0.0
    atol = tolerance(dtype, magnitude, ops)
    same_inf = torch.isinf(a) & (a == e)
    diff = torch.where(same_inf, torch.zeros_like(a), (a - e).abs())
    bad = torch.isnan(diff) | (diff > atol)
    if bool(bad.any()):
        worst = float(torch.nan_to_num(diff, nan=math.inf).max())
        index = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise AssertionError(
            f"{msg + ': ' if msg else ''}{int(bad.sum())} of {bad.numel()} elements differ by more than "
            f"{atol:.3g} (= tolerance({dtype}, magnitude={magnitude:.3g}, ops={ops})); largest difference "
            f"{worst:.3g}, first at index {index}: {float(a[index])!r} vs {float(e[index])!r}"
        )


def _float64(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x.detach())
    return t.to(device="cpu", dtype=torch.float64)


def _dtype_of(x: Any) -> torch.dtype:
    if torch.is_tensor(x):
        return x.dtype
    return torch.as_tensor(np.asarray(x)[:0] if np.ndim(x) else np.asarray([x])).dtype


def _lower_dtype(a: Any, b: Any) -> torch.dtype:
    dtypes = [d for d in (_dtype_of(a), _dtype_of(b)) if d.is_floating_point]
    if not dtypes:
        raise ConfigError("assert_close needs a dtype= when neither input is a floating tensor or array")
    return max(dtypes, key=lambda d: torch.finfo(d).eps)


def _eps(dtype: Any) -> float:
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype, got {dtype}")
        return float(torch.finfo(dtype).eps)
    np_dtype = np.dtype(dtype)
    if np_dtype.kind != "f":
        raise ConfigError(f"dtype must be a floating dtype, got {np_dtype}")
    return float(np.finfo(np_dtype).eps)
