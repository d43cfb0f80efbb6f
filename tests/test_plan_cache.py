"""The plan cache (``plan.build_plan`` is memoized, and so are ``execute._on_device`` and ``execute._score_fn``):
its key holds every input that changes a plan, and cached runs equal uncached runs exactly."""

from __future__ import annotations

import attrs
import pytest
import torch

import attnsteer as at
from attnsteer.runtime import execute
from attnsteer.runtime.hooks import CONTROLLER_ATTRIBUTE
from attnsteer.runtime.plan import build_plan
from attnsteer.language.selectors import SelectionContext
from attnsteer.testing.tiny import tiny_wan

LAYOUT = at.TokenLayout(num_frames=3, tokens_per_frame=2)
RULE = at.Rule(at.frames[1:], at.frames[0], at.bias(-0.5), branch="cond")


def plan_of(rules, layout=LAYOUT, branches=("uncond", "cond"), batch=2, heads=2, ctx=None, **kwargs):
    ctx = ctx or SelectionContext(layout)
    return (tuple((r, ctx) for r in rules), layout, branches, batch, heads), kwargs


def assert_same_plan(a, b) -> None:
    """Two plans that run identically: same path, rules, scale, and bitwise equal tensors."""
    assert (a.path, a.applied, a.scale_factor, a.head_offset) == (b.path, b.applied, b.scale_factor, b.head_offset)
    for name in ("cells", "bias", "cell_groups", "cell_sizes"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), name
    assert [s.rule for s in a.scored] == [s.rule for s in b.scored]
    assert [s.rule for s in a.identity] == [s.rule for s in b.identity]


VARIANTS = {
    "base": plan_of([RULE]),
    "branches": plan_of([RULE], branches=("cond", "uncond")),
    "layout": plan_of([RULE], layout=at.TokenLayout(num_frames=4, tokens_per_frame=2)),
    "rule": plan_of([at.Rule(at.frames[1:], at.frames[0], at.bias(-1.5), branch="cond")]),
    "rules": plan_of([RULE, at.Rule(at.frames[2], at.frames[1], at.bias(-1.0))]),
    "batch": plan_of([RULE], branches=("uncond", "uncond", "cond", "cond"), batch=4),
    "heads": plan_of([at.Rule(at.frames[1:], at.frames[0], at.bias(-0.5), heads=[1])], heads=3),
    "rows": plan_of([RULE], ctx=SelectionContext(LAYOUT, rows=(True, False))),
    "query frames": plan_of([RULE], ctx=SelectionContext(LAYOUT, query_frames=frozenset({2}))),
    "want mass": plan_of([RULE], want_mass=True),
    "head offset": plan_of([at.Rule(at.frames[1:], at.frames[0], at.bias(-0.5), heads=[1])], heads=1,
                           head_offset=1, total_heads=2),
}


def test_every_input_of_a_plan_is_in_its_cache_key():
    build_plan.cache_clear()
    plans = {name: build_plan(*args, **kwargs) for name, (args, kwargs) in VARIANTS.items()}
    assert len({id(p) for p in plans.values()}) == len(plans)  # each change gave its own plan
    for name, (args, kwargs) in VARIANTS.items():
        assert build_plan(*args, **kwargs) is plans[name]  # the same inputs hit the cache ...
        assert_same_plan(plans[name], build_plan.__wrapped__(*args, **kwargs))  # ... and it holds the uncached plan
    assert plans["base"].path == "grouped" and plans["rows"].path == "plain"  # the session's row is not the rule's
    assert not torch.equal(plans["base"].bias, plans["rule"].bias)


def test_equal_inputs_share_a_plan_across_layers_and_steps():
    build_plan.cache_clear()
    args, kwargs = VARIANTS["base"]
    copy = (tuple((attrs.evolve(r), attrs.evolve(c)) for r, c in args[0]), *args[1:])
    assert build_plan(*args, **kwargs) is build_plan(*copy, **kwargs)
    assert build_plan.cache_info().hits == 1


@pytest.mark.parametrize("recipe", [
    [at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.steps(0, 2))],
    [at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.progress(stop=0.5)),
     at.Rule(at.frames[2], at.frames[1], at.block(), when=at.steps(1, 4))],
])
def test_cached_runs_equal_uncached_runs_exactly(recipe):
    """Rules switching on and off across steps: a run with warm caches (shared by its layers and steps; a session's
    end clears them) equals a run that clears every cache before each forward, bit for bit."""
    model = tiny_wan(seed=0).transformer.eval()
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                  encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)

    hits = []

    def run(clear: bool) -> list[torch.Tensor]:
        outs = []
        with torch.no_grad(), at.steer(model, recipe, num_steps=4):
            for t in torch.linspace(999, 1, 4):
                if clear:
                    for cached in (build_plan, execute._on_device, execute._score_fn):
                        cached.cache_clear()
                    model.__dict__[CONTROLLER_ATTRIBUTE].call_cache.clear()  # the prepared calls (runtime.call_cache)
                outs.append(model(timestep=t[None], **inputs)[0])
            hits.append(build_plan.cache_info().hits)
        return outs

    uncached, warm, cached = run(True), run(False), run(False)
    assert hits[1] > 0 and hits[2] > 0
    for a, b, c in zip(uncached, warm, cached, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
