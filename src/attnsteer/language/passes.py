"""Multi-pass attention: several passes of one attention call, each with its own rules, combined on their outputs.

``at.multi_pass(passes, combine)`` is the transform of a rule (``Rule(at.video, at.tokens, at.multi_pass(...))``):
in each self-attention call the rule is on in, attention runs once per :class:`Pass` (the session's other logit
rules plus the pass's own rules, or, for a pass with ``frames=(start, stop)``, only those latent frames' queries
and keys) and ``combine`` makes one output of theirs, which replaces the output rows of the rule's query tokens
(in the batch rows of its branch). ``passes`` is a tuple of passes or a function of the call (:class:`PassCall`:
its layout, and the spatial grid a temporal call folds into its batch) that returns them, so a recipe reads the
frame count from the call. Combinations: :func:`weighted_mean` (per-frame weights of each pass),
:func:`spectral_blend` (low frequencies of the first pass, high of the second, in the 3-D Fourier domain over
frames, rows and cols: FreeLong) and :func:`combine_with` (a user function). One pass: its output, as is.

FreeLong and FreeNoise are written in it (``recipes/freelong.py``, ``recipes/freenoise.py``); the frame windows of
FreeNoise are :func:`frame_windows`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ..errors import ConfigError, SteeringError
from ..validation import integer, real_number
from .layout import TokenLayout
from .rules import Rule
from .selectors import AllTokens
from .transforms import Transform


@attrs.frozen
class PassCall:
    """One attention call as a multi-pass transform sees it: ``layout``; ``fold`` the (rows, cols) of the spatial
    positions a temporal call folds into its batch (video-major, row-major; None for calls over frame tokens); and
    ``top`` whether that fold is the model input's full latent grid (a UNet's top-resolution blocks)."""

    layout: TokenLayout
    batch: int
    fold: tuple[int, int] | None = None
    top: bool = False


def _rules(value: object) -> tuple:
    items = tuple(value)  # type: ignore[call-overload]
    for r in items:
        if not isinstance(r, Rule) or r.transform.kind in ("output", "passes"):
            raise ConfigError(f"Pass(rules=...) must hold logit rules (at.Rule with a logit transform), got {r!r}")
    return items


def _frames(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    start, stop = (integer(v, "Pass(frames=...)", minimum=0) for v in value)  # type: ignore[union-attr]
    if stop <= start:
        raise ConfigError(f"Pass(frames=(start, stop)) needs start < stop, got {value!r}")
    return start, stop


def _weights(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    out = tuple(real_number(w, "Pass(weights=...)") for w in value)  # type: ignore[union-attr]
    if not out or any(w < 0 for w in out):
        raise ConfigError(f"Pass(weights=...) must be non-empty weights >= 0, got {value!r}")
    return out


@attrs.frozen
class Pass:
    """One pass of an attention call: its own logit ``rules`` (on top of the session's), or, with ``frames=(start,
    stop)``, attention among those latent frames only (queries and keys; ``weights``: one per frame of the window,
    for :func:`weighted_mean`; default 1)."""

    rules: tuple = attrs.field(default=(), converter=_rules)
    frames: tuple[int, int] | None = attrs.field(default=None, converter=_frames)
    weights: tuple[float, ...] | None = attrs.field(default=None, converter=_weights)

    def __attrs_post_init__(self) -> None:
        if self.frames is not None and self.rules:
            raise ConfigError(f"Pass(frames={self.frames}) takes no rules: a windowed pass runs plain attention "
                              "among its frames")
        if self.weights is not None and (self.frames is None or len(self.weights) != self.frames[1] - self.frames[0]):
            raise ConfigError(f"Pass(weights=...) needs frames=(start, stop) and one weight per frame, got "
                              f"{len(self.weights)} weights for frames={self.frames}")

    def token_weights(self, layout: TokenLayout, dtype: torch.dtype) -> torch.Tensor:
        """This pass's weight of every token of ``layout`` [seq_len]: its frame weights (0 outside its window)."""
        if self.frames is None:
            return torch.ones(layout.seq_len, dtype=dtype)
        start, stop = self.frames
        weights = torch.zeros(layout.seq_len, dtype=dtype)
        per_frame = torch.tensor(self.weights or (1.0,) * (stop - start), dtype=dtype)
        t = layout.tokens_per_frame
        weights[layout.video_start + start * t:layout.video_start + stop * t] = per_frame.repeat_interleave(t)
        return weights


