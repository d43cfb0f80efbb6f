"""Steering and recording under torch.compile (attnsteer.runtime.compiled_call): the same outputs as eager steering,
no graph breaks in the hooked modules, no recompiles across steps or sessions, one graph for all blocks of a
regional compile; and the exact fallbacks (autograd, output rules) where the traced form does not apply.

Compiled with dynamo's ``aot_eager`` backend (no inductor code generation: fast, and the custom op's fake and
functionalization are exercised); ``benchmarks/compile.py`` measures the inductor build."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import attnsteer as at
from attnsteer.testing.tiny import tiny_wan

STEPS = 4
RULE = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.progress(stop=0.5))


@pytest.fixture(scope="module")
def model():
    return tiny_wan(seed=0).transformer.eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)


def run(model, inputs) -> list[torch.Tensor]:
    """STEPS forwards at decreasing timesteps, as a pipeline makes them."""
    return [model(timestep=t[None], **inputs)[0] for t in torch.linspace(999, 1, STEPS)]


def session(compiled, target, inputs, *rules, **kwargs) -> tuple[list[torch.Tensor], dict[str, int]]:
    """The outputs of one steered run and what dynamo did during it."""
    counters.clear()
    with torch.no_grad(), at.steer(target, list(rules), num_steps=STEPS, **kwargs):
        out = run(compiled, inputs)
    return out, {"graph_breaks": sum(counters["graph_break"].values()), "graphs": counters["stats"]["unique_graphs"]}


def assert_equal_runs(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how", ["whole", "regional"])
def test_steered_compiled_equals_steered_eager_without_breaks_or_recompiles(model, inputs, how):
    torch._dynamo.reset()
    if how == "whole":  # fullgraph: a graph break would raise
        compiled, target = torch.compile(model, backend="aot_eager", fullgraph=True), model
    else:
        compiled = target = copy.deepcopy(model)
        compiled.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        plain = run(model, inputs)
    eager, _ = session(model, model, inputs, RULE)
    first, counts = session(compiled, target, inputs, RULE)
    assert counts["graph_breaks"] == 0
    assert counts["graphs"] == 1  # one graph: the whole model, or one shared by both blocks
    assert_equal_runs(first, eager)
    assert float((eager[0] - plain[0]).abs().max()) > 1e-3  # the rule acted on step 0 ...
    torch.testing.assert_close(eager[-1], plain[-1], atol=1e-5, rtol=1e-5)  # ... and was off at the last step
    again, counts = session(compiled, target, inputs, RULE)  # a new session, new hooks: the graph is reused
    assert counts["graphs"] == 0
    assert_equal_runs(again, eager)
    other = at.Rule(at.frames.generated, at.frames.reference, at.bias(-3.0))  # another plan, on at every step
    changed, counts = session(compiled, target, inputs, other)
    assert counts["graphs"] == 0
    assert_equal_runs(changed, session(model, model, inputs, other)[0])


def test_recording_under_compile_equals_eager(model, inputs):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    records = []
    for m in (model, compiled):
        with torch.no_grad(), at.steer(model, RULE, num_steps=STEPS), at.inspect(model, num_steps=STEPS) as rec:
            run(m, inputs)
        records.append(rec)
    eager, traced = records
    assert eager.steps == traced.steps == list(range(STEPS))
    for step in range(STEPS):
        torch.testing.assert_close(traced.frame_map(steps=[step]), eager.frame_map(steps=[step]), atol=1e-5, rtol=0)


def test_output_rules_and_autograd_fall_back_to_the_eager_hook(model, inputs):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    rule = at.Rule(at.frames.generated, at.video, at.output_scale(1.5))
    eager, _ = session(model, model, inputs, rule)
    traced, counts = session(compiled, model, inputs, rule)
    assert counts["graph_breaks"] > 0  # the hooked modules ran under compiler.disable
    assert_equal_runs(traced, eager)
    x = {**inputs, "hidden_states": inputs["hidden_states"].clone().requires_grad_()}
    grads = []
    for m in (model, compiled):
        with at.steer(model, RULE, num_steps=STEPS):
            sum(o.sum() for o in run(m, x)).backward()
        grads.append(x["hidden_states"].grad)
        x["hidden_states"].grad = None
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_a_traced_module_that_bypasses_sdpa_raises(model, inputs, monkeypatch):
    """Under compile, as in eager mode: an active rule on a module that never calls F.sdpa raises, naming it."""
    import diffusers.models.transformers.transformer_wan as wan

    def by_hand(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=None, parallel_config=None,
                **_):
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        return ((q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v).transpose(1, 2)

    torch._dynamo.reset()
    monkeypatch.setattr(wan, "dispatch_attention_fn", by_hand)
    compiled = torch.compile(model, backend="aot_eager")
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0))
    with pytest.raises(at.SteeringError, match=r"blocks\.0\.attn1.*without calling.*scaled_dot_product_attention"):
        session(compiled, model, inputs, rule)
    torch._dynamo.reset()


def test_a_regionally_compiled_pipeline_equals_eager_hunyuan():
    """A whole pipeline run (guidance, joint text+video attention in diffusers' ``Attention`` class, four kinds of
    repeated blocks): the regionally compiled transformer gives the eager steered latents, without graph breaks."""
    from attnsteer.testing.tiny import build_tiny, test_image

    torch._dynamo.reset()
    pipe, call_kwargs = build_tiny("tiny-hunyuan")
    kwargs = call_kwargs(output_type="latent", num_inference_steps=2, image=test_image())

    def latents() -> torch.Tensor:
        with torch.no_grad(), at.steer(pipe, at.recipes.dymos(gamma=1.0, stop=0.5)):
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    eager = latents()
    pipe.transformer.compile_repeated_blocks(backend="aot_eager")
    counters.clear()
    compiled = latents()
    assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] > 0
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_a_compiled_deep_copy_of_a_hooked_model_runs_unsteered(model, inputs):
    """As in eager mode: a copy made inside a session, compiled whole or by region, runs like the plain model,
    and the original stays steered."""
    torch._dynamo.reset()
    with torch.no_grad():
        plain = run(model, inputs)
        with at.steer(model, RULE, num_steps=STEPS):
            steered = run(model, inputs)
            whole = torch.compile(copy.deepcopy(model), backend="aot_eager")
            regional = copy.deepcopy(model)
            regional.compile_repeated_blocks(backend="aot_eager")
            copies = run(whole, inputs), run(regional, inputs)
            again = run(model, inputs)
    for out in copies:
        assert_equal_runs(out, plain)
    assert_equal_runs(again, steered)
    torch._dynamo.reset()


@pytest.mark.parametrize("how", ["whole", "regional"])
def test_compiled_model_is_freed_after_del_and_dynamo_reset(inputs, how):
    """Nothing process-wide (the custom op's marker index, the plan caches) keeps the model, an attention module's
    marker parameter or a rule's score function alive once the session ended and dynamo forgot its graphs."""
    import gc
    import weakref

    torch._dynamo.reset()
    model = tiny_wan(seed=0).transformer.eval()
    if how == "whole":
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    else:
        compiled = model
        compiled.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
    calls = []

    def lower(s, b, h, q_idx, kv_idx, owner=model):  # the closure holds the model
        calls.append(1)
        return s - 1.0

    rule = at.Rule(at.frames.generated, at.frames.reference, at.score_mod(lower))
    _, counts = session(compiled, model, inputs, RULE, rule)
    assert counts["graph_breaks"] == 0 and calls  # traced, and the custom op ran the score function
    refs = [weakref.ref(x) for x in (model, lower, next(model.blocks[0].attn1.parameters()))]
    del model, compiled, lower, rule
    torch._dynamo.reset()
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_a_compiled_call_finds_its_module_after_the_parameters_move_or_are_replaced(inputs):
    """The custom op finds its module by the module's first parameter (compiled_call.hook_of): after the parameters'
    storage moves (what ``module.to`` does) and after a first parameter is replaced by a new one, steered compiled
    runs still equal steered eager ones."""
    torch._dynamo.reset()
    model = tiny_wan(seed=0).transformer.eval()
    compiled = torch.compile(model, backend="aot_eager")
    first, _ = session(compiled, model, inputs, RULE)
    assert_equal_runs(first, session(model, model, inputs, RULE)[0])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.data = parameter.data.clone()  # new storage, the same Parameter objects
        block = model.blocks[0].attn1.to_q
        block.weight = torch.nn.Parameter(block.weight.detach() * 1.5)  # a new first parameter of attn1
    moved, _ = session(compiled, model, inputs, RULE)
    assert_equal_runs(moved, session(model, model, inputs, RULE)[0])
    assert float((moved[0] - first[0]).abs().max()) > 1e-4  # the new weight is the one used
