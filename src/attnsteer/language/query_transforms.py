"""Query transforms: a function of the query tokens and their frame grid, applied before the logits.

``Rule(at.video, at.tokens, at.query_blur(sigma), branch="perturbed")`` replaces the rule's query tokens by
a transform of the video queries of each frame (SEG's Gaussian blur, the per-frame mean, or a function of
your own), so every logit of those queries changes (keys and values stay as they are). The contract of a
query transform, :meth:`QueryTransform.apply`:

- input ``q``: float tensor ``[b, F, h, w, C]``: the video queries of the batch rows the rule selects
  (its branch), as ``F`` latent frames of ``h x w`` tokens (the adapter's ``TokenLayout.grid``),
  channels last; ``C`` is every head's channels, head-major (``heads * head_dim``, as SEG's authors
  reshape them) at ``placement="attention"``, the projection's channels at ``placement="to_q"``;
- output: a tensor of the same shape and dtype (the call's dtype: bfloat16 in a bfloat16 run);
- only the rule's query tokens (and heads) take the result; the other tokens keep their queries.

Where it sits (``placement``), on models with q-norm and RoPE:

- ``"attention"`` (default): on the q the attention call gets, after q-norm and RoPE: the logits
  ``q.k`` of the blurred queries are the blurred logits, SEG's meaning ("blurring the attention
  weights") and where its authors blur on SDXL (which has neither).
- ``"to_q"``: on the output of the module's ``to_q`` projection, before q-norm, head split and RoPE
  (diffusers' SEG hook). Reached by a forward hook on ``to_q`` during the module's forward; a module
  without a ``to_q`` projection called in its forward (fused ``to_qkv`` projections) cannot be reached
  there without patching the model, and is refused naming it.

Not a logit edit: the key selector must be ``at.tokens`` (the blurred queries meet every key).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..validation import real_number
from .selectors import AllTokens
from .transforms import Transform

PLACEMENTS = ("attention", "to_q")
INFINITE_BLUR = 9999.0  # SEG's inf_blur_threshold: a larger sigma blurs to the mean


def _placement(value: object) -> str:
    if value not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS} ('attention': after q-norm and RoPE, the authors' "
                          f"logit-level meaning; 'to_q': on to_q's output, diffusers'), got {value!r}")
    return value  # type: ignore[return-value]


class QueryTransform(Transform):
    """Base class of query transforms: :meth:`apply` maps the video queries ``[b, F, h, w, C]`` to new ones
    (same shape and dtype); see the module docstring for the contract."""

    kind = "query"
    placement: str = "attention"

    def check_rule(self, rule: Any) -> None:
        if not isinstance(rule.key, AllTokens):
            raise ConfigError(f"Rule.key must be at.tokens with {self!r}: a transformed query meets every key, "
                              f"got {rule.key!r}")
        if rule.pairs is not None:
            raise ConfigError(f"Rule.pairs must be None with {self!r}: it transforms queries, not (query, key) pairs")
        if rule.attention != "self":
            raise ConfigError(f"Rule.attention must be 'self' with {self!r}: query transforms act on the "
                              f"self-attention of the video frames; got attention={rule.attention!r}")
        if rule.heads is not None and self.placement == "to_q":
            raise ConfigError(f"Rule.heads must be None with {self!r}: to_q's output holds every head's channels "
                              f"before the head split; use placement='attention' to filter heads")

    def score(self, s, b, h, q_idx, kv_idx):
        raise ConfigError(f"{self!r} transforms the queries, not attention logits")

    def transform(self, q: torch.Tensor) -> torch.Tensor:
        """The new queries for ``q`` [b, F, h, w, C] (override this)."""
        raise NotImplementedError

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        """:meth:`transform`, checked against the contract (a tensor of ``q``'s shape and dtype)."""
        out = self.transform(q)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape or out.dtype != q.dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{self!r} must return a tensor of its input's shape and dtype {tuple(q.shape)} "
                              f"{q.dtype} ([b, frames, rows, cols, channels]), got {got}")
        return out


