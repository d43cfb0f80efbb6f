"""Per-call overhead: in the steady state a steered attention call derives nothing that did not change. Its plan,
batch rows, applied rules, error subject and the grouped kernel's checked groups and key classes are built once per
step class (and layout, branches, shape, dtype, device), counted here with patched counters rather than timed; and
the prepared grouped call (kernels.prepared) gives grouped_attention's output bit for bit."""

from __future__ import annotations

import collections
import contextlib
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import fully_blocked, problems

import attnsteer as at
from attnsteer import errors
from attnsteer.errors import KernelError
from attnsteer.kernels import grouped, grouped_attention
from attnsteer.kernels.prepared import prepare_groups, prepared_attention
from attnsteer.runtime import call_cache, controller, module_call
from attnsteer.runtime.hooks import CONTROLLER_ATTRIBUTE
from attnsteer.testing.tiny import build_tiny, test_image, tiny_wan

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=60, deadline=None)
@given(p=problems(), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), chunked=st.booleans())
def test_prepared_grouped_call_equals_grouped_attention_bit_for_bit(p, dtype, chunked):
    q, k, v = (p[name].to(dtype) for name in ("q", "k", "v"))
    b, h = q.shape[:2]
    bias = p["bias"]
    if bias is not None and bias.dim() == 2:
        bias = bias[None].expand(b, *bias.shape)  # the plans' form: every row and head explicit ...
    if bias is not None and bias.dim() == 3:
        bias = bias[:, None].expand(b, h, *bias.shape[1:])  # ... [B, H, Gq, Gk]
    counts = dict(num_q_groups=p["num_q_groups"], num_k_groups=p["num_k_groups"])
    chunks = patch.multiple(grouped, QUERY_BLOCK=2, BLOCKS_PER_THREAD=1, WHOLE_BYTES=0) if chunked else \
        contextlib.nullcontext()
    with chunks:
        try:
            expected = grouped_attention(q, k, v, p["q_groups"], p["k_groups"], bias=bias, scale=p["scale"],
                                         attn_mask=p["attn_mask"], **counts)[0]
        except KernelError:
            assert fully_blocked(p)
            prepared = prepare_groups(p["q_groups"], p["k_groups"], bias, b, h, **counts)
            with pytest.raises(KernelError, match="every key blocked"):
                prepared_attention(q, k, v, prepared, p["scale"], p["attn_mask"])
            return
        prepared = prepare_groups(p["q_groups"], p["k_groups"], bias, b, h, **counts)
        got = prepared_attention(q, k, v, prepared, p["scale"], p["attn_mask"])
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_a_prepared_grouped_call_refuses_bad_groups_and_other_shapes():
    groups = torch.tensor([0, 0, 1, 1])
    with pytest.raises(KernelError, match="group ids in"):
        prepare_groups(groups, groups, torch.zeros(1, 1, 1, 1), 1, 1, num_q_groups=1, num_k_groups=1)
    with pytest.raises(KernelError, match="NaN or"):
        prepare_groups(groups, groups, torch.full((1, 1, 2, 2), float("nan")), 1, 1)
    prepared = prepare_groups(groups, groups, torch.tensor([[[[0.0, -1.0], [0.0, 0.0]]]]), 1, 1)
    q = torch.randn(1, 1, 5, 8)
    with pytest.raises(KernelError, match="4 queries and 4 keys"):
        prepared_attention(q, q, q, prepared)


class Counters:
    """Call counts of the functions that derive a call's plan and kernel inputs, sampled after every forward."""

    DERIVING = {
        "plans built": (module_call, "build_plan"),
        "calls prepared": (module_call.ModuleCall, "_prepare"),
        "groups checked": (module_call, "prepare_groups"),
        "key classes split": (grouped, "_key_classes"),
        "call classes built": (call_cache.CallClass, "of"),
        "rules described": (errors, "describe_rule"),
        "module subjects described": (module_call, "describe_rule"),
        "controller subjects described": (controller, "subject"),
    }

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.counts: collections.Counter = collections.Counter()
        for name, (owner, attribute) in {**self.DERIVING, "steered calls": (module_call, "run_plan")}.items():
            stack.enter_context(patch.object(owner, attribute, self._counting(name, getattr(owner, attribute))))
        self.after_forward: list[tuple[float, collections.Counter]] = []

    def _counting(self, name, fn):
        def counted(*args, **kwargs):
            self.counts[name] += 1
            return fn(*args, **kwargs)
        return counted

    def hook(self, module, args, kwargs, output):
        timestep = kwargs.get("timestep")
        self.after_forward.append((float(timestep.flatten()[0]), collections.Counter(self.counts)))

    def per_step(self) -> list[collections.Counter]:
        """The counts during each denoising step (its forwards: one per guidance branch), in step order."""
        steps: dict[float, collections.Counter] = {}
        before = collections.Counter()
        for timestep, after in self.after_forward:
            steps.setdefault(timestep, collections.Counter()).update(after - before)
            before = after
        return list(steps.values())