class Combine:
    """How a multi-pass transform makes one output [B, H, N, D] of its passes' outputs (``__call__``)."""

    def __call__(self, outputs: Sequence[torch.Tensor], passes: Sequence[Pass], call: PassCall) -> torch.Tensor:
        raise NotImplementedError


@attrs.frozen
class WeightedMean(Combine):
    """Per token, ``sum_p w_p o_p / sum_p w_p`` with each pass's frame weights; 0 where no pass covers a token
    (FreeNoise's ``where(count > 0, value / count, value)``)."""

    def __call__(self, outputs: Sequence[torch.Tensor], passes: Sequence[Pass], call: PassCall) -> torch.Tensor:
        work = torch.float64 if outputs[0].dtype == torch.float64 else torch.float32
        value = torch.zeros(outputs[0].shape, dtype=work, device=outputs[0].device)
        count = torch.zeros(call.layout.seq_len, dtype=work, device=outputs[0].device)
        for out, p in zip(outputs, passes):
            w = p.token_weights(call.layout, work).to(out.device)
            value = value + out.to(work) * w[:, None]
            count = count + w
        return torch.where(count[:, None] > 0, value / count.clamp_min(1e-300)[:, None], value).to(outputs[0].dtype)

    def __repr__(self) -> str:
        return "weighted_mean()"


def _positive(name: str, value: object) -> float:
    number = real_number(value, f"spectral_blend({name}=...)")
    if number <= 0:
        raise ConfigError(f"spectral_blend({name}=...) must be > 0, got {value!r}")
    return number


def gaussian_low_pass(frames: int, rows: int, cols: int, d_s: float, d_t: float) -> torch.Tensor:
    """FreeLong's (FreeInit's) Gaussian low-pass filter [F, rows, cols] (float64), centred like ``fftshift``:
    ``exp(-((t'/d_t)^2 + (y'/d_s)^2 + (x'/d_s)^2) / 2)`` with coordinates ``2 i / n - 1`` per axis."""
    t, y, x = ((2 * torch.arange(n, dtype=torch.float64) / n - 1) for n in (frames, rows, cols))
    squared = (t / d_t)[:, None, None] ** 2 + (y / d_s)[None, :, None] ** 2 + (x / d_s)[None, None, :] ** 2
    return torch.exp(-0.5 * squared)


@attrs.frozen
class SpectralBlend(Combine):
    """Low frequencies of the first pass plus high frequencies of the second, in the 3-D Fourier domain over
    (frames, rows, cols) per channel: ``Re ifftn(ifftshift(L F(o_0) + (1 - L) F(o_1)))`` with ``L`` the
    :func:`gaussian_low_pass` (computed in float32, float64 for float64 inputs; FreeLong's ``freq_mix_3d``)."""

    d_s: float = attrs.field(converter=lambda v: _positive("d_s", v))
    d_t: float = attrs.field(converter=lambda v: _positive("d_t", v))

    def __call__(self, outputs: Sequence[torch.Tensor], passes: Sequence[Pass], call: PassCall) -> torch.Tensor:
        if len(outputs) != 2:
            raise SteeringError(f"{self!r} blends exactly two passes (low frequencies of the first, high of the "
                                f"second), got {len(outputs)}")
        low, high = outputs
        work = torch.float64 if low.dtype == torch.float64 else torch.float32
        to_video, from_video = video_axes(low.shape, call)
        dims = (-3, -2, -1)
        spectra = [torch.fft.fftshift(torch.fft.fftn(to_video(o.to(work)), dim=dims), dim=dims) for o in (low, high)]
        f, r, c = spectra[0].shape[-3:]
        lpf = gaussian_low_pass(f, r, c, self.d_s, self.d_t).to(work).to(low.device)
        mixed = spectra[0] * lpf + spectra[1] * (1 - lpf)
        blended = torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real
        return from_video(blended).to(low.dtype)

    def __repr__(self) -> str:
        return f"spectral_blend(d_s={self.d_s:g}, d_t={self.d_t:g})"


