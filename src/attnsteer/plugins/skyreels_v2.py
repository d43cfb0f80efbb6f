"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``): ``SkyReelsV2Pipeline``, ``SkyReelsV2ImageToVideoPipeline``
and the diffusion-forcing pipelines ``SkyReelsV2DiffusionForcing{,ImageToVideo,VideoToVideo}Pipeline``.

Layout facts:

- Wan's: self-attention ``blocks[i].attn1`` over video tokens only, frame-major after a (1, 2, 2) patch
  embedding; ``blocks[i].attn2`` is the text (and, in I2V, CLIP image) cross-attention.
- Diffusion forcing: every latent frame has its own scheduler and noise level. The pipeline calls the
  transformer with ``enable_diffusion_forcing=True`` and a per-frame ``timestep`` [B, F] (one row of its
  timestep matrix, for the frames of the forward). Synchronous mode (``ar_step=0``) moves all generated
  frames together; asynchronous mode (``ar_step > 0``) lets each frame (or ``causal_block_size`` block)
  lag ``ar_step`` steps behind the one before it, so one forward holds frames at different steps.
- What "step" means there (see :mod:`attnsteer.runtime.stepping`): the forward's ``step`` is that of its noisiest
  frame (its largest timestep), as for any per-token-timestep model, and each frame has its *own step*:
  the number of the run's scheduled timesteps above its timestep (a frame at ``timesteps[k]`` is in its
  step k; a frame still waiting at pure noise is in step 0; a finished or clean prefix frame, t = 0 or
  ``addnoise_condition``, is past the last step). Schedules (``at.steps``, ``at.progress``,
  ``at.timesteps``) are evaluated per frame: a rule is on for the query tokens of the frames whose own
  step (or timestep) it selects, and off for the others. Per-frame schedules apply to self-attention
  logit rules; a cross-attention rule or an output transform whose schedule is on for some frames only
  raises instead of being applied to all.
- Frames are the forward's own: for long videos (``num_frames > base_num_frames``) each window's first
  frames are the previous window's last ones (history, given with t = 0 or ``addnoise_condition``).
- ``causal_block_size > 1`` (``num_frame_per_block``) adds a boolean block-causal mask; the kernel takes
  it as the model's own mask.
- Reference frame: latent frame 0 (the image in I2V: a clean prefix frame, t = 0 or
  ``addnoise_condition``; Wan's channel-concat condition in the non-forcing I2V pipeline).
- Guidance: one forward per branch under ``cache_context("cond"/"uncond")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SteeringError
from .wan import WanAdapter


class SkyReelsV2Adapter(WanAdapter):
    family = "skyreels-v2"
    model_classes = ("SkyReelsV2Transformer3DModel",)
    tiny_models = ("tiny-skyreels-v2-df",)
    tested = ("asynchronous diffusion forcing (frames at different steps): a per-frame schedule matches a dense run "
              "biasing only the queries of frames in their own first step; per-frame steps against the timestep "
              "matrix; a per-frame cross-attention rule raises")

    def frame_timesteps(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> tuple[float, ...] | None:
        """Each token frame's timestep when the forward runs diffusion forcing ([B, F] timesteps)."""
        t = inputs.get("timestep")
        if not inputs.get("enable_diffusion_forcing") or not isinstance(t, torch.Tensor) or t.dim() != 2:
            return None
        if not bool((t == t[:1]).all()):
            raise SteeringError(f"{type(model).__name__}: per-frame timesteps differ between batch rows; attnsteer "
                                "needs one noise level per frame in a forward")
        p_t = model.config.patch_size[0]
        return tuple(float(v) for v in t[0].detach().float().cpu().view(-1, p_t).max(dim=1).values)
