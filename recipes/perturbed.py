"""Perturbed guidance: PAG (Ahn et al., ECCV 2024) and STG (Hyung et al., CVPR 2025).

Both add a perturbed conditional prediction and combine
``uncond + w (cond - uncond) + s (cond - perturbed)`` (diffusers' PAG pipelines; the STG authors'
CogVideoX and LTX pipelines). The perturbation:

- PAG: identity self-attention (output = V) in the chosen layers of the perturbed forward
  (diffusers' ``PAGCFGIdentitySelfAttnProcessor2_0``); adaptive scale ``s - a (1000 - t)``.
- STG-A: the same identity attention, on the STG authors' per-model layer.
- STG-R (the mode the STG authors released): the perturbed forward skips whole transformer blocks.

The STG authors' default layers and scales per model (STGuidance, notes in the docs): CogVideoX
block 11, LTX 19, HunyuanVideo 2, Wan 2 (scale 2.0), Mochi 34; scale 1.0 otherwise. Layer indices
count the model's self-attention modules (= blocks in these models).
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.validation import integer, real_number

STG_DEFAULTS = {"cogvideox": (11, 1.0), "ltx": (19, 1.0), "hunyuanvideo": (2, 1.0), "wan": (2, 2.0), "mochi": (34, 1.0)}
MODES = ("A", "R")


def _layers(layers: str | int | None, family: str) -> tuple[int, ...]:
    if layers is None:
        if family not in STG_DEFAULTS:
            raise ConfigError(f"family must be one of {sorted(STG_DEFAULTS)} (the STG authors' defaults), got {family!r}")
        return (STG_DEFAULTS[family][0],)
    items = [layers] if isinstance(layers, int) else [v.strip() for v in str(layers).split(",") if v.strip()]
    try:
        out = tuple(integer(int(v), "layers", minimum=0) for v in items)
    except ValueError:
        raise ConfigError(f"layers must be layer indices like '2' or '2,5', got {layers!r}") from None
    if not out:
        raise ConfigError(f"layers must name at least one layer index, got {layers!r}")
    return out


def _identity_rules(layers: tuple[int, ...]) -> tuple[at.Rule, ...]:
    return (at.Rule(at.tokens, at.tokens, at.identity(), branch="perturbed", layers=layers),)


@at.recipe
def pag(scale: float = 3.0, layers: str | None = None, family: str = "wan", adaptive_scale: float = 0.0) -> at.Recipe:
    """Perturbed-attention guidance: identity self-attention in ``layers`` (default: the STG authors'
    layer for ``family``) of a perturbed forward, weighted by ``scale`` (diffusers' default 3.0)."""
    chosen = _layers(layers, family)
    guidance = at.PerturbedGuidance(scale, adaptive_scale=adaptive_scale)
    params = {"scale": real_number(scale, "pag(scale=...)"), "layers": ",".join(map(str, chosen))}
    if adaptive_scale:
        params["adaptive_scale"] = adaptive_scale
    return at.Recipe("pag", _identity_rules(chosen), params, guidance=guidance)


@at.recipe
def stg(mode: str = "R", scale: float | None = None, layers: str | None = None, family: str = "wan") -> at.Recipe:
    """Spatiotemporal skip guidance: mode "R" skips blocks ``layers`` in the perturbed forward, mode
    "A" gives them identity attention; ``scale`` and ``layers`` default to the STG authors' per family."""
    if mode not in MODES:
        raise ConfigError(f"stg(mode=...) must be one of {MODES}, got {mode!r}")
    chosen = _layers(layers, family)
    if scale is None:
        if family not in STG_DEFAULTS:
            raise ConfigError(f"family must be one of {sorted(STG_DEFAULTS)}, got {family!r}")
        scale = STG_DEFAULTS[family][1]
    rules = _identity_rules(chosen) if mode == "A" else ()
    guidance = at.PerturbedGuidance(scale, skip_blocks=chosen if mode == "R" else ())
    params = {"mode": mode, "scale": real_number(scale, "stg(scale=...)"), "layers": ",".join(map(str, chosen))}
    return at.Recipe("stg", rules, params, guidance=guidance)
