"""LTX-Video I2V: video-only attention, per-token timesteps, batch [uncond, cond]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.tiny import tiny_ltx

    return tiny_ltx()


@pytest.fixture
def run(pipe):
    from attnsteer.tiny import ltx_call_kwargs, test_image

    def run(**overrides):
        kwargs = ltx_call_kwargs(**{"output_type": "latent", **overrides})
        return np.asarray(pipe(image=test_image(32), generator=torch.Generator().manual_seed(0), **kwargs).frames)

    return run


def grid(pipe):
    """(latent frames, tokens per frame) from the pipeline's own compression ratios, for 9 frames of 32 x 32."""
    frames = (9 - 1) // pipe.vae_temporal_compression_ratio + 1
    side = 32 // pipe.vae_spatial_compression_ratio
    return frames, side * side


def test_identity_dymos_and_branches(pipe, run):
    frames, tokens = grid(pipe)
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)):
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run()
    assert steering.summary()["rules"][0]["steps"] == [0, 1]
    counter = ForwardCounter(pipe.transformer)

    def dense(rows):
        def extra(q):
            return None if counter.count >= 2 else frame_bias(q.shape[-2], 0, frames, tokens, -2.0, rows, q.shape[0])
        counter.count = -1
        with DenseAttention(extra, seq_len=frames * tokens):
            return run()

    try:
        second_half, first_half = dense([1]), dense([0])
    finally:
        counter.remove()
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, second_half, atol=1e-4)
    assert np.abs(steered - first_half).max() > 1e-3
    assert np.array_equal(run(), vanilla)


def test_frame_map_size_and_rows(pipe, run):
    frames, tokens = grid(pipe)
    dense = DenseAttention(groups=lambda q: torch.arange(q.shape[-2]) // tokens, seq_len=frames * tokens)
    with dense:
        run(num_inference_steps=1)
    with at.inspect(pipe) as rec:
        run(num_inference_steps=1)
    assert rec.frame_map().shape == (frames, frames)
    for layer, mass in enumerate(dense.masses):
        torch.testing.assert_close(rec.frame_map(layers=[layer], branch="cond").double(), mass[1].mean(0),
                                   atol=1e-5, rtol=0)
