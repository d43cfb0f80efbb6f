"""diffusers' attention dispatcher (attnsteer.runtime.dispatch_routing): a session steers and records attention that
goes through ``dispatch_attention_fn`` whatever its backend (``flex`` on this CPU; a float64 backend registered in
diffusers' registry for the duration of a test stands in for the GPU ones); calls no rule changes run the user's
backend itself, bit for bit; leaving the session puts the dispatcher back; what cannot be reproduced exactly raises.

Steered results are compared with the same rules on the ``native`` backend, float64 pipelines at 1e-10 (the merge by
log-sum-exp and the backends' own reduction orders differ by a few float64 ulps; a rule moves the latents by > 1e-3)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from attnsteer.runtime import dispatch_routing, flash_routing
from attnsteer.runtime.hooks import SDPAInterceptor
from attnsteer.testing.tiny import build_tiny, test_image
from dense_reference import as_float64

dispatch = pytest.importorskip("diffusers.models.attention_dispatch")

TOL = dict(atol=1e-10, rtol=1e-10)
STEPS = 2
RULES = {
    "dymos": lambda: at.recipes.dymos(gamma=1.0, stop=0.5),
    "box": lambda: at.Rule(at.frames.generated, at.box(0.0, 0.0, 0.5, 0.5, frames=0), at.bias(-2.0)),
    "pag": lambda: at.recipes.pag(scale=2.0, layers="1"),
}
TEST_BACKEND = "xformers"  # an enum member whose package is absent here: the float64 stand-in takes its place
LSE_BACKEND = "flash"  # the same stand-in where attnsteer uses the log-sum-exp (xformers is known to have none)


def float64_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                      enable_gqa: bool = False, return_lse: bool = False, _parallel_config=None):
    """Softmax attention of [B, N, H, D] tensors computed in float64 (masks read as the native backend reads them);
    ``return_lse`` returns (out, lse [B, N, H]) like diffusers' LSE-returning backends (float32, as theirs, or float64
    for float64 inputs, which no GPU backend takes: the float64 pipelines of these tests compare at float64's
    precision)."""
    if dropout_p or is_causal or _parallel_config is not None:
        raise NotImplementedError("the float64 test backend computes full attention without dropout only")
    groups = query.shape[2] // key.shape[2]
    key, value = key.repeat_interleave(groups, dim=2), value.repeat_interleave(groups, dim=2)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bqhd,bkhd->bhqk", query.double(), key.double()) * scale
    if attn_mask is not None:
        mask = attn_mask[:, None, None, :] if attn_mask.ndim == 2 else attn_mask
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(logits - lse[..., None]), value.double()).to(query.dtype)
    lse = lse.transpose(1, 2).to(torch.promote_types(query.dtype, torch.float32))
    return (out, lse) if return_lse else out


@contextlib.contextmanager
def registered_backend(name: str = TEST_BACKEND) -> Iterator[list[tuple[int, ...]]]:
    """The float64 backend registered as ``name`` in diffusers' registry while the block runs; yields the shapes of
    the queries it was called on."""
    registry, member = dispatch._AttentionBackendRegistry, dispatch.AttentionBackendName(name)
    tables = (registry._backends, registry._constraints, registry._supported_arg_names)
    saved = [table.get(member) for table in tables]
    calls: list[tuple[int, ...]] = []

    def backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                return_lse=False, _parallel_config=None):
        calls.append(tuple(query.shape))
        return float64_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                                 _parallel_config)

    registry.register(member, constraints=[])(backend)
    try:
        yield calls
    finally:
        for table, old in zip(tables, saved):
            if old is None:
                table.pop(member, None)
            else:
                table[member] = old


def use_backend(transformer: torch.nn.Module, name: str) -> None:
    """Every attention processor of ``transformer`` on backend ``name`` (set directly: the registry checks for the
    real package of a registered stand-in)."""
    member = dispatch.AttentionBackendName(name)
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = member


@pytest.fixture(autouse=True)
def active_backend_restored():
    """``set_attention_backend`` also sets diffusers' process-wide active backend: put it back after each test."""
    registry = dispatch._AttentionBackendRegistry
    before = registry._active_backend
    yield
    registry.set_active_backend(before)


def float64_pipeline(name: str) -> tuple[object, dict]:
    """The tiny pipeline ``name`` in float64 and its call arguments (given embeddings in float64 too: the pipelines
    take their latents' dtype from them)."""
    pipe, call_kwargs = build_tiny(name)
    kwargs = call_kwargs(output_type="latent", num_inference_steps=STEPS, image=test_image())
    kwargs = {key: as_float64(value) for key, value in kwargs.items()}
    return pipe.to(torch.float64), kwargs


