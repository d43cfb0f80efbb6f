"""Latte beyond the shared battery (tests/test_families.py): which calls rules act on.

From the tiny config: 16x16 pixels, VAE /2 -> 8x8 latents, patch 2 -> 4x4 = 16 positions, 3 frames,
8 caption tokens. Spatial self-attention calls have 16 tokens (one frame), spatial cross-attention
calls 16 queries and 8 keys, temporal self-attention calls 3 tokens (the frames). Rules act on the
temporal calls only: a spatial call holds one frame, so a frame-to-frame rule has nothing to act on there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import EditedAttention

FRAMES, BIAS = 3, 1.5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    from attnsteer.testing.tiny import build_tiny

    pipe, call_kwargs = build_tiny("tiny-latte")

    def run(**overrides):
        kwargs = call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    return pipe, run


def test_rules_act_on_the_temporal_self_attention_only(tiny):
    from attnsteer.contract.registry import require_adapter

    pipe, _ = tiny
    modules = require_adapter(pipe.transformer).attention_modules(pipe.transformer)
    assert [name for name, _ in modules] == [f"temporal_transformer_blocks.{i}.attn1" for i in range(2)]


def test_a_frame_to_frame_rule_matches_dense_on_temporal_calls_and_leaves_spatial_calls_alone(tiny):
    pipe, run = tiny
    vanilla = run()
    with at.steer(pipe, at.Rule(at.frames[2], at.frames[1], at.bias(BIAS))):
        steered = run()
    assert np.abs(steered - vanilla).max() > 1e-3

    def edit(logits):  # every temporal row, both branches: query frame 2 -> key frame 1
        logits[..., 2, 1] += BIAS
        return logits

    temporal = EditedAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] == FRAMES)
    with temporal:
        reference = run()
    assert temporal.calls == 2 * 2  # 2 steps x 2 temporal layers (one batched forward per step)
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    spatial = EditedAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] == 16)  # the same edit on spatial calls
    with spatial:
        assert np.abs(run() - steered).max() > 1e-3, "editing the spatial calls would have matched"


def test_cross_attention_rules_raise(tiny):
    pipe, run = tiny
    with pytest.raises(at.SteeringError, match="declares no cross-attention modules"):
        with at.steer(pipe, at.Rule(at.frames[1:], at.text, at.bias(1.0), attention="cross")):
            run()


def test_without_temporal_attention_nothing_is_steered(tiny):
    pipe, run = tiny
    spatial_only = run(enable_temporal_attentions=False)
    with pytest.warns(at.AttnsteerWarning, match="never applied"):  # said, not silent
        with at.steer(pipe, at.recipes.dymos(gamma=2.0)):
            assert np.array_equal(run(enable_temporal_attentions=False), spatial_only)
