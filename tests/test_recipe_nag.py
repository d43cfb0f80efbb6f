"""NAG against the authors' Wan attention processor, re-implemented here without attnsteer.

The reference replaces the processor of every ``attn2`` with a plain one: in a conditional forward (the one given the
prompt's embeddings) it computes ``Zp`` and ``Zn`` (the negative context projected by the model's own text
embedder), ``Zt = s Zp - (s - 1) Zn``, the L1 ratio with NaN -> 10, the tau clamp with eps 1e-7, the alpha mix, then
adds the unguided CLIP-image attention (Wan I2V) and applies ``to_out``. Unconditional forwards keep plain attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer import recipes
from attnsteer.testing.tiny_parts import prompt_embedding
from dense_reference import hook_state

pytestmark = pytest.mark.usefixtures("one_thread")


class AuthorsNag:
    """The authors' NAG Wan processor (formula and eps handling), written out; ``active`` is set per forward."""

    def __init__(self, negative: torch.Tensor, scale: float, tau: float, alpha: float) -> None:
        self.negative, self.scale, self.tau, self.alpha = negative, scale, tau, alpha
        self.active = False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        image = None
        if attn.add_k_proj is not None:
            split = encoder_hidden_states.shape[1] - 512
            image, encoder_hidden_states = encoder_hidden_states[:, :split], encoder_hidden_states[:, split:]
        heads = attn.heads
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (heads, -1)).transpose(1, 2)

        def attend(k, v):
            k = k.unflatten(2, (heads, -1)).transpose(1, 2)
            v = v.unflatten(2, (heads, -1)).transpose(1, 2)
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

        positive = attend(attn.norm_k(attn.to_k(encoder_hidden_states)), attn.to_v(encoder_hidden_states))
        out = positive
        if self.active:
            context = self.negative.expand(hidden_states.shape[0], -1, -1)
            negative = attend(attn.norm_k(attn.to_k(context)), attn.to_v(context))
            guidance = positive * self.scale - negative * (self.scale - 1)
            norm_positive = positive.abs().sum(-1, keepdim=True)
            norm_guidance = guidance.abs().sum(-1, keepdim=True)
            ratio = torch.nan_to_num(norm_guidance / norm_positive, 10)
            capped = guidance / (norm_guidance + 1e-7) * norm_positive * self.tau
            guidance = torch.where(ratio > self.tau, capped, guidance)
            out = guidance * self.alpha + positive * (1 - self.alpha)
        if image is not None:
            out = out + attend(attn.norm_added_k(attn.add_k_proj(image)), attn.add_v_proj(image))
        return attn.to_out[1](attn.to_out[0](out))


def authors_reference(pipe, run, prompt_embeds, negative_embeds, scale, tau=2.5, alpha=0.25):
    """``run()`` with the authors' processor on every attn2, active in the forwards given ``prompt_embeds``."""
    transformer = pipe.transformer
    with torch.no_grad():
        negative = transformer.condition_embedder.text_embedder(negative_embeds.to(transformer.dtype))
    processor = AuthorsNag(negative, scale, tau, alpha)
    saved = {name: m.processor for name, m in transformer.named_modules() if name.endswith("attn2")}

    def which_branch(module, args, kwargs):
        processor.active = torch.equal(kwargs["encoder_hidden_states"], prompt_embeds.to(transformer.dtype))

    handle = transformer.register_forward_pre_hook(which_branch, with_kwargs=True)
    for name in saved:
        transformer.get_submodule(name).set_processor(processor)
    try:
        return run()
    finally:
        handle.remove()
        for name, p in saved.items():
            transformer.get_submodule(name).set_processor(p)


def _runner(pipe, call_kwargs, **extra):
    def run(**overrides):
        kwargs = call_kwargs(num_inference_steps=2, output_type="latent", **overrides)
        kwargs.update(extra)
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return run


@pytest.fixture(scope="module")
def wan_i2v():
    from attnsteer.testing.tiny import test_image, tiny_wan, wan_call_kwargs

    pipe = tiny_wan().to(torch.float64)
    assert pipe.transformer.blocks[0].attn2.add_k_proj is not None  # CLIP-image keys in attn2
    return pipe, _runner(pipe, wan_call_kwargs, image=test_image())


@pytest.fixture(scope="module")
def wan_t2v():
    """A Wan T2V pipeline (text-only cross-attention) on the tiny TI2V transformer (16 input channels, as T2V)."""
    from diffusers import WanPipeline

    from attnsteer.testing.tiny import tiny_wan_ti2v, wan_call_kwargs

    parts = tiny_wan_ti2v()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=parts.vae, transformer=parts.transformer,
                       scheduler=parts.scheduler).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return pipe, _runner(pipe, wan_call_kwargs)


def test_nag_on_wan_i2v_matches_the_authors_processor_with_unguided_image_attention(wan_i2v):
    pipe, run = wan_i2v
    negative = prompt_embedding("blurry, static", 512, 32)
    vanilla = run()
    expected = authors_reference(pipe, run, prompt_embedding("a cat", 512, 32), negative, scale=3.0)
    before = hook_state(pipe.transformer)
    with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=negative)):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got, vanilla, atol=1e-3)  # NAG changes the video
    assert hook_state(pipe.transformer) == before