@pytest.fixture(scope="module")
def wan():
    pipe, kwargs = float64_pipeline("tiny-wan")

    def run() -> torch.Tensor:
        with torch.no_grad():
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    yield pipe, run
    use_backend(pipe.transformer, "native")


@pytest.fixture(scope="module")
def native(wan):
    """The steered latents and the frame map of each rule on the native backend (computed once)."""
    pipe, run = wan
    use_backend(pipe.transformer, "native")
    results = {"plain": run()}
    for name, make in RULES.items():
        with at.steer(pipe, make()):
            results[name] = run()
    with at.inspect(pipe) as rec:
        run()
    results["frame_map"] = rec.frame_map()
    return results


def steered(pipe, run, rules) -> tuple[torch.Tensor, dict]:
    with at.steer(pipe, rules) as steering:
        out = run()
    return out, steering.summary()


def assert_dispatcher_restored() -> None:
    from diffusers.models.transformers import transformer_wan

    assert not getattr(dispatch.dispatch_attention_fn, "_attnsteer_router", False)
    assert transformer_wan.dispatch_attention_fn is dispatch.dispatch_attention_fn


@pytest.mark.parametrize("rule", sorted(RULES))
def test_flex_backend_is_steered_like_native_on_wan(wan, native, rule):
    pipe, run = wan
    pipe.transformer.set_attention_backend("flex")
    try:
        out, summary = steered(pipe, run, RULES[rule]())
    finally:
        use_backend(pipe.transformer, "native")
    assert float((native[rule] - native["plain"]).abs().max()) > 1e-3  # the rule acts
    torch.testing.assert_close(out, native[rule], **TOL)
    assert set(summary["steered_calls_by_backend"]) == {"flex"}
    assert sum(summary["steered_calls_by_backend"].values()) == summary["attention_calls_steered"] > 0
    # flex computed every steered call itself (per key class with its log-sum-exp); PAG's perturbed forward has every
    # query attend only to itself, which needs no attention kernel (attnsteer returns V)
    route = "attnsteer" if rule == "pag" else "backend"
    assert summary["steered_calls_by_route"] == {"flex": {route: summary["attention_calls_steered"]}}
    assert_dispatcher_restored()


def test_flex_backend_frame_maps_equal_native_on_wan(wan, native):
    pipe, run = wan
    pipe.transformer.set_attention_backend("flex")
    try:
        with at.inspect(pipe) as rec:
            run()
    finally:
        use_backend(pipe.transformer, "native")
    torch.testing.assert_close(rec.frame_map(), native["frame_map"], **TOL)


def test_zero_rule_and_empty_session_on_flex_equal_unsteered_flex_bit_for_bit(wan):
    pipe, run = wan
    pipe.transformer.set_attention_backend("flex")
    try:
        plain = run()
        zero, summary = steered(pipe, run, at.recipes.dymos(gamma=0.0, stop=1.0))
        never = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0), when=at.steps(start=99))
        with pytest.warns(at.AttnsteerWarning, match="never applied"), at.steer(pipe, never):
            off = run()
    finally:
        use_backend(pipe.transformer, "native")
    assert summary["attention_calls_steered"] > 0  # the zero rule was applied ...
    assert torch.equal(zero, plain) and torch.equal(off, plain)  # ... and flex computed every call
    assert_dispatcher_restored()


def test_registered_backend_runs_every_call_no_rule_changes(wan, native):
    """DyMoS is on in the conditional forward of step 0 only: those calls run attnsteer's kernel, every other call the
    user's (registered) backend; the latents equal DyMoS on native."""
    pipe, run = wan
    with registered_backend() as calls:
        use_backend(pipe.transformer, TEST_BACKEND)
        try:
            plain = run()
            unsteered_calls = len(calls)
            out, summary = steered(pipe, run, RULES["dymos"]())
            zero, _ = steered(pipe, run, at.recipes.dymos(gamma=0.0, stop=1.0))
        finally:
            use_backend(pipe.transformer, "native")
    steered_calls = summary["steered_calls_by_backend"][TEST_BACKEND]
    assert steered_calls == summary["attention_calls_steered"] > 0
    # the session's run: its own calls minus those attnsteer answered (the cross-attention calls are not hooked)
    assert len(calls) - 2 * unsteered_calls == unsteered_calls - steered_calls
    torch.testing.assert_close(out, native["dymos"], **TOL)
    assert torch.equal(zero, plain)
    assert_dispatcher_restored()


