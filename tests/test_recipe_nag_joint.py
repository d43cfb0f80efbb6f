"""NAG's joint variant on tiny CogVideoX against the authors' SD3 joint processor, re-implemented without attnsteer.

The authors' SD3 pipeline appends the negative prompt's embeddings to the text batch (one row per conditional row,
with the conditional row's timestep) and their ``NAGJointAttnProcessor2_0`` computes the image queries, keys and values
of the real rows only, tiles the conditional rows' onto the negative rows, runs one joint attention, combines the
image outputs of the conditional rows (``Zt = s Zp - (s - 1) Zn``, ``r = ||Zt||_1 / (||Zp||_1 + 1e-7)``,
``Zt * min(r, tau) / (r + 1e-7)``, alpha mix) before ``to_out`` and lets the negative rows' text go on. CogVideoX runs
its blocks on text and video in one batch, so the reference carries the negative rows' video through the blocks too
(a copy of the conditional rows' at the start), and its processor never reads it: it rebuilds the image rows from the
real rows in every attention, as the authors' processor does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

import attnsteer as at
from attnsteer import recipes
from attnsteer.testing.tiny import cogvideox_call_kwargs, test_image, tiny_cogvideox
from attnsteer.testing.tiny_parts import prompt_embedding
from dense_reference import float64_inputs, hook_state

pytestmark = pytest.mark.usefixtures("one_thread")

COND = [1]  # the CogVideoX pipeline's batch is [uncond, cond]


class AuthorsJointNag:
    """The authors' SD3 joint NAG processor (formula and eps handling) on CogVideoX's joint [text, video] attention."""

    def __init__(self, scale: float, tau: float, alpha: float) -> None:
        self.scale, self.tau, self.alpha = scale, tau, alpha

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        batch, text, heads = hidden_states.shape[0] - len(COND), encoder_hidden_states.shape[1], attn.heads
        image = hidden_states[:batch]  # the real rows' image; the negative rows get the conditional rows' (tiled)
        x = torch.cat([encoder_hidden_states, torch.cat([image, image[COND]])], dim=1)

        def split(t):
            return t.unflatten(2, (heads, -1)).transpose(1, 2)

        q, k, v = attn.norm_q(split(attn.to_q(x))), attn.norm_k(split(attn.to_k(x))), split(attn.to_v(x))
        q[:, :, text:] = apply_rotary_emb(q[:, :, text:], image_rotary_emb)
        k[:, :, text:] = apply_rotary_emb(k[:, :, text:], image_rotary_emb)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        positive, negative = out[COND, text:], out[batch:, text:]
        guidance = positive * self.scale - negative * (self.scale - 1)
        norm_positive = positive.abs().sum(-1, keepdim=True)
        norm_guidance = guidance.abs().sum(-1, keepdim=True)
        ratio = norm_guidance / (norm_positive + 1e-7)
        guidance = guidance * torch.minimum(ratio, ratio.new_ones(1) * self.tau) / (ratio + 1e-7)
        out = out.clone()
        out[COND, text:] = guidance * self.alpha + positive * (1 - self.alpha)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, text:], out[:, :text]


def authors_reference(pipe, run, negative, scale, tau=2.5, alpha=0.125):
    """``run()`` with the authors' data flow: negative rows appended to each forward, their processor on every attn1."""
    transformer = pipe.transformer

    def extend(module, args, kwargs):
        kwargs = dict(kwargs)
        for name in ("hidden_states", "timestep"):
            kwargs[name] = torch.cat([kwargs[name], kwargs[name][COND]])
        text = kwargs["encoder_hidden_states"]
        kwargs["encoder_hidden_states"] = torch.cat([text, negative.to(text.dtype)])
        return args, kwargs

    def drop(module, args, output):
        return (output[0][: output[0].shape[0] - len(COND)], *output[1:])

    handles = [transformer.register_forward_pre_hook(extend, with_kwargs=True), transformer.register_forward_hook(drop)]
    saved = {name: m.processor for name, m in transformer.named_modules() if name.endswith("attn1")}
    for name in saved:
        transformer.get_submodule(name).set_processor(AuthorsJointNag(scale, tau, alpha))
    try:
        return run()
    finally:
        for handle in handles:
            handle.remove()
        for name, p in saved.items():
            transformer.get_submodule(name).set_processor(p)


@pytest.fixture(scope="module")
def cog():
    pipe = tiny_cogvideox()
    pipe.transformer.to(torch.float64)
    handle = pipe.transformer.register_forward_pre_hook(float64_inputs, with_kwargs=True)

    def run(**overrides):
        kwargs = cogvideox_call_kwargs(num_inference_steps=2, output_type="latent", **overrides)
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    yield pipe, run
    handle.remove()


