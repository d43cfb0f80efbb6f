"""Attention temperature for videos longer or larger than training.

- ``proportional_attention`` (Lumina-Next's proportional attention, diffusers'
  ``LuminaAttnProcessor2_0``): every logit times ``sqrt(log(N) / log(N_train))`` for a call of N
  tokens, in every self-attention layer and step; 1 at the training length. The authors ran an
  image DiT; on video models it is a port.
- ``ultravico`` (UltraViCo, thu-ml/DiT-Extrapolation branch ``ultra-wan``, Wan 2.1 T2V): in every
  ``attn1`` call, positive logits between tokens more than half a training window apart
  (``|m - n| > tokens_per_frame * train_frames / 2``) are multiplied by ``alpha`` (0.9), and
  queries ``m <= tokens_per_frame`` get -1e4 towards keys ``n > train_frames * tokens_per_frame``
  (the authors' indices, including their ``<=``). The authors run it in an int8 SageAttention
  kernel with ``smooth_k=True``: the rule reads logits of keys centred over the call
  (``q . (k - mean k)``), which differ from the raw logits by a per-query constant, so the sign test
  differs. ``smooth_k=True`` (the default) does the same; ``smooth_k=False`` applies it to the raw
  logits. This is the formula in float, so it matches their math, not their quantisation.
"""

from __future__ import annotations

import attrs
import torch

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.validation import integer, real_number


@at.recipe
def proportional_attention(train_tokens: int = 32760) -> at.Recipe:
    """Scale logits by ``sqrt(log N / log train_tokens)`` (default: Wan 2.1 480p, 81 frames = 21 x 1560 tokens)."""
    train_tokens = integer(train_tokens, "proportional_attention(train_tokens=...)", minimum=2)
    rule = at.Rule(at.tokens, at.tokens, at.proportional(train_tokens))
    return at.Recipe("proportional_attention", (rule,), {"train_tokens": train_tokens})


@attrs.frozen(repr=False)
class UltraViCoScore(at.Transform):
    """UltraViCo's score rule for one call (the window is measured in the call's frame tokens)."""

    alpha: float
    train_frames: int
    tokens_per_frame: int | None = None
    smooth_k: bool = True

    @property
    def centred_keys(self) -> bool:  # type: ignore[override]
        return self.smooth_k

    def bind(self, layout: at.TokenLayout) -> at.Transform:
        return attrs.evolve(self, tokens_per_frame=layout.tokens_per_frame)

    def score(self, s, b, h, q_idx, kv_idx):
        frame = self.tokens_per_frame
        far = (q_idx - kv_idx).abs() > frame * self.train_frames / 2
        s = torch.where(far & (s >= 0), s * self.alpha, s)
        beyond = (q_idx <= frame) & (kv_idx > self.train_frames * frame)
        return torch.where(beyond, torch.full_like(s, -1e4), s)

    def __repr__(self) -> str:
        smooth = "" if self.smooth_k else ", smooth_k=False"
        return f"ultravico_score(alpha={self.alpha:g}, train_frames={self.train_frames}{smooth})"


@at.recipe
def ultravico(alpha: float = 0.9, train_frames: int = 21, smooth_k: bool = True) -> at.Recipe:
    """UltraViCo's extrapolation rule on video self-attention (Wan): damp far positive logits by ``alpha``.

    ``smooth_k=True`` (the authors' kernel) reads the sign of the logits of keys centred over the call;
    ``False`` reads the raw logits."""
    alpha = real_number(alpha, "ultravico(alpha=...)")
    train_frames = integer(train_frames, "ultravico(train_frames=...)", minimum=1)
    if not isinstance(smooth_k, bool):
        raise ConfigError(f"ultravico(smooth_k=...) must be True or False, got {smooth_k!r}")
    rule = at.Rule(at.video, at.video, UltraViCoScore(alpha, train_frames, smooth_k=smooth_k))
    params = {"alpha": alpha, "train_frames": train_frames}
    if not smooth_k:
        params["smooth_k"] = False
    return at.Recipe("ultravico", (rule,), params)