@pytest.mark.parametrize("backend", [TEST_BACKEND, LSE_BACKEND])
@pytest.mark.parametrize("rule", ["box", "pag"])
def test_registered_backends_take_a_box_rule_and_pag_like_native_on_wan(wan, native, backend, rule):
    """The float64 stand-in as a backend without the log-sum-exp (xformers: attnsteer's kernel for steered calls) and
    as one with it (flash: the box rule's key classes run on it); PAG's perturbed queries attend only to themselves
    (attnsteer returns V, no attention to compute)."""
    pipe, run = wan
    with on_backend(pipe.transformer, backend) as calls:
        plain = run()
        out, summary = steered(pipe, run, RULES[rule]())
        zero, _ = steered(pipe, run, at.recipes.dymos(gamma=0.0, stop=1.0))
    assert float((native[rule] - native["plain"]).abs().max()) > 1e-3  # the rule acts
    torch.testing.assert_close(out, native[rule], **TOL)
    assert torch.equal(zero, plain)
    route = "backend" if backend == LSE_BACKEND and rule == "box" else "attnsteer"
    assert summary["steered_calls_by_route"] == {backend: {route: summary["attention_calls_steered"]}}
    assert summary["attention_calls_steered"] > 0 and len(calls) > 0
    assert_dispatcher_restored()


@pytest.mark.parametrize("backend", ["flex", TEST_BACKEND, LSE_BACKEND])
def test_nag_second_context_on_other_backends_equals_nag_on_native(wan, backend):
    """NAG's second context (the negative prompt's keys and values for the cross-attention's queries) runs through
    the dispatcher like the real context: on every backend the latents equal NAG on native."""
    from attnsteer.testing.tiny_parts import prompt_embedding

    pipe, run = wan
    make = lambda: at.recipes.nag(scale=3.0, negative_prompt_embeds=prompt_embedding("blurry", 512, 32).double())
    with at.steer(pipe, make()):
        expected = run()
    with on_backend(pipe.transformer, backend):
        plain = run()
        with at.steer(pipe, make()):
            out = run()
    assert float((expected - plain).abs().max()) > 1e-3  # NAG acts
    torch.testing.assert_close(out, expected, **TOL)
    assert_dispatcher_restored()


def test_registered_backend_without_lse_records_frame_maps_like_native_on_wan(wan, native):
    pipe, run = wan
    with on_backend(pipe.transformer, TEST_BACKEND):
        with at.inspect(pipe) as rec:
            run()
    torch.testing.assert_close(rec.frame_map(), native["frame_map"], **TOL)


def test_dispatcher_is_put_back_after_an_exception(wan):
    pipe, run = wan
    from diffusers.models.transformers import transformer_wan

    original = dispatch.dispatch_attention_fn
    with pytest.raises(RuntimeError, match="boom"), at.steer(pipe, RULES["dymos"]()):
        assert getattr(transformer_wan.dispatch_attention_fn, "_attnsteer_router", False)
        raise RuntimeError("boom")
    assert dispatch.dispatch_attention_fn is original and transformer_wan.dispatch_attention_fn is original


def routed_call(backend: str, **arguments) -> torch.Tensor:
    """One dispatcher call through the router inside a (stand-in) steered forward whose interceptor answers SDPA
    plainly."""
    router = dispatch_routing.router_of(dispatch.dispatch_attention_fn)
    with SDPAInterceptor(F.scaled_dot_product_attention), flash_routing.steered_forward("rule in module 'm'"):
        return router(backend=backend, **arguments)