def video_axes(shape: torch.Size, call: PassCall) -> tuple[Callable, Callable]:
    """Functions between an attention output [B, H, N, D] and its video view [b, H, D, F, rows, cols], and back:
    frame tokens with the layout's grid (DiT calls, video tokens only), or a temporal call's frames with the
    spatial positions folded into its batch (``call.fold``)."""
    layout = call.layout
    batch, heads, _, dim = shape
    frames = layout.num_frames
    if layout.tokens_per_frame == 1 and call.fold is not None:
        rows, cols = call.fold
        videos = batch // (rows * cols)
        return (lambda o: o.reshape(videos, rows, cols, heads, frames, dim).permute(0, 3, 5, 4, 1, 2),
                lambda x: x.permute(0, 4, 5, 1, 3, 2).reshape(shape))
    if layout.grid is None or layout.segments or layout.video_start:
        raise SteeringError(f"a spectral blend needs a video-only call with a known token grid (frames, rows, cols); "
                            f"this call's layout is {layout.describe()}")
    rows, cols = layout.grid
    return (lambda o: o.reshape(batch, heads, frames, rows, cols, dim).permute(0, 1, 5, 2, 3, 4),
            lambda x: x.permute(0, 1, 3, 4, 5, 2).reshape(shape))


@attrs.frozen
class CombineWith(Combine):
    """A user function ``fn(outputs, passes, call) -> Tensor`` of the passes' outputs (each [B, H, N, D], the
    call's dtype), returning one output of the same shape."""

    fn: Callable[..., torch.Tensor] = attrs.field(validator=attrs.validators.is_callable())

    def __call__(self, outputs: Sequence[torch.Tensor], passes: Sequence[Pass], call: PassCall) -> torch.Tensor:
        out = self.fn(list(outputs), tuple(passes), call)
        if not isinstance(out, torch.Tensor) or out.shape != outputs[0].shape:
            raise SteeringError(f"{self!r} must return a tensor of shape {tuple(outputs[0].shape)}, got "
                                f"{getattr(out, 'shape', type(out).__name__)}")
        return out

    def __repr__(self) -> str:
        return f"combine_with({getattr(self.fn, '__name__', self.fn)!r})"


