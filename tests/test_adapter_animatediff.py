"""AnimateDiff beyond the shared battery (tests/test_families.py): which calls rules act on.

From the tiny config: 16x16 pixels, VAE /2 -> 8x8 latents, 3 frames; UNet levels at 8x8 and 4x4. The
image UNet's spatial self-attention calls have 64 or 16 tokens (one frame); the motion modules' calls
have 3 tokens (the frames), batch videos x h*w. Seven motion modules (down 0, down 1, mid, two per up
block) each run attn1 and attn2 as self-attention over the frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import EditedAttention

FRAMES, BIAS = 3, 1.5
MOTION = [f"{block}.motion_modules.{j}.transformer_blocks.0.attn{a}"
          for block, modules in (("down_blocks.0", 1), ("down_blocks.1", 1), ("mid_block", 1), ("up_blocks.0", 2),
                                 ("up_blocks.1", 2))
          for j in range(modules) for a in (1, 2)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    from attnsteer.testing.tiny import build_tiny

    pipe, call_kwargs = build_tiny("tiny-animatediff")

    def run(**overrides):
        kwargs = call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    return pipe, run


def test_rules_act_on_the_motion_modules_in_execution_order(tiny):
    from attnsteer.contract.registry import require_adapter

    pipe, _ = tiny
    assert [name for name, _ in require_adapter(pipe.unet).attention_modules(pipe.unet)] == MOTION


def test_a_frame_to_frame_rule_matches_dense_on_motion_calls_and_leaves_spatial_calls_alone(tiny):
    pipe, run = tiny
    vanilla = run(guidance_scale=1.0)  # no guidance: one branch, every row conditional
    with at.steer(pipe, at.Rule(at.frames[0], at.frames[2], at.bias(BIAS), branch="cond")):
        steered = run(guidance_scale=1.0)
    assert np.abs(steered - vanilla).max() > 1e-3

    def edit(logits):  # every motion-module row: query frame 0 -> key frame 2
        logits[..., 0, 2] += BIAS
        return logits

    motion = EditedAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] == FRAMES)
    with motion:
        reference = run(guidance_scale=1.0)
    assert motion.calls == 2 * len(MOTION)
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    spatial = EditedAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] in (16, 64))
    with spatial:
        assert np.abs(run(guidance_scale=1.0) - steered).max() > 1e-3, "editing the spatial calls would have matched"


def test_perturbed_attention_guidance_batches_are_not_read_as_uncond_cond(tiny):
    from types import SimpleNamespace

    from attnsteer.contract.registry import require_adapter

    pipe, _ = tiny
    adapter = require_adapter(pipe.unet)
    guided = SimpleNamespace(do_classifier_free_guidance=True, do_perturbed_attention_guidance=False)
    assert adapter.branches(pipe.unet, {}, None, 2, guided) == ("uncond", "cond")
    assert adapter.attention_branches(("uncond", "cond"), 4) == ("uncond", "uncond", "cond", "cond")
    pag = SimpleNamespace(do_classifier_free_guidance=True, do_perturbed_attention_guidance=True)
    assert adapter.branches(pipe.unet, {}, None, 6, pag) is None  # [uncond, cond, perturbed] x 2 videos
