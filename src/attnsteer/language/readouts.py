"""Readouts: statistics an attention call computes from its own q and k (post-norm, post-RoPE, as
the SDPA call receives them), read with the layout's token geometry. Output transforms use them
(``at.output_scale(at.readouts.cross_frame_intensity(weight=4))``).

A readout reads the tokens of its rule's ``key`` selection, in the batch rows of its rule's branch,
over every head, and returns one scalar for them (a 0-dim float32 tensor on q's device).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs
import torch

from ..errors import ConfigError, SteeringError
from ..validation import real_number
from .geometry import token_geometry
from .layout import TokenLayout


@attrs.frozen(eq=False)
class ReadoutCall:
    """What a readout knows about its call besides q and k."""

    layout: TokenLayout
    tokens: torch.Tensor  # bool [seq_len]: the tokens it reads (its rule's key selection)
    scale: float  # the call's softmax scale (SDPA's ``scale``, default head_dim ** -0.5)
    family: str  # the adapter family of the model ("wan", "cogvideox", ...)


class Readout:
    """Base class: ``read(q, k, call)`` -> 0-dim float32 tensor, q and k [B, H, N, D] of the rule's rows."""

    def read(self, q: torch.Tensor, k: torch.Tensor, call: ReadoutCall) -> torch.Tensor:
        raise NotImplementedError


def frame_token_index(layout: TokenLayout, tokens: torch.Tensor) -> torch.Tensor:
    """LongTensor [T, S]: the positions of the selected tokens as (frame, spatial location), for
    selections made of whole video frames; raises naming what else was selected (cached per selection)."""
    return _frame_token_index(layout, tokens.cpu().numpy().tobytes())


@functools.lru_cache(maxsize=64)
def _frame_token_index(layout: TokenLayout, packed: bytes) -> torch.Tensor:
    tokens = torch.frombuffer(bytearray(packed), dtype=torch.bool)
    geometry = token_geometry(layout)
    position = torch.arange(layout.seq_len)
    video = (position >= layout.video_start) & (position < layout.video_end)
    outside = int((tokens & ~video).sum())
    if outside:
        raise ConfigError(f"it reads video frames, but the rule's key selects {outside} tokens outside them "
                          "(text or segment tokens); use Rule.key=at.video or a frame selector such as at.frames[1:]")
    frames = geometry.frame[tokens & video]
    counts = torch.bincount(frames, minlength=layout.num_frames)
    partial = [f for f, c in enumerate(counts.tolist()) if 0 < c < layout.tokens_per_frame]
    if partial:
        raise ConfigError(f"it reads whole frames, but the rule's key selects part of frames {partial}; "
                          "use Rule.key=at.video or a frame selector such as at.frames[1:]")
    return position[tokens & video].view(-1, layout.tokens_per_frame)  # video tokens are frame-major


def _weight(value: object) -> float | Mapping[str, float] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError("cross_frame_intensity(weight=...) as a mapping must name at least one model family")
        return {str(family): _real(w) for family, w in value.items()}
    return _real(value)


def _real(value: object) -> float:
    return real_number(value, "cross_frame_intensity(weight=...) (None, a number or a mapping from model family to one)")


@attrs.frozen(repr=False, eq=False)
class CrossFrameIntensity(Readout):
    """Enhance-A-Video's cross-frame intensity (Luo et al. 2025, authors' ``enhance_score``).

    For every spatial location s, the T tokens at s across the selected frames form their own T x T
    attention ``softmax((q_s * scale) @ k_s^T)`` (logits in the model dtype, softmax in float32). CFI is
    the mean over rows, heads and locations of the mean off-diagonal probability. Memory O(N x T).

    ``weight=None`` reads CFI itself; a number ``w`` reads the authors' score ``max(1, CFI * (T + w))``;
    a mapping ``{family: w}`` takes ``w`` by the model's adapter family (an unlisted family raises).
    """

    weight: float | Mapping[str, float] | None = attrs.field(default=None, converter=_weight)

    def weight_for(self, family: str) -> float | None:
        if not isinstance(self.weight, Mapping):
            return self.weight
        if family not in self.weight:
            raise ConfigError(f"{self!r} has no weight for model family {family!r} (it has "
                              f"{', '.join(f'{f}={w:g}' for f, w in self.weight.items())}); pass weight=<number>")
        return self.weight[family]

    def read(self, q: torch.Tensor, k: torch.Tensor, call: ReadoutCall) -> torch.Tensor:
        weight = self.weight_for(call.family)
        index = frame_token_index(call.layout, call.tokens)
        frames, locations = index.shape
        if frames < 2:
            raise SteeringError(f"{self!r} needs at least 2 frames to compare; it reads {frames} of the call's "
                                f"{call.layout.num_frames} latent frames")
        b, h, _, d = q.shape
        flat = index.reshape(-1)
        start = int(flat[0])
        contiguous = int(flat[-1]) - start + 1 == flat.numel()

        def per_location(x: torch.Tensor) -> torch.Tensor:  # [B, H, N, D] -> [B, H, S, T, D]
            x = x[:, :, start : start + flat.numel()] if contiguous else x.index_select(2, flat.to(x.device))
            return x.reshape(b, h, frames, locations, d).transpose(2, 3)

        q_loc, k_loc = per_location(q), per_location(k)
        logits = ((q_loc * call.scale) @ k_loc.transpose(-1, -2)).float()  # [B, H, S, T, T]
        # softmax written out: torch's CPU softmax over a last dimension of T is several times slower
        weights = (logits - logits.amax(dim=-1, keepdim=True)).exp()
        probs = weights / weights.sum(dim=-1, keepdim=True)
        off_diagonal = probs.masked_fill(torch.eye(frames, dtype=torch.bool, device=q.device), 0.0)
        intensity = (off_diagonal.sum(dim=(-2, -1)) / (frames * frames - frames)).mean()
        if weight is None:
            return intensity
        return (intensity * (frames + weight)).clamp(min=1)

    def __repr__(self) -> str:
        if isinstance(self.weight, Mapping):
            return f"cross_frame_intensity(weight={dict(self.weight)!r})"
        return "cross_frame_intensity()" if self.weight is None else f"cross_frame_intensity(weight={self.weight:g})"


def cross_frame_intensity(weight: float | Mapping[str, float] | None = None) -> CrossFrameIntensity:
    """Enhance-A-Video's cross-frame intensity readout; see :class:`CrossFrameIntensity`."""
    return CrossFrameIntensity(weight)


__all__ = ["CrossFrameIntensity", "Readout", "ReadoutCall", "cross_frame_intensity", "frame_token_index"]
