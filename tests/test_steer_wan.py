"""Steering the tiny Wan I2V pipeline: identity, exactness against a dense re-implementation, cleanup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias, hook_state

TOKENS_PER_FRAME = (64 // 8 // 2) * (64 // 8 // 2)  # VAE /8, patch 2x2
NUM_FRAMES = (9 - 1) // 4 + 1


def test_zero_bias_equals_vanilla_and_exit_restores(wan_pipe, run_wan):
    vanilla = run_wan()
    before = hook_state(wan_pipe.transformer)  # after a vanilla run: the pipeline's own cache_context adds a registry
    with at.steer(wan_pipe, at.recipes.dymos(gamma=0.0, stop=1.0)) as steering:
        steered = run_wan()
    np.testing.assert_allclose(steered, vanilla, atol=1e-6)
    assert steering.summary()["rules"][0]["steps"] == [0, 1, 2, 3]
    assert np.array_equal(run_wan(), vanilla)
    assert hook_state(wan_pipe.transformer) == before


def test_exit_after_exception_restores(wan_pipe, run_wan):
    vanilla = run_wan()
    before = hook_state(wan_pipe.transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with at.steer(wan_pipe, at.recipes.dymos(gamma=3.0)):
            run_wan()
            raise RuntimeError("boom")
    assert hook_state(wan_pipe.transformer) == before
    assert np.array_equal(run_wan(), vanilla)


def dense_dymos(pipe, run, gamma, until_step, rows_of_branch):
    """DyMoS re-implemented densely: Wan runs a cond then an uncond forward per step."""
    counter = ForwardCounter(pipe.transformer)

    def extra(q):
        step, cond = counter.count // 2, counter.count % 2 == 0
        if not cond or step >= until_step:
            return None
        return frame_bias(q.shape[-2], 0, NUM_FRAMES, TOKENS_PER_FRAME, -gamma, rows_of_branch, q.shape[0])

    try:
        with DenseAttention(extra, seq_len=NUM_FRAMES * TOKENS_PER_FRAME):
            return run()
    finally:
        counter.remove()


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_dymos_matches_dense_reimplementation(wan_pipe, run_wan, output_type):
    run = lambda: np.asarray(run_wan(output_type=output_type))  # noqa: E731
    vanilla = run()
    with at.steer(wan_pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run()
    reference = dense_dymos(wan_pipe, run, gamma=2.0, until_step=2, rows_of_branch=[0])
    assert np.abs(steered - vanilla).max() > 1e-3, "DyMoS must change the video"
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    summary = steering.summary()["rules"][0]
    assert summary["steps"] == [0, 1] and summary["branches"] == ["cond"]
    assert summary["layers"] == ["transformer.blocks.0.attn1", "transformer.blocks.1.attn1"]


def test_progress_schedule_counts_pipeline_steps(wan_pipe, run_wan):
    with at.steer(wan_pipe, at.recipes.dymos(gamma=1.0, stop=0.2)) as steering:
        run_wan(num_inference_steps=10)
    assert steering.summary()["rules"][0]["steps"] == [0, 1]


def test_nested_sessions_add_their_biases(wan_pipe, run_wan):
    half = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.steps(stop=2), branch="cond")
    with at.steer(wan_pipe, half):
        with at.steer(wan_pipe, half):
            nested = run_wan(output_type="latent")
        once = run_wan(output_type="latent")
    with at.steer(wan_pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        full = run_wan(output_type="latent")
    np.testing.assert_allclose(nested, full, atol=1e-6)
    assert np.abs(once - full).max() > 1e-4


def test_layer_filter_leaves_other_layers_alone(wan_pipe, run_wan):
    rule = at.Rule(at.frames[1:], at.frames[0], at.block(), layers=[1])
    with at.steer(wan_pipe, rule) as steering:
        run_wan()
    assert steering.summary()["rules"][0]["layers"] == ["transformer.blocks.1.attn1"]


def test_bad_inputs_fail_with_clear_errors(wan_pipe, run_wan):
    with pytest.raises(at.ConfigError, match=r"frames\[7\].*3 latent frames.*-3\.\.2"):
        with at.steer(wan_pipe, at.Rule(at.frames[1:], at.frames[7], at.bias(1.0))):
            run_wan()
    with pytest.raises(at.ConfigError, match="branch must be one of"):
        at.recipes.dymos(branch="foo")
    with pytest.raises(at.ConfigError, match="gamma"):
        at.recipes.dymos(gamma=float("nan"))
    with pytest.raises(at.UnsupportedModelError, match=r"Linear.*supported families: .*wan"):
        at.steer(torch.nn.Linear(2, 2), at.recipes.dymos())
    with pytest.raises(at.UnsupportedModelError, match="pipeline or a torch.nn.Module"):
        at.steer("wan", at.recipes.dymos())
    with pytest.raises(at.ConfigError, match="at.steer takes rules and recipes"):
        at.steer(wan_pipe, "dymos")


def test_transformer_target_tracks_steps_by_timestep(wan_pipe, run_wan):
    with at.steer(wan_pipe.transformer, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        by_transformer = run_wan()
    with at.steer(wan_pipe, at.recipes.dymos(gamma=2.0, until_step=2)):
        by_pipeline = run_wan()
    np.testing.assert_allclose(by_transformer, by_pipeline, atol=1e-6)
    assert steering.summary()["rules"][0]["steps"] == [0, 1]
    with pytest.raises(at.ConfigError, match="num_steps"):
        with at.steer(wan_pipe.transformer, at.recipes.dymos(gamma=2.0)):
            run_wan()
    with at.steer(wan_pipe.transformer, at.recipes.dymos(gamma=2.0, stop=0.5), num_steps=4) as steering:
        run_wan()
    assert steering.summary()["rules"][0]["steps"] == [0, 1]


def test_backend_that_bypasses_sdpa_raises(wan_pipe, run_wan, monkeypatch):
    """A processor that computes attention by hand never calls F.sdpa: active rules must raise, not skip."""
    import diffusers.models.transformers.transformer_wan as wan

    def by_hand(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=None, parallel_config=None, **_):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        p = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        return (p @ v).transpose(1, 2)

    monkeypatch.setattr(wan, "dispatch_attention_fn", by_hand)
    with pytest.raises(at.SteeringError, match=r"blocks\.0\.attn1.*without calling.*scaled_dot_product_attention"):
        with at.steer(wan_pipe, at.recipes.dymos(gamma=1.0)):
            run_wan()
