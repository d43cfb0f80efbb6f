"""Issue 22 §2: four results that were wrong, each against an independent dense float64 computation.

The references below build the full logit matrix in float64 from q and k, apply the rules in the
order given with plain tensor indexing, and take the softmax; they use none of attnsteer's plans or
kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.language.selectors import SelectionContext
from attnsteer.runtime.execute import run_plan
from attnsteer.runtime.plan import build_plan

LAYOUT = at.TokenLayout(num_frames=3, tokens_per_frame=4)  # frame f holds tokens 4f .. 4f + 3
F32_EPS = torch.finfo(torch.float32).eps


def qkv(magnitude: float = 1.0, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, LAYOUT.seq_len, 8, generator=g) * magnitude for _ in range(3)]


def run(rules, q, k, v, want_mass=False):
    ctx = SelectionContext(LAYOUT)
    plan = build_plan(tuple((r, ctx) for r in rules), LAYOUT, None, q.shape[0], q.shape[1], want_mass=want_mass)
    return plan, run_plan(plan, q, k, v, LAYOUT, None, None, want_mass)[0]


def dense(q, k, v, edit):
    """softmax(edit(q k^T / sqrt(d))) @ v in float64; ``edit(s) -> s`` on the [B, H, N, N] logits."""
    s = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return edit(s).softmax(-1) @ v.double()


def f32_tolerance(v: torch.Tensor, ulps: float = 64) -> float:
    """A float32 tolerance from the dtype and the outputs' magnitude (a weighted mean of v's rows)."""
    return ulps * F32_EPS * float(v.abs().max())


# 1. a uniform logit scale folded into SDPA's scale keeps the rule order

def _plus_one_later_frames_to_frame_0(s: torch.Tensor) -> torch.Tensor:
    s = s.clone()
    s[..., 4:, :4] += 1.0
    return s


SCALES = {
    "logit_scale(2)": (at.logit_scale(2.0), 2.0),
    "temperature(0.5)": (at.temperature(0.5), 2.0),
    "proportional(3)": (at.proportional(train_tokens=3), math.sqrt(math.log(12) / math.log(3))),
}
FIRST = {
    "bias": at.bias(1.0),
    "score_mod": at.score_mod(lambda s, b, h, q, k: s + 1.0, "plus_one"),
    "query_bias": at.query_bias(torch.ones(12)),
}


@pytest.mark.parametrize("first", FIRST)
@pytest.mark.parametrize("scale", SCALES)
def test_a_uniform_logit_scale_after_a_bias_scales_the_bias_too(first, scale):
    transform, factor = SCALES[scale]
    rules = [at.Rule(at.frames[1:], at.frames[0], FIRST[first], branch="all"),
             at.Rule(at.tokens, at.tokens, transform, branch="all")]
    q, k, v = qkv()
    _, out = run(rules, q, k, v)
    expected = dense(q, k, v, lambda s: _plus_one_later_frames_to_frame_0(s) * factor)  # factor * (s + 1)
    assert (out.double() - expected).abs().max() < f32_tolerance(v)
    folded_wrongly = dense(q, k, v, lambda s: _plus_one_later_frames_to_frame_0(s * factor))  # factor * s + 1
    assert (out.double() - folded_wrongly).abs().max() > 1e-2


@pytest.mark.parametrize("scale", SCALES)
def test_a_uniform_logit_scale_before_a_bias_leaves_the_bias_unscaled(scale):
    transform, factor = SCALES[scale]
    rules = [at.Rule(at.tokens, at.tokens, transform, branch="all"),
             at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="all")]
    q, k, v = qkv()
    plan, out = run(rules, q, k, v)
    assert plan.path == "grouped" and plan.scale_factor == pytest.approx(factor)
    expected = dense(q, k, v, lambda s: _plus_one_later_frames_to_frame_0(s * factor))
    assert (out.double() - expected).abs().max() < f32_tolerance(v)


def test_a_folded_logit_scale_keeps_the_fused_path_for_constant_biases():
    rules = [at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="all"),
             at.Rule(at.tokens, at.tokens, at.logit_scale(2.0), branch="all")]
    q, k, v = qkv()
    plan, out = run(rules, q, k, v)
    assert plan.path == "grouped" and plan.scale_factor == 2.0
    expected = dense(q, k, v, lambda s: _plus_one_later_frames_to_frame_0(s) * 2.0)
    assert (out.double() - expected).abs().max() < f32_tolerance(v)


def test_a_logit_scale_after_a_score_function_applies_in_order_with_the_score_function_after_it():
    rules = [at.Rule(at.tokens, at.tokens, at.score_mod(lambda s, b, h, q, k: s.abs(), "abs"), branch="all"),
             at.Rule(at.tokens, at.tokens, at.logit_scale(-1.5), branch="all"),
             at.Rule(at.tokens, at.tokens, at.score_mod(lambda s, b, h, q, k: s.clamp_min(-1.0), "clamp"),
                     branch="all")]
    q, k, v = qkv()
    _, out = run(rules, q, k, v)
    expected = dense(q, k, v, lambda s: (s.abs() * -1.5).clamp_min(-1.0))
    assert (out.double() - expected).abs().max() < f32_tolerance(v)


def test_a_score_function_after_a_folded_logit_scale_sees_the_scaled_biased_logits():
    rules = [at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="all"),
             at.Rule(at.tokens, at.tokens, at.logit_scale(2.0), branch="all"),
             at.Rule(at.tokens, at.tokens, at.score_mod(lambda s, b, h, q, k: s.clamp_max(1.5), "clamp"), branch="all")]
    q, k, v = qkv()
    plan, out = run(rules, q, k, v)
    assert plan.path == "scored" and plan.scale_factor == 2.0
    expected = dense(q, k, v, lambda s: (_plus_one_later_frames_to_frame_0(s) * 2.0).clamp_max(1.5))
    assert (out.double() - expected).abs().max() < f32_tolerance(v)


# 3. the differentiable score path keeps the logits' digits under a huge bias

@pytest.mark.parametrize("value", [1e6, 1e10, -1e10])
@pytest.mark.parametrize("pairs", [None, at.token_distance(0)], ids=["grouped", "elementwise-pairs"])
def test_a_huge_bias_under_autograd_matches_float64_in_float32(value, pairs):
    q, k, v = qkv(magnitude=3.0)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    rule = at.Rule(at.tokens, at.frames[1], at.bias(value), branch="all", pairs=pairs)
    _, out = run([rule], *leaves)

    added = torch.zeros(12, 12, dtype=torch.float64)
    added[:, 4:8] = value
    if pairs is not None:
        added.fill_diagonal_(0.0)
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    expected = dense(*ref_leaves, lambda s: s + added)
    assert (out.double() - expected).abs().max() < f32_tolerance(v)

    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.double() * weights).sum().backward()
    (expected * weights).sum().backward()
    for got, want in zip(leaves, ref_leaves):
        assert (got.grad.double() - want.grad).abs().max() < f32_tolerance(v) * float(weights.abs().max()) * 12


def test_a_huge_bias_under_autograd_gives_the_same_output_as_without():
    q, k, v = qkv(magnitude=3.0)
    rule = at.Rule(at.frames[2], at.frames[0] | at.frames[1], at.bias(1e6), branch="all")
    with torch.no_grad():
        _, plain = run([rule], q, k, v)
    _, graded = run([rule], *(t.clone().requires_grad_(True) for t in (q, k, v)))
    assert (graded.detach() - plain).abs().max() < f32_tolerance(v)


# 2. batched sweeps on LTX-Video condition pipelines: refused, as they cannot equal their sequential runs

def _ltx_condition_kwargs():
    from attnsteer.testing.tiny import build_tiny, test_image

    pipe, call_kwargs = build_tiny("tiny-ltx-condition")
    return pipe, call_kwargs(prompt="a cat", output_type="latent", num_inference_steps=2, image=test_image())


def test_batched_runs_on_ltx_condition_pipelines_are_refused_before_generating():
    from attnsteer.sweeps.batched import batch_call_kwargs, run_batched

    pipe, kwargs = _ltx_condition_kwargs()
    calls = []

    def generate(n):
        calls.append(n)
        return list(pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0)).frames)

    recipes = [at.recipes.dymos(gamma=0.0), at.recipes.dymos(gamma=0.0)]
    with pytest.raises(at.ConfigError, match=r"ltx family's LTXConditionPipeline: .*first generator"):
        run_batched(pipe, recipes, generate, chunk=2)
    assert calls == []
    # the cause: without steering, item 1 of a plain batched call is not its sequential run
    sequential = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
    batched = pipe(**batch_call_kwargs(pipe, kwargs, 2, seed=0)).frames
    assert (batched[1] - sequential).abs().max() > 0.1


def test_ltx_condition_items_one_per_call_equal_their_sequential_runs():
    from attnsteer.sweeps.batched import batch_call_kwargs, run_batched

    pipe, kwargs = _ltx_condition_kwargs()
    recipes = [at.recipes.dymos(gamma=g, stop=0.5) for g in (0.0, 1.0)]
    batched = run_batched(pipe, recipes, lambda n: list(pipe(**batch_call_kwargs(pipe, kwargs, n, seed=0)).frames),
                          chunk=1, record=False)
    for recipe, (latent, _) in zip(recipes, batched):
        with at.steer(pipe, recipe):
            sequential = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames[0]
        assert (latent.double() - sequential.double()).abs().max() <= f32_tolerance(sequential)
    assert (batched[0][0] - batched[1][0]).abs().max() > 1e-3  # the gammas really differ


def test_cli_sweep_batch_on_ltx_condition_exits_2_naming_the_family(tmp_path, capsys):
    from attnsteer.cli import main

    args = ["sweep", "--model", "tiny-ltx-condition", "--gamma", "0,1", "--stop", "0.5", "--steps", "2",
            "--format", "gif", "--batch", "2", "--out", str(tmp_path / "bat")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ltx family's LTXConditionPipeline" in err[0]
    assert not (tmp_path / "bat" / "gamma_0.npz").exists()


# 4. nested sessions with perturbed guidance: each keeps its own perturbed branch, the shifts add

class _ValueAttention(TorchFunctionMode):
    """While ``active``, every self-attention SDPA call returns V (identity attention)."""

    active = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.active:
            named = dict(zip(("query", "key", "value"), args), **kwargs)
            if named["query"].shape[-2] == named["key"].shape[-2]:
                return named["value"]
        return func(*args, **kwargs)


def _nested_guidance_reference(pipe, run, guidance: float, perturbations):
    """Wan (the conditional forward, then the unconditional one, per step) under
    ``uncond + w (cond - uncond) + sum_i s_i (cond - perturbed_i)``, with plain torch hooks: perturbation i
    (``(s_i, identity modules, skipped blocks)``) recomputes each conditional forward, and the sum is folded into
    the unconditional prediction as ``u' = u + sum / (1 - w)``, so that the pipeline's own CFG gives the formula."""
    mode, state = _ValueAttention(), {"perturbing": None, "calls": 0, "fold": None}
    handles = []
    for i, (_, modules, blocks) in enumerate(perturbations):
        for module in modules:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, i=i: setattr(mode, "active", state["perturbing"] == i)))
            handles.append(module.register_forward_hook(lambda m, a, o: setattr(mode, "active", False)))
        for block in blocks:
            def skip(module, args, kwargs, output, i=i):
                if state["perturbing"] != i:
                    return output
                return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            handles.append(block.register_forward_hook(skip, with_kwargs=True))

    def combine(module, args, kwargs, output):
        if state["perturbing"] is not None:
            return output
        state["calls"] += 1
        pred = output[0]
        if state["calls"] % 2 == 0:  # the unconditional forward of the step
            return (pred + state["fold"],) + tuple(output[1:])
        total = 0.0
        for i, (scale, _, _) in enumerate(perturbations):
            state["perturbing"] = i
            with mode:
                perturbed = module(*args, **kwargs)[0]
            state["perturbing"] = None
            total = total + scale * (pred - perturbed)
        state["fold"] = total / (1 - guidance)
        return output

    handles.append(pipe.transformer.register_forward_hook(combine, with_kwargs=True))
    try:
        return run()
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def wan_run(wan_pipe, image):
    from attnsteer.testing.tiny import wan_call_kwargs

    kwargs = wan_call_kwargs(num_inference_steps=2, output_type="latent")

    def run():
        return wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0]

    return wan_pipe, run, kwargs["guidance_scale"]


def test_nested_pag_sessions_each_add_their_own_perturbed_branch(wan_run):
    pipe, run, w = wan_run
    blocks = pipe.transformer.blocks
    expected = _nested_guidance_reference(pipe, run, w, [(2.0, [blocks[0].attn1], []), (5.0, [blocks[1].attn1], [])])
    with at.steer(pipe, at.recipes.pag(scale=2.0, layers="0")), at.steer(pipe, at.recipes.pag(scale=5.0, layers="1")):
        got = run()
    tolerance = f32_tolerance(expected) * (1 + w + 2.0 + 5.0)
    assert (got.double() - expected.double()).abs().max() < tolerance
    with at.steer(pipe, at.recipes.pag(scale=2.0, layers="0,1")):
        merged = run()  # the old result: one perturbed branch with both layers, the inner scale dropped
    assert (got - merged).abs().max() > 1e-2


def test_an_inner_stg_r_under_an_outer_pag_skips_its_block_in_its_own_branch(wan_run):
    pipe, run, w = wan_run
    blocks = pipe.transformer.blocks
    expected = _nested_guidance_reference(pipe, run, w, [(2.0, [blocks[0].attn1], []), (1.5, [], [blocks[1]])])
    with at.steer(pipe, at.recipes.pag(scale=2.0, layers="0")):
        with at.steer(pipe, at.recipes.stg(mode="R", scale=1.5, layers="1")):
            got = run()
        outer_only = run()
    tolerance = f32_tolerance(expected) * (1 + w + 2.0 + 1.5)
    assert (got.double() - expected.double()).abs().max() < tolerance
    assert (got - outer_only).abs().max() > 1e-2  # the inner session changes the result
