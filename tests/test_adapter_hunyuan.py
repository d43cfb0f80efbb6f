"""HunyuanVideo I2V and HunyuanVideo 1.5 I2V: joint video+text self-attention (video first), guidance
by forward order (HunyuanVideo, no cache context) or by the guider's "pred_cond"/"pred_uncond" contexts.

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
SEQ15 = VIDEO + 16 + 4 + 8
HUNYUAN_LAYERS = ["transformer.transformer_blocks.0.attn", "transformer.single_transformer_blocks.0.attn"]


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


def dense_group_masses(run, seq):
    """The dense [G, G] mass (frames, then one group for all conditioning tokens) of every self-attention call."""
    groups = torch.cat([torch.arange(FRAMES).repeat_interleave(TOKENS_PER_FRAME), torch.full((seq - VIDEO,), FRAMES)])
    dense = DenseAttention(groups=lambda q: groups, seq_len=seq)
    with dense:
        run()
    return [mass[0].mean(0) for mass in dense.masses]


# --- HunyuanVideo I2V -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["latent_concat", "token_replace"])
def hunyuan(request):
    from attnsteer.testing.tiny import hunyuan_call_kwargs, tiny_hunyuan

    pipe = tiny_hunyuan(image_condition_type=request.param)
    return pipe, runner(pipe, hunyuan_call_kwargs)


def test_hunyuan_zero_bias_identity_and_clean_exit(hunyuan):
    pipe, run = hunyuan
    vanilla = run()
    before = hook_state(pipe.transformer)
    with at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)) as steering:
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    assert sorted(steering.summary()["rules"][0]["layers"]) == sorted(HUNYUAN_LAYERS)  # not the token refiner
    assert np.array_equal(run(), vanilla)
    assert hook_state(pipe.transformer) == before


@pytest.mark.parametrize("true_cfg", [3.0, 1.0])
def test_hunyuan_dymos_hits_the_first_forward_of_each_step(hunyuan, true_cfg):
    """Two forwards per step with true CFG (cond, then uncond on the same latent input), one without."""
    pipe, run = hunyuan
    per_step = 2 if true_cfg > 1 else 1
    vanilla = run(guidance_scale=true_cfg)
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run(guidance_scale=true_cfg)
    summary = steering.summary()["rules"][0]
    assert summary["steps"] == [0, 1] and summary["branches"] == ["cond"]
    reference = dense_dymos(pipe, lambda: run(guidance_scale=true_cfg), SEQ, 2.0, 2, per_step)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    if per_step == 2:
        swapped = dense_dymos(pipe, lambda: run(guidance_scale=true_cfg), SEQ, 2.0, 2, per_step, biased_forward=1)
        assert np.abs(steered - swapped).max() > 1e-3, "biasing the unconditional forward would have matched"


def test_hunyuan_frame_maps_and_text_mass_match_dense(hunyuan):
    pipe, run = hunyuan
    with at.inspect(pipe) as rec:
        run(num_inference_steps=2)
    masses = dense_group_masses(lambda: run(num_inference_steps=2), SEQ)
    assert len(masses) == 2 * 2 * 2  # steps x forwards (cond, uncond) x layers
    assert rec.branches == ["cond", "uncond"]
    for call, expected in enumerate(masses):
        forward, layer = divmod(call, 2)
        step, branch = forward // 2, ("cond", "uncond")[forward % 2]
        got = rec.frame_map(steps=[step], layers=[layer], branch=branch)
        assert got.shape == (FRAMES, FRAMES)
        torch.testing.assert_close(got.double(), expected[:FRAMES, :FRAMES], atol=1e-5, rtol=0)
        text = rec.text_mass(steps=[step], layers=[layer], branch=branch)
        torch.testing.assert_close(text.double(), expected[:FRAMES, FRAMES], atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)
    assert bool((rec.text_mass() > 0).all())


def test_hunyuan_attention_backend_that_bypasses_sdpa_raises(hunyuan):
    pipe, run = hunyuan
    before = hook_state(pipe.transformer)
    with attention_backend("flex"), pytest.raises(at.SteeringError, match=r"blocks\.0\.attn.*without calling"):
        with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
            run(num_inference_steps=1)
    assert hook_state(pipe.transformer) == before


# --- HunyuanVideo 1.5 I2V ---------------------------------------------------------------------------


def unpadded(text_tokens: int = 8, glyph_tokens: int = 4) -> dict:
    """Masks with every conditioning token valid (padded ones: the next test)."""
    ones = {"prompt_embeds_mask": text_tokens, "prompt_embeds_mask_2": glyph_tokens}
    return {f"{p}{k}": torch.ones(1, n, dtype=torch.long) for k, n in ones.items() for p in ("", "negative_")}


@pytest.fixture(scope="module")
def hunyuan15():
    from attnsteer.testing.tiny import hunyuan15_call_kwargs, tiny_hunyuan15

    pipe = tiny_hunyuan15()
    return pipe, runner(pipe, hunyuan15_call_kwargs, **unpadded())


def test_hunyuan15_zero_bias_identity_and_clean_exit(hunyuan15):
    pipe, run = hunyuan15
    vanilla = run()
    before = hook_state(pipe.transformer)
    with at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)) as steering:
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    assert steering.summary()["rules"][0]["layers"] == [f"transformer.transformer_blocks.{i}.attn" for i in (0, 1)]
    assert np.array_equal(run(), vanilla)
    assert hook_state(pipe.transformer) == before


def test_hunyuan15_dymos_hits_the_pred_cond_forward(hunyuan15):
    pipe, run = hunyuan15
    vanilla = run()
    with at.steer(pipe, at.recipes.dymos(gamma=2.0, until_step=2)) as steering:
        steered = run()
    assert steering.summary()["rules"][0]["branches"] == ["cond"]
    reference = dense_dymos(pipe, run, SEQ15, 2.0, 2, forwards_per_step=2)
    swapped = dense_dymos(pipe, run, SEQ15, 2.0, 2, forwards_per_step=2, biased_forward=1)
    assert np.abs(steered - vanilla).max() > 1e-3
    np.testing.assert_allclose(steered, reference, atol=1e-4)
    assert np.abs(steered - swapped).max() > 1e-3, "biasing the unconditional forward would have matched"


def test_hunyuan15_frame_maps_match_dense(hunyuan15):
    pipe, run = hunyuan15
    with at.inspect(pipe) as rec:
        run(num_inference_steps=1)
    masses = dense_group_masses(lambda: run(num_inference_steps=1), SEQ15)
    assert len(masses) == 2 * 2  # forwards (pred_cond, pred_uncond) x layers
    assert rec.layout.group_names()[-1] == "image+byt5+text"
    for call, expected in enumerate(masses):
        forward, layer = divmod(call, 2)
        branch = ("cond", "uncond")[forward]
        got = rec.frame_map(layers=[layer], branch=branch)
        torch.testing.assert_close(got.double(), expected[:FRAMES, :FRAMES], atol=1e-5, rtol=0)
        text = rec.text_mass(layers=[layer], branch=branch)
        torch.testing.assert_close(text.double(), expected[:FRAMES, FRAMES], atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)


def test_hunyuan15_with_padded_conditioning_tokens(hunyuan15):
    """Real prompts pad the Qwen text and, without quoted glyph text, every byT5 token."""
    from attnsteer.testing.tiny import hunyuan15_call_kwargs

    pipe, _ = hunyuan15
    run = runner(pipe, hunyuan15_call_kwargs)
    vanilla = run()
    with at.inspect(pipe) as rec, at.steer(pipe, at.recipes.dymos(gamma=0.0, stop=1.0)):
        np.testing.assert_allclose(run(), vanilla, atol=1e-5)
    torch.testing.assert_close(rec.frame_map().sum(-1) + rec.text_mass(), torch.ones(FRAMES), atol=1e-5, rtol=0)


def test_hunyuan15_attention_backend_that_bypasses_sdpa_raises(hunyuan15):
    pipe, run = hunyuan15
    with attention_backend("flex"), pytest.raises(at.SteeringError, match=r"blocks\.0\.attn.*without calling"):
        with at.steer(pipe, at.recipes.dymos(gamma=1.0)):
            run(num_inference_steps=1)
