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
count the model's self-attention modules (= blocks in these models). The default ``layers`` is read from
the steered model when the session attaches (:func:`attnsteer.family_layers`): the authors' layer for
their families, and for any other family (or a model too shallow for the authors' index, such as the
tiny test models) the one module at half depth, ``at.layer_fraction(0.5)`` (index ``n // 2`` of ``n``).
"""

from __future__ import annotations

import warnings

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.language.guidance import FORMULAS
from attnsteer.validation import integer, real_number

STG_DEFAULTS = {"cogvideox": (11, 1.0), "ltx": (19, 1.0), "hunyuanvideo": (2, 1.0), "wan": (2, 2.0), "mochi": (34, 1.0)}
MODES = ("A", "R")
AUTHORS_LAYERS = at.family_layers({family: layer for family, (layer, _) in STG_DEFAULTS.items()},
                                  otherwise=at.layer_fraction(0.5))
"""The default layers of pag and stg, resolved per model: the STG authors' layer, else the middle module."""


def _deprecated_family(recipe: str, family: str | None) -> None:
    """``family=`` is read from the model now; accepted for one release with a DeprecationWarning."""
    if family is None:
        return
    warnings.warn(f"{recipe}(family=...) is deprecated and will be removed: the session reads the family from the "
                  "model's adapter (pass layers=... and scale=... to choose other values)", DeprecationWarning,
                  stacklevel=4)
    if family not in STG_DEFAULTS:
        raise ConfigError(f"{recipe}(family=...) must be one of {sorted(STG_DEFAULTS)} (the STG authors' defaults), "
                          f"got {family!r}")


def _layers(layers: str | int | None, family: str | None) -> tuple[int, ...] | at.ModelLayers:
    if layers is None:
        return AUTHORS_LAYERS if family is None else (STG_DEFAULTS[family][0],)
    return layer_indices(layers, "layers")


def layer_indices(layers: str | int, field: str) -> tuple[int, ...]:
    """A recipe's ``layers`` parameter ("2", "2,5" or an int) as layer indices; ``field`` names it in errors."""
    items = [layers] if isinstance(layers, int) else [v.strip() for v in str(layers).split(",") if v.strip()]
    try:
        out = tuple(integer(int(v), field, minimum=0) for v in items)
    except ValueError:
        raise ConfigError(f"{field} must be layer indices like '2' or '2,5', got {layers!r}") from None
    if not out:
        raise ConfigError(f"{field} must name at least one layer index, got {layers!r}")
    return out


def _identity_rules(layers: tuple[int, ...] | at.ModelLayers) -> tuple[at.Rule, ...]:
    return (at.Rule(at.tokens, at.tokens, at.identity(), branch="perturbed", layers=layers),)


def _shown(layers: tuple[int, ...] | at.ModelLayers) -> dict[str, str]:
    """The ``layers`` parameter as the recipe's repr shows it (left out when read from the model)."""
    return {} if isinstance(layers, at.ModelLayers) else {"layers": ",".join(map(str, layers))}


@at.recipe
def pag(scale: float = 3.0, layers: str | None = None, family: str | None = None,
        adaptive_scale: float = 0.0) -> at.Recipe:
    """Perturbed-attention guidance: identity self-attention in ``layers`` (default: read from the model, the STG
    authors' layer of its family or the middle module) of a perturbed forward, weighted by ``scale`` (default 3.0)."""
    _deprecated_family("pag", family)
    chosen = _layers(layers, family)
    guidance = at.PerturbedGuidance(scale, adaptive_scale=adaptive_scale)
    params = {"scale": real_number(scale, "pag(scale=...)"), **_shown(chosen)}
    if adaptive_scale:
        params["adaptive_scale"] = adaptive_scale
    return at.Recipe("pag", _identity_rules(chosen), params, guidance=guidance)


@at.recipe(choices={"formula": FORMULAS})
def stg(mode: str = "R", scale: float | None = None, layers: str | None = None, family: str | None = None,
        formula: str = "generic") -> at.Recipe:
    """Spatiotemporal skip guidance: mode "R" skips blocks ``layers`` in the perturbed forward, mode
    "A" gives them identity attention; ``layers`` and ``scale`` default to the STG authors' per model family
    (read from the model; elsewhere the middle block and scale 1.0).

    ``formula="generic"``: ``uncond + w (cond - uncond) + s (cond - perturbed)`` (the STG authors' CogVideoX and LTX
    pipelines); ``formula="authors-wan"``: their Wan 2.1 pipeline's ``cfg + s (cfg - perturbed)``, the perturbed
    forward on the negative prompt (needs CFG)."""
    if mode not in MODES:
        raise ConfigError(f"stg(mode=...) must be one of {MODES}, got {mode!r}")
    _deprecated_family("stg", family)
    chosen = _layers(layers, family)
    family_scales: dict[str, float] = {}
    if scale is None and family is not None:
        scale = STG_DEFAULTS[family][1]
    elif scale is None:
        scale, family_scales = 1.0, {f: s for f, (_, s) in STG_DEFAULTS.items()}
    else:
        scale = real_number(scale, "stg(scale=...)")
    rules = _identity_rules(chosen) if mode == "A" else ()
    guidance = at.PerturbedGuidance(scale, skip_blocks=chosen if mode == "R" else (), family_scales=family_scales,
                                    formula=formula)
    params = {"mode": mode, **({} if family_scales else {"scale": scale}), **_shown(chosen)}
    if formula != "generic":
        params["formula"] = formula
    return at.Recipe("stg", rules, params, guidance=guidance)
