"""A second context on the same queries: cross-attention to an alternative key/value source, combined on outputs.

``at.second_context(combine, negative_prompt=..., negative_prompt_embeds=...)`` is the transform of a cross-attention
rule (``Rule(at.video, at.text, ..., attention="cross")``): in the calls it covers, the module's queries attend
once to the real text context (``out_positive``) and once to an alternative one (``out_negative``: the negative
prompt's encoder states, through the module's own ``to_k``/``to_v``), and ``combine(out_positive, out_negative)``
(heads merged, ``[B, N, C]``) replaces the attention output before ``to_out``. Other key sets of the module (Wan
I2V's CLIP-image tokens) are left alone. How it runs: :mod:`attnsteer.runtime.second_context`.

:class:`NagCombine` is Normalized Attention Guidance's combination (Chen et al. 2025, the authors' Wan processor):
``Zt = s Zp - (s - 1) Zn``; ``r = ||Zt||_p / ||Zp||_p`` per token over the merged hidden dim, NaN -> 10; where
``r > tau``: ``Zt <- Zt / (||Zt|| + 1e-7) * ||Zp|| * tau``; ``Z = alpha Zt + (1 - alpha) Zp``. ``eps="sd3"`` is
the authors' SD3 joint processor instead: ``r = ||Zt|| / (||Zp|| + 1e-7)``, ``Zt <- Zt * min(r, tau) / (r + 1e-7)``;
None (the default) is the eps of the variant that runs (Wan's on cross-attention, SD3's on joint attention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..errors import ConfigError
from ..validation import real_number
from .selectors import AllTokens, Text, Video
from .transforms import Transform

NORMS = ("l1", "l2")
EPS = ("wan", "sd3")
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _norm(value: object) -> str:
    if value not in NORMS:
        raise ConfigError(f"nag_combine(norm=...) must be one of {NORMS}, got {value!r}")
    return value  # type: ignore[return-value]


def _eps(value: object) -> str | None:
    if value is not None and value not in EPS:
        raise ConfigError(f"nag_combine(eps=...) must be None or one of {EPS}, got {value!r}")
    return value  # type: ignore[return-value]


def _at_least(minimum: float, field: str) -> Callable[[object], float]:
    def convert(value: object) -> float:
        number = real_number(value, field)
        if number < minimum:
            raise ConfigError(f"{field} must be >= {minimum:g}, got {value!r}")
        return number

    return convert


def _alpha(value: object) -> float:
    number = real_number(value, "nag_combine(alpha=...)")
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"nag_combine(alpha=...) must be in [0, 1], got {value!r}")
    return number


@attrs.frozen(repr=False)
class NagCombine:
    """NAG's combination of the positive and negative attention outputs ``[B, N, C]`` (see the module docstring);
    ``scale`` is the authors' ``nag_scale`` (the paper's phi + 1): 1 changes nothing."""

    scale: float = attrs.field(converter=_at_least(1.0, "nag_combine(scale=...)"))
    tau: float = attrs.field(default=2.5, converter=_at_least(1.0, "nag_combine(tau=...)"))
    alpha: float = attrs.field(default=0.25, converter=_alpha)
    norm: str = attrs.field(default="l1", converter=_norm)
    eps: str | None = attrs.field(default=None, converter=_eps)

    @property
    def neutral(self) -> bool:
        """Whether the combination returns ``out_positive`` as it is (scale 1 or alpha 0): nothing to compute."""
        return self.scale == 1.0 or self.alpha == 0.0

    def __call__(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        p = 1 if self.norm == "l1" else 2
        guidance = positive * self.scale - negative * (self.scale - 1.0)
        norm_positive = torch.linalg.vector_norm(positive, ord=p, dim=-1, keepdim=True)
        norm_guidance = torch.linalg.vector_norm(guidance, ord=p, dim=-1, keepdim=True)
        if self.eps == "sd3":  # the authors' joint (SD3) processor
            ratio = norm_guidance / (norm_positive + 1e-7)
            guidance = guidance * torch.minimum(ratio, ratio.new_tensor(self.tau)) / (ratio + 1e-7)
            return guidance * self.alpha + positive * (1.0 - self.alpha)
        ratio = torch.nan_to_num(norm_guidance / norm_positive, 10.0)
        clamped = guidance / (norm_guidance + 1e-7) * norm_positive * self.tau
        guidance = torch.where(ratio > self.tau, clamped, guidance)
        return guidance * self.alpha + positive * (1.0 - self.alpha)

    def __repr__(self) -> str:
        eps = "" if self.eps is None else f", eps={self.eps!r}"
        return f"nag_combine(scale={self.scale:g}, tau={self.tau:g}, alpha={self.alpha:g}, norm={self.norm!r}{eps})"


def nag_combine(scale: float, tau: float = 2.5, alpha: float = 0.25, norm: str = "l1",
                eps: str | None = None) -> NagCombine:
    """NAG's output combination (the authors' formula and eps handling: Wan's, or SD3's on joint attention)."""
    return NagCombine(scale, tau, alpha, norm, eps)


def _combine(value: object) -> Combine:
    if not callable(value):
        raise ConfigError(f"second_context(combine=...) must be a function (out_positive, out_negative) -> output, "
                          f"such as at.nag_combine(...), got {value!r}")
    return value  # type: ignore[return-value]


def _embeds(value: object) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3) or not value.is_floating_point():
        raise ConfigError("second_context(negative_prompt_embeds=...) must be a float tensor [L, D] or [B, L, D] (the "
                          f"text encoder's output, as the pipeline's prompt_embeds), got {_describe(value)}")
    return value if value.dim() == 3 else value[None]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(value)


def _prompt(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"second_context(negative_prompt=...) must be a string or None, got {value!r}")
    return value


@attrs.frozen(repr=False, eq=False)
class SecondContext(Transform):
    """The transform of a cross-attention rule with an alternative context (see the module docstring). The context is
    ``negative_prompt_embeds`` (the text encoder's output) or ``negative_prompt`` encoded with the pipeline's own
    text encoder (None and no embeddings: the empty prompt)."""

    kind = "context"
    combine: Combine = attrs.field(converter=_combine)
    negative_prompt: str | None = attrs.field(default=None, converter=_prompt)
    negative_prompt_embeds: torch.Tensor | None = attrs.field(default=None, converter=_embeds)

    def __attrs_post_init__(self) -> None:
        if self.negative_prompt is not None and self.negative_prompt_embeds is not None:
            raise ConfigError("second_context takes negative_prompt or negative_prompt_embeds, not both")

    @property
    def neutral(self) -> bool:
        """Whether the combination leaves every output as it is (then the module runs as if no rule were on)."""
        return bool(getattr(self.combine, "neutral", False))

    def check_rule(self, rule: Any) -> None:
        where = f"Rule with {self!r}"
        if rule.attention != "cross":
            raise ConfigError(f"{where}: Rule.attention must be 'cross' (a second context replaces the text keys and "
                              f"values of a cross-attention call), got {rule.attention!r}")
        if not isinstance(rule.query, (Video, AllTokens)) or not isinstance(rule.key, (Text, AllTokens)):
            raise ConfigError(f"{where}: Rule.query must be at.video or at.tokens and Rule.key at.text or at.tokens "
                              f"(the combination acts on every query's output over the whole context), got "
                              f"query={rule.query!r}, key={rule.key!r}")
        if rule.heads is not None or rule.pairs is not None:
            raise ConfigError(f"{where}: Rule.heads and Rule.pairs must be None (the combination acts on the output "
                              f"with heads merged), got heads={rule.heads}, pairs={rule.pairs!r}")

    def score(self, s, b, h, q_idx, kv_idx):
        raise ConfigError(f"{self!r} combines the outputs of two attention calls; it is not a logit transform")

    def __repr__(self) -> str:
        source = (f"negative_prompt={self.negative_prompt!r}" if self.negative_prompt_embeds is None
                  else f"negative_prompt_embeds=<{tuple(self.negative_prompt_embeds.shape)}>")
        return f"second_context({self.combine!r}, {source})"


def second_context(combine: Combine, negative_prompt: str | None = None,
                   negative_prompt_embeds: torch.Tensor | None = None) -> SecondContext:
    """A cross-attention transform: attend also to the negative prompt's context, then ``combine`` the two outputs."""
    return SecondContext(combine, negative_prompt, negative_prompt_embeds)


__all__ = ["EPS", "NORMS", "NagCombine", "SecondContext", "nag_combine", "second_context"]