def qkv(heads_kv: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return dict(query=torch.randn(2, 7, 4, 8, generator=gen, dtype=torch.float64),
                key=torch.randn(2, 5, heads_kv, 8, generator=gen, dtype=torch.float64),
                value=torch.randn(2, 5, heads_kv, 8, generator=gen, dtype=torch.float64))


def test_routed_call_with_key_mask_and_grouped_heads_equals_the_float64_backend():
    tensors = qkv(heads_kv=2)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    with registered_backend():
        expected = dispatch.dispatch_attention_fn(**tensors, attn_mask=mask, enable_gqa=True, backend=TEST_BACKEND)
        got = routed_call(TEST_BACKEND, **tensors, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("arguments, match", [
    (dict(attention_kwargs={"return_lse": True}), "attention_kwargs.*return_lse"),
    (dict(parallel_config=object()), "parallel_config"),
    (dict(attn_mask=object()), "object mask"),
])
def test_routed_calls_attnsteer_cannot_reproduce_raise_naming_why(arguments, match):
    with registered_backend(), pytest.raises(at.SteeringError, match=rf"rule in module 'm'.*{TEST_BACKEND}.*{match}"):
        routed_call(TEST_BACKEND, **qkv(heads_kv=4), **arguments)


def test_router_outside_a_steered_forward_is_the_dispatcher_itself():
    tensors = qkv(heads_kv=4)
    with registered_backend() as calls:
        router = dispatch_routing.router_of(dispatch.dispatch_attention_fn)
        out = router(**tensors, backend=TEST_BACKEND)
    assert len(calls) == 1
    assert torch.equal(out, float64_attention(**tensors))
    assert router is dispatch_routing.router_of(dispatch.dispatch_attention_fn)  # one router: compiled graphs reuse it


def test_no_module_keeps_the_router_after_the_session(wan):
    pipe, run = wan
    with at.steer(pipe, RULES["dymos"]()):
        pass
    leftovers = [name for name, module in list(sys.modules.items())
                 if isinstance(getattr(module, "__dict__", None), dict)
                 and any(getattr(value, "_attnsteer_router", False) is True for value in list(vars(module).values())
                         if callable(value) and not isinstance(value, type))]
    assert leftovers == []


# --- other families: HunyuanVideo (dispatcher, padded text masked as keys), CogVideoX (calls SDPA directly) ------


@contextlib.contextmanager
def on_backend(transformer: torch.nn.Module, backend: str) -> Iterator[list[tuple[int, ...]]]:
    """``transformer``'s processors on ``backend`` (``flex``, or the registered float64 stand-in) inside the block;
    yields the query shapes the stand-in was called on (empty for ``flex``)."""
    with registered_backend(backend) if backend in (TEST_BACKEND, LSE_BACKEND) else contextlib.nullcontext([]) as calls:
        use_backend(transformer, backend)
        try:
            yield calls
        finally:
            use_backend(transformer, "native")


@pytest.fixture(scope="module", params=["tiny-hunyuan", "tiny-cogvideox"])
def family(request):
    pipe, kwargs = float64_pipeline(request.param)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames

    with at.steer(pipe, RULES["dymos"]()):
        native = run()
    with at.inspect(pipe) as rec:
        run()
    return request.param, pipe, run, native, rec.frame_map()


@pytest.mark.parametrize("backend", ["flex", TEST_BACKEND, LSE_BACKEND])
def test_other_families_are_steered_and_recorded_like_native(family, backend):
    name, pipe, run, native, frame_map = family
    with on_backend(pipe.transformer, backend):
        plain = run()
        out, summary = steered(pipe, run, RULES["dymos"]())
        zero, _ = steered(pipe, run, at.recipes.dymos(gamma=0.0, stop=1.0))
        with at.inspect(pipe) as rec:
            run()
    torch.testing.assert_close(out, native, **TOL)
    torch.testing.assert_close(rec.frame_map(), frame_map, **TOL)
    assert torch.equal(zero, plain)
    # CogVideoX's processor calls SDPA itself, whatever the backend set: its steered calls bypass the dispatcher
    expected = dispatch_routing.DIRECT if name == "tiny-cogvideox" else backend
    assert set(summary["steered_calls_by_backend"]) == {expected}
    # flash refuses masks: HunyuanVideo's masked calls (padded text) run attnsteer's kernel on it
    lse_here = backend == "flex" or (backend == LSE_BACKEND and name != "tiny-hunyuan")
    route = "backend" if lse_here and expected == backend else "attnsteer"
    assert summary["steered_calls_by_route"] == {expected: {route: summary["attention_calls_steered"]}}
    assert_dispatcher_restored()


@pytest.fixture(scope="module")
def family_native(family):
    """The box rule and PAG of RULES on ``family``'s native backend (computed once per family)."""
    _, pipe, run, _, _ = family
    results = {"plain": run()}
    for rule in ("box", "pag"):
        with at.steer(pipe, RULES[rule]()):
            results[rule] = run()
    return results


@pytest.mark.parametrize("backend", ["flex", TEST_BACKEND, LSE_BACKEND])
@pytest.mark.parametrize("rule", ["box", "pag"])
def test_other_families_take_a_box_rule_and_pag_like_native(family, family_native, backend, rule):
    name, pipe, run, _, _ = family
    with on_backend(pipe.transformer, backend):
        out, summary = steered(pipe, run, RULES[rule]())
    assert float((family_native[rule] - family_native["plain"]).abs().max()) > 1e-3  # the rule acts
    torch.testing.assert_close(out, family_native[rule], **TOL)
    expected = dispatch_routing.DIRECT if name == "tiny-cogvideox" else backend
    assert set(summary["steered_calls_by_backend"]) == {expected}
    lse_here = backend == "flex" or (backend == LSE_BACKEND and name != "tiny-hunyuan")
    route = "backend" if lse_here and expected == backend and rule == "box" else "attnsteer"
    assert summary["steered_calls_by_route"] == {expected: {route: summary["attention_calls_steered"]}}
    assert_dispatcher_restored()
