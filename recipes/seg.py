"""Smoothed Energy Guidance (Hong, NeurIPS 2024), from the authors' SusungHong/SEG-SDXL ``pipeline_seg.py``.

A perturbed forward in which the self-attention queries of the chosen layers are blurred by a 2D Gaussian
over the token grid (K and V untouched), combined as
``eps = eps_c + (w - 1)(eps_c - eps_u) + s (eps_c - eps_seg)`` (= ``uncond + w (cond - uncond) + s (cond -
seg)``; without CFG ``eps_c + s (eps_c - eps_seg)``), in every step. The blur is the authors': kernel size
``ceil(6 sigma) + 1 - ceil(6 sigma) % 2`` capped at the grid size ``n - (n % 2 - 1)``, a normalised Gaussian
over ``linspace(-(k-1)/2, (k-1)/2, k)``, reflect padding, depthwise; ``sigma > 9999.0`` replaces the queries
by their mean (the authors' default sigma is 9999999, that infinite blur). On video it runs per latent frame
over the adapter's (rows, cols) grid (their SDXL has one square image); text tokens are never blurred.

Not diffusers' SEG hook: its Gaussian and mean branches are swapped (PR #14187), it blurs ``to_q``'s output
(before q-norm and RoPE), over the first ``isqrt(N)**2`` tokens, and never guides step 0.
``placement="attention"`` (default) blurs the queries the attention call gets, after q-norm and RoPE: the
blurred logits, the authors' meaning; ``placement="to_q"`` blurs ``to_q``'s output as diffusers does.

Layers: the authors guide every self-attention of SDXL's mid block, the middle of the network; on a video
DiT the default is its middle third of self-attention modules (``at.layer_fraction(1/3, 2/3)``, resolved per
model when the session attaches); ``layers="0,1"`` picks module indices.
"""

from __future__ import annotations

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.language.query_transforms import PLACEMENTS
from attnsteer.validation import real_number

from .perturbed import layer_indices

MIDDLE_THIRD = at.layer_fraction(1 / 3, 2 / 3)
"""The default layers of seg: the middle third of the self-attention modules (the authors' SDXL mid block)."""


def _layers(layers: str | None) -> tuple[int, ...] | at.ModelLayers:
    return MIDDLE_THIRD if layers is None else layer_indices(layers, "seg(layers=...)")


@at.recipe(help={"scale": "s in uncond + w (cond - uncond) + s (cond - seg)",
                 "sigma": "Gaussian sigma in tokens over each frame's grid; > 9999 is the mean (infinite blur)",
                 "layers": "self-attention module indices, e.g. '0,1' (default: the model's middle third)",
                 "placement": "'attention': after q-norm and RoPE (authors); 'to_q': on to_q's output (diffusers)"},
           choices={"placement": PLACEMENTS})
def seg(scale: float = 3.0, sigma: float = 9999999.0, layers: str | None = None,
        placement: str = "attention") -> at.Recipe:
    """Smoothed energy guidance: a perturbed forward with each frame's self-attention queries Gaussian-blurred
    (``sigma``; > 9999 their mean) in ``layers``, weighted by ``scale`` (the authors' defaults: 3.0, infinite blur)."""
    s = real_number(scale, "seg(scale=...)")
    if s < 0:
        raise ConfigError(f"seg(scale=...) must be >= 0, got {scale!r}")
    chosen = _layers(layers)
    rule = at.Rule(at.video, at.tokens, at.query_blur(sigma, placement), branch="perturbed", layers=chosen)
    params: dict[str, object] = {"scale": s, "sigma": rule.transform.sigma}
    if not isinstance(chosen, at.ModelLayers):
        params["layers"] = ",".join(map(str, chosen))
    if placement != "attention":
        params["placement"] = placement
    return at.Recipe("seg", (rule,), params, guidance=at.PerturbedGuidance(s))
