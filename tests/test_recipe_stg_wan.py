"""STG with the STG authors' own Wan 2.1 formula, against a re-implementation written here without attnsteer:

    cfg = uncond + w (cond - uncond);  pred = cfg + s (cfg - perturbed)

where ``perturbed`` is the unconditional forward (the negative prompt) rerun with block k returning its input. The
reference computes ``perturbed`` in a forward hook on the transformer and applies the formula to the pipeline's own
CFG result where it reaches the scheduler (``scheduler.step``), so it shares nothing with attnsteer's folding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer import recipes
from attnsteer.testing.tiny_parts import prompt_embedding
from dense_reference import hook_state

pytestmark = pytest.mark.usefixtures("one_thread")


def authors_wan_reference(pipe, run, scale, block, negative_embeds):
    transformer = pipe.transformer
    state = {"perturbing": False, "perturbed": None}

    def skip(module, args, kwargs, output):
        return (args[0] if args else kwargs["hidden_states"]) if state["perturbing"] else output

    def perturb_after_uncond(module, args, kwargs, output):
        if state["perturbing"] or not torch.equal(kwargs["encoder_hidden_states"],
                                                  negative_embeds.to(kwargs["encoder_hidden_states"].dtype)):
            return output
        state["perturbing"] = True
        try:
            state["perturbed"] = module(*args, **kwargs)[0]
        finally:
            state["perturbing"] = False
        return output

    scheduler_step = pipe.scheduler.step

    def step(model_output, t, sample, *args, **kwargs):
        cfg = model_output
        return scheduler_step(cfg + scale * (cfg - state["perturbed"].to(cfg.dtype)), t, sample, *args, **kwargs)

    handles = [transformer.blocks[block].register_forward_hook(skip, with_kwargs=True),
               transformer.register_forward_hook(perturb_after_uncond, with_kwargs=True)]
    pipe.scheduler.step = step
    try:
        return run()
    finally:
        del pipe.scheduler.step
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def wan():
    from attnsteer.testing.tiny import test_image, tiny_wan, wan_call_kwargs

    pipe = tiny_wan().to(torch.float64)

    def run(**overrides):
        kwargs = wan_call_kwargs(num_inference_steps=2, output_type="latent", negative_prompt="blurry", **overrides)
        return np.asarray(pipe(image=test_image(), generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    return pipe, run


def test_stg_authors_wan_formula_matches_the_authors_pipeline(wan):
    pipe, run = wan
    expected = authors_wan_reference(pipe, run, 2.0, 1, prompt_embedding("blurry", 512, 32))
    before = hook_state(pipe.transformer)
    with at.steer(pipe, recipes.stg(mode="R", layers="1", scale=2.0, formula="authors-wan")):
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    with at.steer(pipe, recipes.stg(mode="R", layers="1", scale=2.0)):
        generic = run()
    assert not np.allclose(got, generic, atol=1e-3)  # the two formulas differ
    assert hook_state(pipe.transformer)[1:] == before[1:]


def test_stg_authors_wan_formula_without_cfg_is_refused(wan):
    pipe, run = wan
    with pytest.raises(at.SteeringError, match=r"authors-wan.*needs classifier-free guidance"):
        with at.steer(pipe, recipes.stg(mode="R", layers="1", formula="authors-wan")):
            run(guidance_scale=1.0)
