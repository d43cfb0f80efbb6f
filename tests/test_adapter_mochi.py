"""Mochi beyond the shared battery (tests/test_families.py): its processor makes one SDPA call per batch
row over the video tokens and that row's *valid* text tokens, so padded prompts of different lengths give
calls of different lengths within one module forward.

Geometry from the tiny config: 32x32 pixels, 13 frames -> VAE /8 and /6 -> 3 latent frames of 4x4 latent
pixels, patch 2 -> 2x2 tokens per frame; 8 text tokens, of which "a red cat" keeps 4 valid and "" keeps 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.testing.tiny import build_tiny
from dense_reference import DenseAttention, ForwardCounter, frame_bias

pytestmark = pytest.mark.usefixtures("one_thread")
FRAMES, PER_FRAME, GAMMA = 3, 4, 2.0
VIDEO = FRAMES * PER_FRAME
COND, UNCOND = VIDEO + 4, VIDEO + 1  # call lengths: video + valid text tokens of each prompt


@pytest.fixture(scope="module")
def mochi():
    pipe, call_kwargs = build_tiny("tiny-mochi")

    def run(**overrides):
        kwargs = call_kwargs("a red cat", "", **{"output_type": "latent", "num_inference_steps": 2, **overrides})
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    return pipe, run


def test_padded_rows_get_their_own_layout_and_dymos_matches_dense(mochi):
    pipe, run = mochi
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, until_step=1)):
        steered = run()
    assert np.abs(steered - vanilla).max() > 1e-3
    counter = ForwardCounter(pipe.transformer)

    def extra(q):  # the conditional row's calls are the ones with 4 valid text tokens; step 0 only
        if counter.count >= 1 or q.shape[-2] != COND:
            return None
        return frame_bias(COND, 0, FRAMES, PER_FRAME, -GAMMA, [0], 1)

    try:
        with DenseAttention(extra):
            dense = run()
    finally:
        counter.remove()
    np.testing.assert_allclose(steered, dense, atol=1e-4)


def test_recording_padded_rows_sums_to_one_per_frame(mochi):
    pipe, run = mochi
    with at.inspect(pipe) as rec:
        run()
    assert rec.layout.seq_len == VIDEO + 8  # the forward's layout: all 8 text positions
    for branch in ("cond", "uncond"):
        rows = rec.frame_map(branch=branch).sum(-1) + rec.text_mass(branch=branch)
        torch.testing.assert_close(rows, torch.ones(FRAMES, dtype=rows.dtype), atol=1e-5, rtol=0)


def test_a_zeroed_empty_prompt_is_steered_but_not_recorded_with_text_rows(mochi):
    pipe, run = mochi
    zeros = torch.zeros(1, 8, dtype=torch.long)  # what force_zeros_for_empty_prompt makes of ""
    with at.steer(pipe, at.recipes.dymos(gamma=GAMMA, until_step=1)):
        run(negative_prompt_attention_mask=zeros)
    with pytest.raises(at.SteeringError, match="other token groups"):
        with at.inspect(pipe):
            run(negative_prompt_attention_mask=zeros)
