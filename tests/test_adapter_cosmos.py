"""Cosmos beyond the shared battery (tests/test_families.py): conditioning frames read from
``condition_mask`` as the reference frames, the step-order branch convention (conditional, then
unconditional forward at one timestep, on different latent tensors), and steps on a model fed
sigma / (sigma + 1) rather than the scheduler's timesteps.

Geometry from the tiny config: 32x32 pixels, 9 frames -> Wan VAE /8 and /4 -> 3 latent frames of 2x2 tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.testing.tiny import build_tiny, test_image
from dense_reference import ForwardCounter

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
