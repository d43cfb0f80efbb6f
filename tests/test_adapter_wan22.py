"""Wan 2.2 A14B: two experts in one session, one step count across both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias

FRAMES, TOKENS_PER_FRAME, STEPS = 3, 16, 4


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.tiny import tiny_wan22

    return tiny_wan22()


@pytest.fixture
def run(pipe, image):
    from attnsteer.tiny import wan_call_kwargs

    def run():
        kwargs = wan_call_kwargs(output_type="latent")
        return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


def test_both_experts_are_steered_with_one_step_count(pipe, run):
    vanilla = run()
    with at.inspect(pipe) as rec, at.steer(pipe, at.recipes.dymos(gamma=2.0, stop=1.0)) as steering:
        steered = run()
    summary = steering.summary()["rules"][0]
    assert summary["steps"] == list(range(STEPS))
    assert {name.split(".")[0] for name in summary["layers"]} == {"transformer", "transformer_2"}
    assert rec.steps == list(range(STEPS))
    rec.frame_map(steps=[0, 1], layers=r"transformer\..*")  # high-noise expert: timesteps 999, 900
    rec.frame_map(steps=[2, 3], layers=r"transformer_2\..*")  # low-noise expert after the 800 boundary
    with pytest.raises(at.ConfigError, match="no recorded attention"):
        rec.frame_map(steps=[2, 3], layers=r"transformer\..*")
    counters = [ForwardCounter(pipe.transformer), ForwardCounter(pipe.transformer_2)]

    def extra(q):
        total = sum(c.count + 1 for c in counters) - 1  # forwards so far across both experts, 0-based
        cond = total % 2 == 0
        return frame_bias(q.shape[-2], 0, FRAMES, TOKENS_PER_FRAME, -2.0, [0], q.shape[0]) if cond else None

    try:
        with DenseAttention(extra, seq_len=FRAMES * TOKENS_PER_FRAME):
            reference = run()
    finally:
        for c in counters:
            c.remove()
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_layer_filter_can_pick_one_expert(pipe, run):
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-2.0), layers=r"transformer_2\..*")
    with at.steer(pipe, rule) as steering:
        run()
    assert all(name.startswith("transformer_2.") for name in steering.summary()["rules"][0]["layers"])