def test_nag_on_wan_t2v_matches_the_authors_processor(wan_t2v):
    pipe, run = wan_t2v
    negative = prompt_embedding("low quality", 512, 32)
    vanilla = run()
    expected = authors_reference(pipe, run, prompt_embedding("a cat", 512, 32), negative, scale=5.0, tau=1.5, alpha=0.5)
    with at.steer(pipe, recipes.nag(scale=5.0, tau=1.5, alpha=0.5, negative_prompt_embeds=negative)):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got, vanilla, atol=1e-3)


def test_nag_with_a_negative_context_of_another_length_runs_it_separately(wan_t2v):
    """A 7-token negative context cannot share a batch with the 512-token prompt: two module calls, same formula."""
    pipe, run = wan_t2v
    negative = prompt_embedding("low quality", 512, 32)[:, :7]
    expected = authors_reference(pipe, run, prompt_embedding("a cat", 512, 32), negative, scale=3.0)
    with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=negative)):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_nag_with_scale_one_leaves_the_output_identical(wan_i2v):
    pipe, run = wan_i2v
    vanilla = run()
    with at.steer(pipe, recipes.nag(scale=1.0, negative_prompt_embeds=prompt_embedding("blurry", 512, 32))):
        np.testing.assert_array_equal(run(), vanilla)


def test_an_exception_inside_a_nag_session_leaves_the_model_clean(wan_i2v):
    pipe, run = wan_i2v
    vanilla = run()
    before = hook_state(pipe.transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=prompt_embedding("blurry", 512, 32))):
            run(callback_on_step_end=_raise)
    assert hook_state(pipe.transformer) == before
    np.testing.assert_array_equal(run(), vanilla)


def _raise(*args, **kwargs):
    raise RuntimeError("boom")


def test_a_negative_prompt_string_needs_a_text_encoder(wan_t2v):
    pipe, run = wan_t2v
    refused = r"negative_prompt='blurry'.*without a text encoder.*negative_prompt_embeds"
    with pytest.raises(at.ConfigError, match=refused):
        with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt="blurry")):
            run()


def test_bad_nag_settings_are_refused_naming_the_field():
    with pytest.raises(at.ConfigError, match=r"norm.*\('l1', 'l2'\)"):
        recipes.nag(norm="max")
    with pytest.raises(at.ConfigError, match=r"scale=...\) must be >= 1"):
        recipes.nag(scale=0.5)
    with pytest.raises(at.ConfigError, match=r"alpha=...\) must be in \[0, 1\]"):
        recipes.nag(alpha=2)
    with pytest.raises(at.ConfigError, match="not both"):
        recipes.nag(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 3, 32))
    with pytest.raises(at.ConfigError, match=r"Rule.attention must be 'cross'"):
        at.Rule(at.video, at.text, at.second_context(at.nag_combine(3.0)), attention="self")
    with pytest.raises(at.ConfigError, match=r"Rule.query must be at.video"):
        at.Rule(at.frames[1:], at.text, at.second_context(at.nag_combine(3.0)), attention="cross")


def test_the_combination_caps_zero_norm_rows_as_the_authors_eps_does():
    """Row 0: ||Zp|| = 0, so the ratio is inf and the capped guidance is 0; row 1: ratio 3 > tau 2.5, capped."""
    positive = torch.tensor([[[0.0, 0.0], [1.0, -2.0]]], dtype=torch.float64)
    negative = torch.tensor([[[1.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)
    got = at.nag_combine(3.0, tau=2.5, alpha=0.25)(positive, negative)
    capped = torch.tensor([2.0, -7.0], dtype=torch.float64) / (9.0 + 1e-7) * 3.0 * 2.5
    expected = torch.stack([torch.zeros(2, dtype=torch.float64), 0.25 * capped + 0.75 * positive[0, 1]])
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-12)


def test_toy_encodes_the_negative_prompt_with_its_prompt_table():
    """A string negative prompt goes through the pipeline's own encoder: the same as giving its embeddings."""
    from attnsteer.toy import ToyI2VPipeline

    pipe = ToyI2VPipeline.from_shipped()
    pipe.transformer.to(torch.float64), pipe.prompts.to(torch.float64)
    run = lambda: np.asarray(pipe(prompt="right fast", num_inference_steps=2, output_type="latent",
                                  generator=torch.Generator().manual_seed(0)).frames[0])
    vanilla = run()
    with at.steer(pipe, recipes.nag(scale=4.0, negative_prompt="left slow")):
        by_text = run()
    embeds = pipe.prompts(["left slow"]).detach()
    with at.steer(pipe, recipes.nag(scale=4.0, negative_prompt_embeds=embeds)):
        by_embeds = run()
    np.testing.assert_array_equal(by_text, by_embeds)
    assert not np.allclose(by_text, vanilla, atol=1e-4)


def test_attnsteer_run_toy_with_the_nag_recipe(tmp_path):
    from attnsteer.cli.main import main

    assert main(["run", "--model", "toy", "--recipe", "nag", "--steps", "2", "--out", str(tmp_path)]) == 0
    assert any(tmp_path.iterdir())