def test_after_the_first_step_a_steered_pipeline_call_derives_nothing():
    """DyMoS on the tiny Wan I2V pipeline with guidance, four steps: the plans, prepared calls, checked groups, key
    classes and error subjects are all built in the first step; every later step steers its calls with none built."""
    pipe, kw = build_tiny("tiny-wan")
    pipe.set_progress_bar_config(disable=True)
    args = kw(prompt="a cat", output_type="latent", num_inference_steps=4, image=test_image())
    with contextlib.ExitStack() as stack:
        counters = Counters(stack)
        handle = pipe.transformer.register_forward_hook(counters.hook, with_kwargs=True)
        stack.callback(handle.remove)
        with at.steer(pipe, at.recipes.dymos(gamma=0.6, stop=1.0)) as session:
            pipe(generator=torch.Generator().manual_seed(0), **args)
    steps = counters.per_step()
    assert len(steps) == 4
    first, later = steps[0], steps[1:]
    assert first["calls prepared"] > 0 and first["groups checked"] > 0 and first["call classes built"] > 0
    for step in later:
        assert step["steered calls"] == first["steered calls"] > 0  # the same calls are steered at every step ...
        assert {name: step[name] for name in Counters.DERIVING} == dict.fromkeys(Counters.DERIVING, 0)  # ... from caches
    assert session.summary()["rules"][0]["steps"] == [0, 1, 2, 3]


@pytest.mark.parametrize("branch", ["cond", "all"])
def test_a_rule_of_one_guidance_branch_leaves_the_other_branchs_forwards_unhandled(branch):
    """DyMoS on the cond branch only (the recipe's): the uncond forwards' attention modules run as they would
    unsteered, with no module call made (so nothing prepared) for them; with branch="all" both branches' are
    handled. Either way the rule applies at every step."""
    pipe, kw = build_tiny("tiny-wan")
    pipe.set_progress_bar_config(disable=True)
    args = kw(prompt="a cat", output_type="latent", num_inference_steps=2, image=test_image())
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-0.6), branch=branch,
                   when=at.steps(0, 2))
    handled = collections.Counter()
    made = controller.ModuleCall

    def counting(*a, **k):
        call = made(*a, **k)
        handled[call.state.branches] += 1
        return call

    with patch.object(controller, "ModuleCall", counting), at.steer(pipe, rule) as session:
        pipe(generator=torch.Generator().manual_seed(0), **args)
    calls = 2 * 2  # two self-attention layers, two steps
    assert handled == ({("cond",): calls} if branch == "cond" else {("cond",): calls, ("uncond",): calls})
    assert session.summary()["rules"][0]["steps"] == [0, 1]


def test_a_change_of_step_class_builds_once_and_a_return_builds_nothing():
    """Two rules, one at every step and one at steps 1 and 2 only, on a bare transformer: prepared calls are built at
    the first forward of each set of active rules (steps 0 and 1) and none at steps 2 and 3, which meet a set seen
    before; every forward's output equals the same session's with the call cache cleared before it, bit for bit."""
    model = tiny_wan(seed=0).transformer.eval()
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                  encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)
    rules = [at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0)),
             at.Rule(at.frames[2], at.frames[1], at.bias(-2.0), when=at.steps(1, 3))]

    def run(clear: bool) -> tuple[list[torch.Tensor], list[int]]:
        outs, built = [], []
        with torch.no_grad(), contextlib.ExitStack() as stack, at.steer(model, rules, num_steps=4):
            counters = Counters(stack)
            for t in torch.linspace(999, 1, 4):
                if clear:
                    model.__dict__[CONTROLLER_ATTRIBUTE].call_cache.clear()
                before = counters.counts["calls prepared"]
                outs.append(model(timestep=t[None], **inputs)[0])
                built.append(counters.counts["calls prepared"] - before)
        return outs, built

    cached, built = run(False)
    uncached, rebuilt = run(True)
    assert built[0] > 0 and built[1] > 0 and built[2:] == [0, 0]
    assert rebuilt == [built[0], built[1], built[1], built[0]]
    for a, b in zip(cached, uncached, strict=True):
        assert torch.equal(a, b)


class _Forwards(torch.nn.Module):
    """forward signatures of every kind, for the binding of forward inputs."""

    def forward(self, hidden_states, timestep=None, /, encoder_hidden_states=None, *, attention_kwargs=None):
        return hidden_states


class _Kwargs(torch.nn.Module):
    def forward(self, hidden_states, timestep=None, **extra):
        return hidden_states


@pytest.mark.parametrize("model", [_Forwards(), _Kwargs()], ids=["named", "var-keyword"])
@pytest.mark.parametrize("args, kwargs", [
    ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1,), {"encoder_hidden_states": 3, "attention_kwargs": {}}),
    ((), {"attention_kwargs": 4}), ((1, 2), {"extra_name": 5}),
])
def test_forward_inputs_bind_as_the_signature_binds_them(model, args, kwargs):
    import inspect

    from attnsteer.contract.adapter import bind_forward_inputs

    signature = inspect.signature(type(model).forward)
    try:
        expected = dict(signature.bind_partial(model, *args, **kwargs).arguments)
    except TypeError as exc:
        with pytest.raises(TypeError, match=str(exc).split("'")[0]):
            bind_forward_inputs(model, args, kwargs)
        return
    expected.pop("self")
    got = bind_forward_inputs(model, args, kwargs)
    assert got == expected and list(got) == list(expected)  # the same names, values and order


def test_token_layouts_from_the_same_numbers_are_one_object_and_unhashable_grids_still_build():
    from attnsteer.plugins.wan import WanAdapter

    adapter = WanAdapter()
    first, again = adapter.token_layout(3, (4, 5)), adapter.token_layout(3, (4, 5))
    assert first is again and first == at.TokenLayout(num_frames=3, tokens_per_frame=20, grid=(4, 5))
    assert adapter.token_layout(3, [4, 5]) == first
