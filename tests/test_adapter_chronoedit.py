"""ChronoEdit beyond the shared battery: with temporal reasoning the frame count drops from num_frames to 2
(frames [0, last]) after the reasoning steps; each forward's layout follows it, and DyMoS matches a dense
run whose geometry is read from each call.

From the tiny config: 64x64 pixels, VAE /8, patch 2x2 -> 4x4 tokens per frame; 9 frames -> 3 latent frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")
PER_FRAME, STEPS = 16, 2


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_chronoedit

    return tiny_chronoedit()


def run(pipe, image):
    from attnsteer.testing.tiny import chronoedit_call_kwargs

    kwargs = chronoedit_call_kwargs(output_type="latent", num_inference_steps=STEPS, num_frames=9,
                                    enable_temporal_reasoning=True, num_temporal_reasoning_steps=1)
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames)


def test_temporal_reasoning_layouts_follow_the_frame_count(pipe, image):
    vanilla = run(pipe, image)
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, stop=1.0)) as steering:
        steered = run(pipe, image)
    assert steering.summary()["rules"][0]["steps"] == list(range(STEPS))
    with pytest.raises(at.SteeringError, match="token layout changed"):  # one recording holds one video size
        with at.inspect(pipe):
            run(pipe, image)
    counter = ForwardCounter(pipe.transformer)

    def extra(q):  # conditional forwards come first in each step; frames read from the call's length
        frames = q.shape[-2] // PER_FRAME
        return frame_bias(q.shape[-2], 0, frames, PER_FRAME, -2.0, [0], 1) if counter.count % 2 == 0 else None

    try:
        with DenseAttention(extra):
            reference = run(pipe, image)
    finally:
        counter.remove()
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)
