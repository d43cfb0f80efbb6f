"""Stable Video Diffusion beyond the shared battery (tests/test_families.py): temporal self-attention only,
in execution order; no guidance; a processor computing attention by hand.

From the tiny config: 32x32 pixels, VAE /4 -> 8x8 latents, 4 frames. Temporal attention calls have
F = 4 tokens (one per frame) and batch videos x h*w positions, video-major; the temporal layers run
at 8x8 (down_blocks.0), 4x4 (mid_block) and 8x8 (up_blocks.1, two of them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

FRAMES = 4
TEMPORAL_LAYERS = [
    "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1",
    "mid_block.attentions.0.temporal_transformer_blocks.0.attn1",
    "up_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1",
    "up_blocks.1.attentions.1.temporal_transformer_blocks.0.attn1",
]


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_svd

    return tiny_svd()


@pytest.fixture
def run(pipe):
    from attnsteer.testing.tiny import svd_call_kwargs, test_image

    def run(**overrides):
        kwargs = svd_call_kwargs(**{"output_type": "latent", **overrides})
        return np.asarray(pipe(image=test_image(32), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


def dense_dymos(pipe, run, gamma, until_step, videos, biased_videos):
    """DyMoS densely on the temporal attention: the rows of ``biased_videos`` (row r is video r // (h*w))."""
    counter = ForwardCounter(pipe.unet)

    def extra(q):
        if counter.count >= until_step:
            return None
        positions = q.shape[0] // videos
        rows = [v * positions + p for v in biased_videos for p in range(positions)]
        return frame_bias(FRAMES, 0, FRAMES, 1, -gamma, rows, q.shape[0])

    try:
        with DenseAttention(extra, seq_len=FRAMES):
            return run()
    finally:
        counter.remove()


def test_self_attention_is_the_temporal_attention_in_execution_order(pipe):
    from attnsteer.contract.registry import require_adapter

    modules = require_adapter(pipe.unet).attention_modules(pipe.unet)
    assert [name for name, _ in modules] == TEMPORAL_LAYERS


def test_without_guidance_every_row_is_conditional(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        steered = run(guidance_scale=1.0)
    reference = dense_dymos(pipe, lambda: run(guidance_scale=1.0), 2.0, 2, videos=1, biased_videos=[0])
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_processor_that_computes_attention_by_hand_raises(pipe, run):
    from diffusers.models.attention_processor import AttnProcessor

    processors = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor())
    try:
        with pytest.raises(at.SteeringError, match=r"temporal_transformer_blocks\.0\.attn1.*without calling"):
            with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
                run(num_inference_steps=1)
    finally:
        pipe.unet.set_attn_processor(processors)
