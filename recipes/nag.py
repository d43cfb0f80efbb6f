"""NAG - Normalized Attention Guidance (Chen et al. 2025), as the authors' Wan attention processor computes it.

In every text cross-attention call of the conditional branch, the video queries attend to the prompt (``Zp``) and,
through the same ``to_k``/``to_v``, to a negative prompt (``Zn``); before ``to_out`` the output becomes
``Zt = s Zp - (s - 1) Zn``, renormalised per token where ``||Zt||_1 / ||Zp||_1`` exceeds ``tau`` (the authors' eps:
ratio NaN -> 10, ``Zt / (||Zt|| + 1e-7) * ||Zp|| * tau``), mixed ``alpha Zt + (1 - alpha) Zp``. ``scale`` is the
authors' ``nag_scale`` (the paper's phi + 1; 1 is off). CFG's unconditional branch keeps plain attention; on Wan I2V
the CLIP-image attention is added unguided. Every step. On CogVideoX (text inside the joint self-attention) it is
the authors' SD3 joint variant: the negative prompt's text stream rides through the blocks as extra batch rows, the
video rows of every joint attention are combined (SD3's eps). The primitive: :func:`attnsteer.second_context`.
"""

from __future__ import annotations

import torch

import attnsteer as at
from attnsteer.language.contexts import NORMS
from attnsteer.language.recipe import recipe


@recipe(
    help={"scale": "the authors' nag_scale (phi + 1): 1 is off; 5 in their Flux README, 11 in a popular Wan node",
          "tau": "the cap on ||Zt|| / ||Zp|| per token (2.5 in all the authors' code)",
          "alpha": "the mix of the guided output into the positive one (0.25: the authors' Wan and Flux)",
          "negative_prompt": "encoded with the pipeline's own text encoder (default: the empty prompt)",
          "negative_prompt_embeds": "the text encoder's output, for pipelines without one (Python only)",
          "norm": "the per-token norm over the hidden dim: l1 (Wan, SD3, SDXL) or l2 (the authors' Flux)"},
    choices={"norm": NORMS},
)
def nag(scale: float = 5.0, tau: float = 2.5, alpha: float = 0.25, negative_prompt: str | None = None,
        negative_prompt_embeds: torch.Tensor | None = None, norm: str = "l1") -> at.Recipe:
    """Normalized Attention Guidance: guide the text cross-attention of the conditional branch away from a negative
    prompt, extrapolating and renormalising its output (the authors' Wan processor).

    On CogVideoX (text in the joint self-attention) the authors' SD3 joint variant runs instead (their SD3 alpha is
    0.125); other joint-attention families (HunyuanVideo, LTX...) are refused.
    """
    combine = at.nag_combine(scale, tau, alpha, norm)
    transform = at.second_context(combine, negative_prompt, negative_prompt_embeds)
    rule = at.Rule(at.video, at.text, transform, branch="cond", attention="cross")
    params: dict[str, object] = {"scale": combine.scale, "tau": combine.tau, "alpha": combine.alpha}
    if negative_prompt is not None:
        params["negative_prompt"] = negative_prompt
    if negative_prompt_embeds is not None:
        params["negative_prompt_embeds"] = f"<tensor {tuple(negative_prompt_embeds.shape)}>"
    if norm != "l1":
        params["norm"] = norm
    return at.Recipe("nag", (rule,), params)
