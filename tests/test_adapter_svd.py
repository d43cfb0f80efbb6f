"""Stable Video Diffusion: temporal self-attention over frames, batch [uncond, cond] folded with space.

From the tiny config: 32x32 pixels, VAE /4 -> 8x8 latents, 4 frames. Temporal attention calls have
F = 4 tokens (one per frame) and batch videos x h*w positions, video-major; the temporal layers run
at 8x8 (down_blocks.0), 4x4 (mid_block) and 8x8 (up_blocks.1, two of them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias, hook_state

FRAMES = 4
TEMPORAL_LAYERS = [
    "unet.down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1",
    "unet.mid_block.attentions.0.temporal_transformer_blocks.0.attn1",
    "unet.up_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1",
    "unet.up_blocks.1.attentions.1.temporal_transformer_blocks.0.attn1",
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


def test_zero_bias_identity_and_clean_exit(pipe, run):
    vanilla = run()
    before = hook_state(pipe.unet)
    with at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)) as steering:
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    assert steering.summary()["rules"][0]["layers"] == TEMPORAL_LAYERS  # temporal only, in execution order
    assert np.array_equal(run(), vanilla)
    assert hook_state(pipe.unet) == before


def test_dymos_biases_the_conditional_half_of_the_videos(pipe, run):
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run()
    assert steering.summary()["rules"][0]["steps"] == [0, 1]
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, dense_dymos(pipe, run, 2.0, 2, videos=2, biased_videos=[1]), atol=1e-4)
    swapped = dense_dymos(pipe, run, 2.0, 2, videos=2, biased_videos=[0])
    assert np.abs(steered - swapped).max() > 1e-3, "biasing the unconditional half would have matched"


def test_without_guidance_every_row_is_conditional(pipe, run):
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        steered = run(guidance_scale=1.0)
    reference = dense_dymos(pipe, lambda: run(guidance_scale=1.0), 2.0, 2, videos=1, biased_videos=[0])
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_frame_maps_match_dense_per_branch(pipe, run):
    with at.inspect(pipe) as rec:
        run(num_inference_steps=2)
    dense = DenseAttention(groups=lambda q: torch.arange(FRAMES), seq_len=FRAMES)
    with dense:
        run(num_inference_steps=2)
    assert list(rec.layers) == TEMPORAL_LAYERS and len(dense.masses) == 2 * len(TEMPORAL_LAYERS)
    for call, mass in enumerate(dense.masses):
        step, layer = divmod(call, len(TEMPORAL_LAYERS))
        positions = mass.shape[0] // 2
        for video, branch in enumerate(("uncond", "cond")):
            expected = mass[video * positions : (video + 1) * positions].mean(dim=(0, 1))
            got = rec.frame_map(steps=[step], layers=[layer], branch=branch)
            torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)
    assert rec.frame_map().shape == (FRAMES, FRAMES)
    torch.testing.assert_close(rec.frame_map().sum(-1), torch.ones(FRAMES), atol=1e-5, rtol=0)
    with pytest.raises(at.ConfigError, match="no text tokens"):  # video-only self-attention: no silent zeros
        rec.text_mass()


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
