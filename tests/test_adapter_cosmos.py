"""Cosmos beyond the shared battery (tests/test_families.py): conditioning frames read from
``condition_mask`` as the reference frames, the step-order branch convention (conditional, then
unconditional forward at one timestep, on different latent tensors), and steps on a model fed
sigma / (sigma + 1) rather than the scheduler's timesteps.

Cosmos Predict 2.5 (not a CLI tiny model: diffusers converts its image with torchvision) is checked here on a
still video: DyMoS against dense with its one latent tensor for both forwards of a step, and two conditioning
latent frames.

Geometry from the tiny configs: 32x32 pixels, 9 frames -> Wan VAE /8 and /4 -> 3 latent frames of 2x2 tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.testing.tiny import build_tiny, cosmos25_call_kwargs, test_image, tiny_cosmos25
from dense_reference import DenseAttention, ForwardCounter, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 3


@pytest.fixture(scope="module")
def cosmos():
    pipe, call_kwargs = build_tiny("tiny-cosmos2")

    def run(**overrides):
        kwargs = call_kwargs(**{"output_type": "latent", "num_inference_steps": STEPS, **overrides})
        if "video" not in kwargs:
            kwargs["image"] = test_image(32)
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    return pipe, run


def test_a_five_frame_video_conditions_two_latent_frames(cosmos):
    pipe, run = cosmos
    video = [test_image(32)] * 5  # (5 - 1) // 4 + 1 = 2 conditioning latent frames
    with at.inspect(pipe) as rec:
        run(video=video)
    assert rec.layout.reference_frames == (0, 1)
    with at.inspect(pipe) as rec:
        run()
    assert rec.layout.reference_frames == (0,)


def test_forwards_alternate_cond_uncond_per_step_and_guidance_off_is_all_cond(cosmos):
    pipe, run = cosmos
    counter = ForwardCounter(pipe.transformer)
    try:
        with at.inspect(pipe) as rec:
            run()
    finally:
        counter.remove()
    assert counter.count + 1 == 2 * STEPS and rec.steps == list(range(STEPS))
    assert sorted(rec.branches) == ["cond", "uncond"]
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=1)) as steering:
        run(guidance_scale=1.0)
    assert steering.summary()["rules"][0]["branches"] == ["cond"]
    with at.inspect(pipe) as rec:
        run(guidance_scale=1.0)
    assert rec.branches == ["cond"] and rec.steps == list(range(STEPS))


def test_cosmos25_dymos_matches_dense_on_the_conditional_forwards_and_reads_its_conditioning_frames():
    pipe, gamma = tiny_cosmos25(), 2.0

    def run(**overrides):
        kwargs = cosmos25_call_kwargs(**{"output_type": "latent", "num_inference_steps": 2, **overrides})
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    def dense(branch_forward: int) -> np.ndarray:  # forwards per step: conditional (0), then unconditional (1)
        counter = ForwardCounter(pipe.transformer)

        def extra(q):
            if counter.count >= 2 or counter.count % 2 != branch_forward:
                return None
            return frame_bias(12, 0, 3, 4, -gamma, list(range(q.shape[0])), q.shape[0])

        try:
            with DenseAttention(extra, seq_len=12):
                return run()
        finally:
            counter.remove()

    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=gamma, until_step=1)) as steering:
        steered = run()
    assert steering.summary()["rules"][0]["branches"] == ["cond"] and np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, dense(0), atol=1e-4)
    assert np.abs(steered - dense(1)).max() > 1e-3
    with at.inspect(pipe) as rec:
        run(num_latent_conditional_frames=2)
    assert rec.layout.reference_frames == (0, 1)