def test_nag_on_cogvideox_matches_the_authors_joint_processor(cog):
    pipe, run = cog
    negative = prompt_embedding("blurry, static", 16, 32)
    vanilla = run()
    expected = authors_reference(pipe, run, negative, scale=3.0, alpha=0.125)
    before = hook_state(pipe.transformer)
    with at.steer(pipe, recipes.nag(scale=3.0, alpha=0.125, negative_prompt_embeds=negative)) as session:
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got, vanilla, atol=1e-3)  # NAG changes the video
    assert hook_state(pipe.transformer) == before
    steered = session.summary()["rules"][0]
    assert steered["branches"] == ["cond"] and len(steered["layers"]) == 2  # both blocks' joint attention


def test_nag_on_cogvideox_with_a_tight_tau_matches_the_authors_clamp(cog):
    pipe, run = cog
    negative = prompt_embedding("low quality", 16, 32)
    expected = authors_reference(pipe, run, negative, scale=6.0, tau=1.2, alpha=0.5)
    with at.steer(pipe, recipes.nag(scale=6.0, tau=1.2, alpha=0.5, negative_prompt_embeds=negative)):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_nag_on_cogvideox_with_scale_one_leaves_the_output_identical(cog):
    pipe, run = cog
    vanilla = run()
    with at.steer(pipe, recipes.nag(scale=1.0, negative_prompt_embeds=prompt_embedding("blurry", 16, 32))):
        np.testing.assert_array_equal(run(), vanilla)


def test_an_exception_inside_a_joint_nag_session_leaves_the_model_clean(cog):
    pipe, run = cog
    vanilla = run()
    before = hook_state(pipe.transformer)
    with pytest.raises(RuntimeError, match="boom"):
        with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=prompt_embedding("blurry", 16, 32))):
            run(callback_on_step_end=_raise)
    assert hook_state(pipe.transformer) == before
    np.testing.assert_array_equal(run(), vanilla)


def _raise(*args, **kwargs):
    raise RuntimeError("boom")


def test_joint_nag_with_a_negative_prompt_of_another_length_is_refused_naming_both_shapes(cog):
    pipe, run = cog
    refused = r"negative prompt's embeddings have shape \(7, 32\), the prompt's \(16, 32\)"
    with pytest.raises(at.ConfigError, match=refused):
        with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=prompt_embedding("blurry", 16, 32)[:, :7])):
            run()


def test_joint_nag_with_perturbed_guidance_is_refused(cog):
    pipe, run = cog
    nag = recipes.nag(scale=3.0, negative_prompt_embeds=prompt_embedding("blurry", 16, 32))
    with pytest.raises(at.SteeringError, match=r"joint variant adds batch rows.*perturbed guidance"):
        with at.steer(pipe, nag), at.steer(pipe, recipes.stg(mode="A", layers="0")):
            run()


def test_nag_on_a_joint_family_it_is_not_built_for_is_refused_naming_the_rule():
    from attnsteer.testing.tiny import tiny_hunyuan

    pipe = tiny_hunyuan()
    refused = r"rule .*second_context.*no separate text cross-attention modules.*joint variant.*built for cogvideox"
    with pytest.raises(at.SteeringError, match=refused):
        with at.steer(pipe, recipes.nag(scale=3.0, negative_prompt_embeds=torch.zeros(1, 4, 8))):
            pass


def test_the_sd3_eps_scales_zero_norm_rows_as_the_authors_joint_processor_does():
    """Row 0: ||Zp|| = 0, so r = 4 / 1e-7 and Zt * tau / (r + 1e-7) is tiny but not 0 (Wan's eps gives 0); row 1:
    r = 9 / (3 + 1e-7) > tau, so Zt * tau / (r + 1e-7)."""
    positive = torch.tensor([[[0.0, 0.0], [1.0, -2.0]]], dtype=torch.float64)
    negative = torch.tensor([[[1.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)
    got = at.nag_combine(3.0, tau=2.5, alpha=0.25, eps="sd3")(positive, negative)
    guidance = torch.tensor([[-2.0, -2.0], [2.0, -7.0]], dtype=torch.float64)
    ratio = torch.tensor([[4.0 / 1e-7], [9.0 / (3.0 + 1e-7)]], dtype=torch.float64)
    expected = 0.25 * guidance * 2.5 / (ratio + 1e-7) + 0.75 * positive[0]
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-15)
    assert got[0, 0].abs().min() > 0


def test_a_bad_nag_eps_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(at.ConfigError, match=r"nag_combine\(eps=...\) must be None or one of \('wan', 'sd3'\)"):
        at.nag_combine(3.0, eps="flux")


def test_attnsteer_run_tiny_cogvideox_with_the_nag_recipe_uses_the_stand_in_negative_prompt(tmp_path):
    """The tiny models have no text encoder: the CLI gives the negative prompt as their stand-in embeddings."""
    import json

    from attnsteer.cli.main import main

    assert main(["run", "--model", "tiny-cogvideox", "--recipe", "nag", "--param", "negative_prompt=blurry",
                 "--steps", "2", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "run.json").read_text())
    assert "negative_prompt_embeds='<tensor (1, 16, 32)>'" in record["recipe"]
    assert record["applied"]["attention_calls_steered"] == 4  # 2 steps x 2 blocks, one batched forward per step
