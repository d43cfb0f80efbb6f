"""PAG and STG against their authors' combination, written here without attnsteer:

    pred = uncond + w (cond - uncond) + s (cond - perturbed)

The reference runs the same pipeline with plain torch hooks: a forward hook on the transformer
recomputes each conditional forward with the perturbation (SDPA replaced by V in the chosen
layers for PAG / STG-A, the chosen blocks returning their input for STG-R) and folds ``s (cond -
perturbed)`` into the unconditional prediction, so that the pipeline's own CFG produces the formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer import recipes
from dense_reference import hook_state

pytestmark = pytest.mark.usefixtures("one_thread")


class ValueAttention(TorchFunctionMode):
    """Inside the hooked modules, every self-attention SDPA call returns V (identity attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.active:
            named = dict(zip(("query", "key", "value"), args), **kwargs)
            if named["query"].shape[-2] == named["key"].shape[-2]:
                return named["value"]
        return func(*args, **kwargs)


def reference(pipe, run, scale, guidance, perturb_modules=(), skip_blocks=(), batched=False):
    """Run with the authors' combination; ``perturb_modules`` get identity attention, ``skip_blocks``
    return their input, in the perturbed forward only."""
    transformer = pipe.transformer
    mode, state = ValueAttention(), {"perturbing": False, "calls": 0, "cond": None, "perturbed": None}
    handles = []
    for module in perturb_modules:
        handles.append(module.register_forward_pre_hook(lambda m, a: setattr(mode, "active", state["perturbing"])))
        handles.append(module.register_forward_hook(lambda m, a, o: setattr(mode, "active", False)))
    for block in skip_blocks:
        def skip(module, args, kwargs, output):
            if not state["perturbing"]:
                return output
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if not isinstance(output, tuple):
                return hidden
            return hidden, kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        handles.append(block.register_forward_hook(skip, with_kwargs=True))

    def combine(module, args, kwargs, output):
        if state["perturbing"]:
            return output
        state["perturbing"] = True
        with mode:
            perturbed = module(*args, **kwargs)[0]
        state["perturbing"] = False
        pred = output[0]
        if guidance is None:  # no classifier-free guidance: pred = cond + s(cond - perturbed)
            return (pred + scale * (pred - perturbed),) + tuple(output[1:])
        if batched:  # one forward of [uncond, cond]: pred = uncond + w(cond - uncond) + s(cond - perturbed)
            uncond, cond = pred.chunk(2)
            fold = scale * (cond - perturbed.chunk(2)[1]) / (1 - guidance)  # u' with u' + w(c - u') = the formula
            return (torch.cat([uncond + fold, cond]),) + tuple(output[1:])
        state["calls"] += 1
        if state["calls"] % 2 == 1:  # Wan, HunyuanVideo: the conditional forward comes first in each step
            state["cond"], state["perturbed"] = pred, perturbed
            return output
        fold = scale * (state["cond"] - state["perturbed"]) / (1 - guidance)
        return (pred + fold,) + tuple(output[1:])

    handles.append(transformer.register_forward_hook(combine, with_kwargs=True))
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def wan(wan_pipe, image):
    from attnsteer.testing.tiny import wan_call_kwargs

    def run():
        kwargs = wan_call_kwargs(num_inference_steps=2, output_type="latent")
        return np.asarray(wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return wan_pipe, run


@pytest.fixture(scope="module")
def cog():
    from attnsteer.testing.tiny import cogvideox_call_kwargs, test_image, tiny_cogvideox

    pipe = tiny_cogvideox()

    def run():
        kwargs = cogvideox_call_kwargs(num_inference_steps=2, output_type="latent")
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


def test_pag_on_wan_matches_the_authors_combination(wan):
    pipe, run = wan
    vanilla = run()
    before = hook_state(pipe.transformer)  # after a run: the pipeline's cache context leaves its own registry
    expected = reference(pipe, run, 3.0, 5.0, perturb_modules=[pipe.transformer.blocks[1].attn1])
    with at.steer(pipe, recipes.pag(scale=3.0, layers="1")):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got, vanilla, atol=1e-4)  # the guidance changes the video
    after = hook_state(pipe.transformer)  # the root gains diffusers' own cache-context registry in a run
    assert after[1:] == before[1:] and after[0][2:] == before[0][2:]
    with at.steer(pipe, recipes.pag(scale=0.0, layers="1")):
        np.testing.assert_array_equal(run(), vanilla)  # scale 0: no perturbed forward at all


def test_stg_r_on_batched_cogvideox_skips_the_block(cog):
    pipe, run = cog
    expected = reference(pipe, run, 1.0, 6.0, skip_blocks=[pipe.transformer.transformer_blocks[1]], batched=True)
    with at.steer(pipe, recipes.stg(mode="R", layers="1")):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_stg_a_on_batched_cogvideox_uses_identity_attention(cog):
    pipe, run = cog
    expected = reference(pipe, run, 1.0, 6.0, perturb_modules=[pipe.transformer.transformer_blocks[0].attn1],
                         batched=True)
    with at.steer(pipe, recipes.stg(mode="A", layers="0")):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def hunyuan():
    from attnsteer.testing.tiny import hunyuan_call_kwargs, test_image, tiny_hunyuan

    pipe = tiny_hunyuan()

    def run(**overrides):
        kwargs = hunyuan_call_kwargs(num_inference_steps=2, output_type="latent", **overrides)
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


def test_pag_on_hunyuan_with_true_cfg_needs_no_guidance_scale(hunyuan):
    """The I2V pipeline keeps ``true_cfg_scale`` local (its stored ``guidance_scale`` is the embedded
    guidance): the combination must not depend on reading w."""
    pipe, run = hunyuan
    layer = pipe.transformer.single_transformer_blocks[0].attn  # self-attention layer 1
    expected = reference(pipe, lambda: run(true_cfg_scale=3.0, guidance_scale=1.0), 2.0, 3.0,
                         perturb_modules=[layer])
    with at.steer(pipe, recipes.pag(scale=2.0, layers="1")):
        got = run(true_cfg_scale=3.0, guidance_scale=1.0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_stg_r_on_hunyuan_with_embedded_guidance(hunyuan):
    """The STG authors' HunyuanVideo setup: embedded (distilled) guidance 6, no CFG, pred + s (pred - perturbed)."""
    pipe, run = hunyuan
    expected = reference(pipe, lambda: run(true_cfg_scale=1.0, guidance_scale=6.0), 1.0, None,
                         skip_blocks=[pipe.transformer.transformer_blocks[0]])
    with at.steer(pipe, recipes.stg(mode="R", layers="0")):
        got = run(true_cfg_scale=1.0, guidance_scale=6.0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_bad_parameters_are_refused(wan):
    pipe, _ = wan
    with pytest.raises(at.ConfigError, match="mode"):
        recipes.stg(mode="B")
    with pytest.raises(at.ConfigError, match="scale"):
        recipes.pag(scale=-1)
    with pytest.raises(at.SteeringError, match=r"skip_blocks \[9\] out of range"):
        with at.steer(pipe, recipes.stg(mode="R", layers="9")):
            pass


def test_ltx_guidance_rescale_is_refused_not_approximated():
    """LTX rescales the guided prediction by the std of the conditional one, which the shift has changed."""
    from attnsteer.testing.tiny import build_tiny, test_image

    pipe, call_kwargs = build_tiny("tiny-ltx")
    kwargs = call_kwargs(output_type="latent", num_inference_steps=2, guidance_rescale=0.7)
    before = hook_state(pipe.transformer)
    with pytest.raises(at.SteeringError, match=r"guidance_rescale=0.7.*guidance_rescale=0"):
        with at.steer(pipe, recipes.stg(mode="A", layers="0")):
            pipe(image=test_image(32), generator=torch.Generator().manual_seed(0), **kwargs)
    after = hook_state(pipe.transformer)  # the root gains diffusers' own cache-context registry in a run
    assert after[1:] == before[1:] and after[0][2:] == before[0][2:]


def test_adaptive_scale_needs_a_timestep():
    from attnsteer.language.guidance import PerturbedGuidance
    from attnsteer.language.schedules import StepInfo

    guidance = PerturbedGuidance(scale=2.0, adaptive_scale=0.01)
    assert guidance.scale_at(StepInfo(step=0, num_steps=2, timestep=900.0)) == pytest.approx(1.0)
    with pytest.raises(at.SteeringError, match=r"adaptive_scale=0.01.*has none"):
        guidance.scale_at(StepInfo(step=0, num_steps=2, timestep=None))
    with pytest.raises(at.ConfigError, match=r"adaptive_scale=\.\.\.\) must be >= 0"):
        PerturbedGuidance(scale=2.0, adaptive_scale=-1)
