"""HunyuanVideo I2V and HunyuanVideo 1.5 I2V beyond the shared battery (tests/test_families.py): the
modules hooked, HunyuanVideo without true CFG (one conditional forward per step), padded conditioning
tokens of HunyuanVideo 1.5, the flex attention backend (through diffusers' dispatcher).

Frames and token offsets come from the tiny configs: 64x64 pixels, 9 frames -> 3 latent frames.
HunyuanVideo: VAE /8, patch 2 -> 4x4 tokens per frame, then 8 text tokens (padded).
HunyuanVideo 1.5: VAE /16, patch 1 -> 4x4 tokens per frame, then 16 SigLIP + 4 byT5 + 8 text tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import attention_backend

import attnsteer as at
from dense_reference import DenseAttention, ForwardCounter, frame_bias, hook_state

FRAMES, TOKENS_PER_FRAME = (9 - 1) // 4 + 1, 4 * 4
VIDEO = FRAMES * TOKENS_PER_FRAME
SEQ = VIDEO + 8
HUNYUAN_LAYERS = ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]


def runner(pipe, call_kwargs, **defaults):
    from attnsteer.testing.tiny import test_image

    def run(**overrides):
        kwargs = call_kwargs(**{"output_type": "latent", **defaults, **overrides})
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


def dense_dymos(pipe, run, seq, gamma, until_step, forwards_per_step, biased_forward=0):
    """DyMoS densely: bias the ``biased_forward``-th forward of each of the first ``until_step`` steps (batch 1)."""
    counter = ForwardCounter(pipe.transformer)

    def extra(q):
        step, forward = divmod(counter.count, forwards_per_step)
        if forward != biased_forward or step >= until_step:
            return None
        return frame_bias(seq, 0, FRAMES, TOKENS_PER_FRAME, -gamma, [0], q.shape[0])

    try:
        with DenseAttention(extra, seq_len=seq):
            return run()
    finally:
        counter.remove()


# --- HunyuanVideo I2V -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["latent_concat", "token_replace"])
def hunyuan(request):
    from attnsteer.testing.tiny import hunyuan_call_kwargs, tiny_hunyuan

    pipe = tiny_hunyuan(image_condition_type=request.param)
    return pipe, runner(pipe, hunyuan_call_kwargs)


def test_hunyuan_self_attention_is_both_streams_not_the_token_refiner(hunyuan):
    from attnsteer.contract.registry import require_adapter

    pipe, _ = hunyuan
    modules = require_adapter(pipe.transformer).attention_modules(pipe.transformer)
    assert sorted(name for name, _ in modules) == sorted(HUNYUAN_LAYERS)


def test_hunyuan_without_true_cfg_every_forward_is_conditional(hunyuan):
    """One forward per step without true CFG (with it, cond then uncond: the shared battery)."""
    pipe, run = hunyuan
    vanilla = run(guidance_scale=1.0)
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run(guidance_scale=1.0)
    summary = steering.summary()["rules"][0]
    assert summary["steps"] == [0, 1] and summary["branches"] == ["cond"]
    reference = dense_dymos(pipe, lambda: run(guidance_scale=1.0), SEQ, 2.0, 2, forwards_per_step=1)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)


def test_hunyuan_on_the_flex_backend_is_steered_like_native(hunyuan):
    """The flex backend bypasses SDPA; diffusers' dispatcher hands its calls to attnsteer (docs/backends.md)."""
    pipe, run = hunyuan
    with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
        native = run(num_inference_steps=1)
    before = hook_state(pipe.transformer)  # after a run: the pipeline's cache context leaves a registry on the root
    with attention_backend("flex"), at.steer(pipe, at.recipes.dymos(gamma=1.0)) as steering:
        flex = run(num_inference_steps=1)
    np.testing.assert_allclose(flex, native, atol=1e-5)
    assert set(steering.summary()["steered_calls_by_backend"]) == {"flex"}
    assert hook_state(pipe.transformer) == before


# --- HunyuanVideo 1.5 I2V ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hunyuan15():
    from attnsteer.testing.tiny import hunyuan15_call_kwargs, tiny_hunyuan15

    pipe = tiny_hunyuan15()
    return pipe, runner(pipe, hunyuan15_call_kwargs)


def test_hunyuan15_self_attention_is_the_dual_stream_blocks(hunyuan15):
    from attnsteer.contract.registry import require_adapter

    pipe, _ = hunyuan15
    modules = require_adapter(pipe.transformer).attention_modules(pipe.transformer)
    assert [name for name, _ in modules] == [f"transformer_blocks.{i}.attn" for i in (0, 1)]


def test_hunyuan15_with_padded_conditioning_tokens(hunyuan15):
    """Real prompts pad the Qwen text and, without quoted glyph text, every byT5 token (the tiny call's default)."""
    pipe, run = hunyuan15
    vanilla = run()
    with at.inspect(pipe) as rec, at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)):
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)


def test_hunyuan15_on_the_flex_backend_is_steered_like_native(hunyuan15):
    pipe, run = hunyuan15
    with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
        native = run(num_inference_steps=1)
    with attention_backend("flex"), at.steer(pipe, at.recipes.dymos(gamma=1.0)) as steering:
        flex = run(num_inference_steps=1)
    np.testing.assert_allclose(flex, native, atol=1e-5)
    assert set(steering.summary()["steered_calls_by_backend"]) == {"flex"}