def pyramid_weights(size: int) -> tuple[float, ...]:
    """FreeNoise's window weights ``1, 2, .., m, .., 2, 1`` (``generate_weight_sequence``: even sizes repeat m)."""
    if size % 2 == 0:
        half = list(range(1, size // 2 + 1))
        return tuple(float(w) for w in half + half[::-1])
    top = (size + 1) // 2
    return tuple(float(w) for w in [*range(1, top), top, *range(top - 1, 0, -1)])


@attrs.frozen
class FrameWindows:
    """The passes of FreeNoise's windowed attention for a call of F latent frames: windows ``[i S, i S + W)`` for
    ``i = 0 .. (F - W) // S`` with pyramid weights; one plain pass when ``W >= F`` (the method is then the plain
    call). Refused where ``(F - W) % S != 0``: the authors' code would leave the last frames' output at zero."""

    size: int = attrs.field(converter=lambda v: integer(v, "frame_windows(size=...)", minimum=1))
    stride: int = attrs.field(converter=lambda v: integer(v, "frame_windows(stride=...)", minimum=1))

    def __call__(self, call: PassCall) -> tuple[Pass, ...]:
        frames = call.layout.num_frames
        if frames <= self.size:
            return (Pass(),)
        if (frames - self.size) % self.stride:
            raise SteeringError(f"{self!r} on {frames} latent frames: (frames - size) % stride must be 0, or the last "
                                f"{(frames - self.size) % self.stride} frames fall in no window; choose a stride that "
                                f"divides {frames - self.size}")
        weights = pyramid_weights(self.size)
        return tuple(Pass(frames=(s, s + self.size), weights=weights)
                     for s in range(0, frames - self.size + 1, self.stride))

    def __repr__(self) -> str:
        return f"frame_windows({self.size}, {self.stride})"


def _passes(value: object) -> tuple[Pass, ...] | Callable[[PassCall], Sequence[Pass]]:
    if callable(value):
        return value  # type: ignore[return-value]
    items = tuple(value)  # type: ignore[call-overload]
    if not items or not all(isinstance(p, Pass) for p in items):
        raise ConfigError(f"multi_pass(passes=...) must be at.Pass objects or a function of the call returning them, "
                          f"got {value!r}")
    return items


def _combine(value: object) -> Combine:
    if not isinstance(value, Combine):
        raise ConfigError("multi_pass(combine=...) must be at.weighted_mean(), at.spectral_blend(d_s, d_t) or "
                          f"at.combine_with(fn), got {value!r}")
    return value


@attrs.frozen(repr=False)
class MultiPass(Transform):
    """Several passes of the call, combined on their outputs (see the module docstring)."""

    kind = "passes"
    passes: Any = attrs.field(converter=_passes)
    combine: Combine = attrs.field(converter=_combine)

    def passes_for(self, call: PassCall) -> tuple[Pass, ...]:
        """The passes of one call (a function of the call is asked here)."""
        if not callable(self.passes):
            return self.passes
        found = tuple(self.passes(call))
        if not found or not all(isinstance(p, Pass) for p in found):
            raise SteeringError(f"{self!r}: the passes function returned {found!r}; it must return at.Pass objects")
        return found

    def check_rule(self, rule: Any) -> None:
        problems = {"heads": rule.heads is not None, "pairs": rule.pairs is not None,
                    "key": not isinstance(rule.key, AllTokens), "attention": rule.attention != "self"}
        bad = [name for name, wrong in problems.items() if wrong]
        if bad:
            raise ConfigError(f"Rule.{bad[0]} cannot go with {self!r}: a multi-pass rule runs whole self-attention "
                              "calls (attention='self', key=at.tokens, heads=None, pairs=None) and its query picks the "
                              "output rows it replaces")

    def score(self, s, b, h, q_idx, kv_idx):
        raise ConfigError(f"{self!r} runs several passes of the call, it is not a logit edit")

    def __repr__(self) -> str:
        passes = repr(self.passes) if callable(self.passes) else f"{len(self.passes)} passes"
        return f"multi_pass({passes}, {self.combine!r})"


def multi_pass(passes: Sequence[Pass] | Callable[[PassCall], Sequence[Pass]], combine: Combine) -> MultiPass:
    """Run the call once per pass and combine the outputs (``passes``: passes, or a function of the call)."""
    return MultiPass(passes, combine)


def weighted_mean() -> WeightedMean:
    """Combine passes by their per-frame weights (FreeNoise)."""
    return WeightedMean()


def spectral_blend(d_s: float = 0.25, d_t: float = 0.25) -> SpectralBlend:
    """Low frequencies of the first pass, high of the second, over (frames, rows, cols) (FreeLong)."""
    return SpectralBlend(d_s, d_t)


def combine_with(fn: Callable[..., torch.Tensor]) -> CombineWith:
    """Combine passes with ``fn(outputs, passes, call)``."""
    return CombineWith(fn)


def frame_windows(size: int, stride: int) -> FrameWindows:
    """FreeNoise's windows of ``size`` latent frames every ``stride`` frames, pyramid-weighted."""
    return FrameWindows(size, stride)


__all__ = ["Combine", "CombineWith", "FrameWindows", "MultiPass", "Pass", "PassCall", "SpectralBlend", "WeightedMean",
           "combine_with", "frame_windows", "gaussian_low_pass", "multi_pass", "pyramid_weights", "spectral_blend",
           "weighted_mean"]
