"""Wan 2.2 beyond the shared battery (tests/test_families.py): A14B's two experts in one session with one
step count; TI2V-5B's per-token timesteps.

From the tiny configs: 64x64 pixels, VAE /8, patch 2x2 -> 4x4 tokens per frame; 9 frames -> 3 latent frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias, hook_state

FRAMES, TOKENS_PER_FRAME, STEPS = 3, 16, 4


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_wan22

    return tiny_wan22()


@pytest.fixture
def run(pipe, image):
    from attnsteer.testing.tiny import wan_call_kwargs

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


# --- TI2V-5B: expand_timesteps (the image replaces latent frame 0, whose tokens get timestep 0) ---------------


@pytest.fixture(scope="module")
def ti2v():
    from attnsteer.testing.tiny import tiny_wan_ti2v

    return tiny_wan_ti2v()


@pytest.fixture
def run_ti2v(ti2v, image):
    from attnsteer.testing.tiny import wan_call_kwargs

    def run(**overrides):
        kwargs = wan_call_kwargs(**{"output_type": "latent", **overrides})
        return np.asarray(ti2v(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


def test_ti2v_per_token_timesteps_map_to_scheduler_steps(ti2v, run_ti2v):
    seen = []
    handle = ti2v.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True
    )
    try:
        vanilla = run_ti2v()
    finally:
        handle.remove()
    scheduled = ti2v.scheduler.timesteps.float()
    for forward, t in enumerate(seen):  # [B, S]: 0 on frame 0's tokens, the step's timestep elsewhere
        assert t.shape == (1, FRAMES * TOKENS_PER_FRAME)
        assert (t[:, :TOKENS_PER_FRAME] == 0).all() and (t[:, TOKENS_PER_FRAME:] == scheduled[forward // 2]).all()
    before = hook_state(ti2v.transformer)
    with at.inspect(ti2v) as rec, at.steer(ti2v, at.recipes.dymos(gamma=0.0, stop=1.0)) as steering:
        np.testing.assert_allclose(run_ti2v(), vanilla, atol=1e-5)
    assert rec.steps == list(range(STEPS)) and steering.summary()["rules"][0]["steps"] == list(range(STEPS))
    assert [rec.timesteps[s] for s in rec.steps] == pytest.approx(scheduled.tolist())
    assert rec.layout.reference_frames == (0,)
    assert np.array_equal(run_ti2v(), vanilla)
    assert hook_state(ti2v.transformer) == before