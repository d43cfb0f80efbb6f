"""Enhance-A-Video (Luo et al. 2025, arXiv 2502.07508; NUS-HPC-AI-Lab/Enhance-A-Video): scale each
self-attention module's video output by the call's cross-frame intensity, for sharper, more coherent
videos without training.

In every call, per spatial location, the T tokens across frames attend to each other (a T x T
softmax from the call's own q and k); the mean off-diagonal probability CFI gives the score
``max(1, CFI * (T + weight))``, one scalar per call batch, which multiplies the module's output
(after its output projection) on the video rows. The authors' modules: every Wan ``attn1``, every
CogVideoX ``attn1`` (one score shared by the batched CFG halves), and every HunyuanVideo block
attention whose name contains ``transformer_blocks`` (their substring test also matches the
single-stream ``single_transformer_blocks``).
"""

from __future__ import annotations

from collections.abc import Mapping

import attnsteer as at
from attnsteer.errors import ConfigError
from attnsteer.validation import real_number

AUTHORS_WEIGHTS: Mapping[str, float] = {"wan": 4.0, "cogvideox": 3.4, "hunyuanvideo": 4.0}
"""``set_enhance_weight`` in the authors' scripts: Wan2.1-T2V-14B 4, CogVideoX-2b 3.4, HunyuanVideo 4."""


@at.recipe
def enhance_a_video(weight: float | None = None, layers: str | None = None) -> at.Recipe:
    """Enhance-A-Video: video output rows of every self-attention module times max(1, CFI * (T + weight)).

    ``weight=None`` takes the authors' value for the steered model (wan 4, cogvideox 3.4,
    hunyuanvideo 4; other families need an explicit weight). ``layers`` (a module name or regex)
    narrows the modules, e.g. ``r"transformer_blocks\\.\\d+\\.attn"`` for HunyuanVideo's
    double-stream blocks only.
    """
    if weight is not None:
        weight = real_number(weight, "enhance_a_video(weight) (None: the authors' value per model)")
    if layers is not None and not isinstance(layers, str):
        raise ConfigError(f"enhance_a_video(layers=...) must be None or a module name or regex, got {layers!r}")
    score = at.readouts.cross_frame_intensity(weight=AUTHORS_WEIGHTS if weight is None else weight)
    rule = at.Rule(query=at.video, key=at.video, transform=at.output_scale(score), layers=layers)
    params: dict[str, object] = {"weight": weight}
    if layers is not None:
        params["layers"] = layers
    return at.Recipe("enhance_a_video", (rule,), params)