def seg_kernel_size(sigma: float) -> int:
    """SEG's kernel size for ``sigma``: ``ceil(6 sigma) + 1 - ceil(6 sigma) % 2`` (odd), before the grid cap."""
    six = math.ceil(6 * sigma)
    return six + 1 - six % 2


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    """The authors' normalised 1D Gaussian of ``size`` taps over ``linspace(-(size-1)/2, (size-1)/2)`` (float64)."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def blur_frames(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """SEG's blur of every frame of ``q`` [b, F, h, w, C]: a depthwise 2D Gaussian with reflect padding, the
    kernel capped per axis at ``n - (n % 2 - 1)`` (the authors cap both axes by the width of their square
    grid); ``sigma > 9999.0``: the per-frame spatial mean. Half types are computed in float32."""
    b, f, h, w, c = q.shape
    if sigma > INFINITE_BLUR:
        return q.mean(dim=(2, 3), keepdim=True).expand_as(q).clone()
    work = q.float() if q.dtype in (torch.float16, torch.bfloat16) else q
    size = seg_kernel_size(sigma)
    kh, kw = (min(size, n - (n % 2 - 1)) for n in (h, w))
    kernel = (_gaussian(kh, sigma)[:, None] * _gaussian(kw, sigma)[None, :]).to(work.device, work.dtype)
    x = work.permute(0, 1, 4, 2, 3).reshape(b * f, c, h, w)
    x = F.pad(x, [kw // 2, kw // 2, kh // 2, kh // 2], mode="reflect")
    x = F.conv2d(x, kernel.expand(c, 1, kh, kw), groups=c)
    return x.reshape(b, f, c, h, w).permute(0, 1, 3, 4, 2).to(q.dtype)


def _sigma(value: object) -> float:
    sigma = real_number(value, "query_blur(sigma)", allow_inf=True)
    if not sigma > 0:
        raise ConfigError(f"query_blur(sigma) must be > 0 (a Gaussian's standard deviation in tokens; > "
                          f"{INFINITE_BLUR:g} blurs to the mean), got {value!r}")
    return sigma


@attrs.frozen(repr=False)
class QueryBlur(QueryTransform):
    """SEG's Gaussian blur of the queries over each frame's token grid (``sigma`` in tokens; > 9999.0: the mean)."""

    sigma: float = attrs.field(converter=_sigma)
    placement: str = attrs.field(default="attention", converter=_placement)

    def transform(self, q: torch.Tensor) -> torch.Tensor:
        return blur_frames(q, self.sigma)

    def __repr__(self) -> str:
        where = "" if self.placement == "attention" else f", placement={self.placement!r}"
        return f"query_blur({self.sigma:g}{where})"


@attrs.frozen(repr=False)
class QueryMean(QueryTransform):
    """Every query of a frame becomes the frame's mean query (SEG's infinite blur)."""

    placement: str = attrs.field(default="attention", converter=_placement)

    def transform(self, q: torch.Tensor) -> torch.Tensor:
        return blur_frames(q, math.inf)

    def __repr__(self) -> str:
        return "query_mean()" if self.placement == "attention" else f"query_mean(placement={self.placement!r})"


@attrs.frozen(repr=False, eq=False)
class QueryFunction(QueryTransform):
    """A user function ``fn(q) -> q`` on the video queries ``[b, F, h, w, C]`` (the module docstring's contract)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    placement: str = attrs.field(default="attention", converter=_placement)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"query_transform(fn) must be callable, got {self.fn!r}")

    def transform(self, q: torch.Tensor) -> torch.Tensor:
        return self.fn(q)

    def __repr__(self) -> str:
        return f"query_transform({self.name or getattr(self.fn, '__name__', 'fn')})"


def query_blur(sigma: float, placement: str = "attention") -> QueryBlur:
    """SEG's Gaussian blur of each frame's queries (``sigma`` in tokens; > 9999.0 gives the per-frame mean)."""
    return QueryBlur(sigma, placement)


def query_mean(placement: str = "attention") -> QueryMean:
    """Replace each frame's queries by their mean (SEG's infinite blur)."""
    return QueryMean(placement)


def query_transform(fn: Callable[[torch.Tensor], torch.Tensor], placement: str = "attention",
                    name: str = "") -> QueryFunction:
    """A query transform of your own: ``fn(q [b, F, h, w, C]) -> tensor of q's shape and dtype``."""
    return QueryFunction(fn, placement, name)


__all__ = ["INFINITE_BLUR", "PLACEMENTS", "QueryBlur", "QueryFunction", "QueryMean", "QueryTransform", "blur_frames",
           "query_blur", "query_mean", "query_transform", "seg_kernel_size"]
