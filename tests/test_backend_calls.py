"""Steered calls on the user's own attention backend (attnsteer.runtime.backend_calls): key classes run on a backend
that returns the log-sum-exp and are merged exactly; ``flex`` is called as torch's ``flex_attention`` (its diffusers
wrapper crashes on ``return_lse``) and takes score functions as a ``score_mod``; Sage's smoothing of K keeps one
shift for every class; backends without the log-sum-exp run attnsteer's kernel for steered calls; the session's
summary says which did what.

Stand-ins registered in diffusers' registry for the duration of a test compute in float64: kernel-level results are
compared with a dense float64 computation (1e-10), pipeline results with the same rules on ``native`` (float64
pipelines, 1e-10 as in tests/test_backends.py)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch

import attnsteer as at
from attnsteer.kernels import grouped_attention
from attnsteer.kernels.backends import class_kernel
from attnsteer.runtime import backend_calls
from test_backends import RULES, TOL, active_backend_restored, native, steered, use_backend, wan  # noqa: F401

dispatch = pytest.importorskip("diffusers.models.attention_dispatch")

EXACT = dict(atol=1e-10, rtol=1e-10)  # float64 on both sides


def dense_logits(query, key, scale, attn_mask):
    """float64 logits [B, H, Nq, Nk] of [B, N, H, D] tensors (masks read as the native backend reads them)."""
    logits = torch.einsum("bqhd,bkhd->bhqk", query.double(), key.double()) * scale
    if attn_mask is not None:
        mask = attn_mask[:, None, None, :] if attn_mask.ndim == 2 else attn_mask
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    return logits


def lse_backend(log: list[bool]):
    """A backend like flash-attn's: float64 attention, ``return_lse`` gives (out, lse [B, H, N]) in float64."""

    def backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                return_lse=False, _parallel_config=None):
        log.append(return_lse)
        scale = query.shape[-1] ** -0.5 if scale is None else scale
        logits = dense_logits(query, key, scale, attn_mask)
        lse = torch.logsumexp(logits, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", torch.exp(logits - lse[..., None]), value.double()).to(query.dtype)
        return (out, lse) if return_lse else out

    return backend


def sage_like_backend(log: list[bool]):
    """A backend like Sage: refuses masks, smooths K by subtracting its mean over the keys before the logits (which
    leaves the output as it is) and returns the log-sum-exp of the smoothed logits, [B, H, N]."""

    def backend(query, key, value, attn_mask=None, is_causal=False, scale=None, return_lse=False, _parallel_config=None):
        if attn_mask is not None:
            raise ValueError("`attn_mask` is not supported for sage attention")
        log.append(return_lse)
        smoothed = key.double() - key.double().mean(dim=1, keepdim=True)
        return lse_backend([])(query, smoothed, value, None, scale=scale, return_lse=return_lse)

    return backend


def no_lse_backend(log: list[bool]):
    """A backend whose function takes no ``return_lse`` (as a library without the log-sum-exp)."""

    def backend(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
                _parallel_config=None):
        log.append(False)
        return lse_backend([])(query, key, value, attn_mask, scale=scale)

    return backend


@contextlib.contextmanager
def registered(name: str, make: Callable[[list[bool]], Callable]) -> Iterator[list[bool]]:
    """``make(log)`` registered as backend ``name`` while the block runs; yields ``log``: per call, whether it asked
    for the log-sum-exp."""
    registry, member = dispatch._AttentionBackendRegistry, dispatch.AttentionBackendName(name)
    tables = (registry._backends, registry._constraints, registry._supported_arg_names)
    saved = [table.get(member) for table in tables]
    log: list[bool] = []
    registry.register(member, constraints=[])(make(log))
    try:
        yield log
    finally:
        for table, old in zip(tables, saved):
            if old is None:
                table.pop(member, None)
            else:
                table[member] = old


def grouped_inputs(batch: int = 2, heads: int = 3, n: int = 12, d: int = 8, frames: int = 3):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(batch, heads, n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    k = k + 3.0  # keys far from zero mean: Sage's smoothing moves the logits a lot
    groups = torch.arange(frames).repeat_interleave(n // frames)
    # dyadic values: the kernel holds the bias in float32 (exact for these), the rest in float64
    bias = torch.tensor([[0.0, -1.5, 0.75], [2.0, 0.0, -0.25], [-1.0, 0.375, 0.0]], dtype=torch.float64)
    return q, k, v, groups, bias


def dense_grouped(q, k, v, groups, bias, scale, mask=None):
    """(out, mass [B, H, G, G]) of softmax(q k^T scale + bias[g_q, g_k] + mask) v, densely in float64."""
    logits = (q @ k.transpose(-1, -2)) * scale + bias[groups][:, groups]
    if mask is not None:
        logits = logits + mask
    p = torch.softmax(logits, dim=-1)
    onehot = torch.nn.functional.one_hot(groups).double()
    mass = (onehot.T @ (p @ onehot)) / onehot.sum(0)[:, None]
    return p @ v, mass


def test_key_classes_on_an_lse_backend_equal_a_dense_float64_reference():
    q, k, v, groups, bias = grouped_inputs()
    mask = torch.zeros(2, 1, 1, 12, dtype=torch.float64)
    mask[1, ..., 2:5] = float("-inf")  # a key mask on batch row 1, across the classes' boundaries
    scale = 0.3
    with registered("flash", lse_backend) as log, class_kernel(backend_calls.dispatcher_lse(
            dispatch.dispatch_attention_fn, "flash")):
        out, mass = grouped_attention(q, k, v, groups, groups, bias=bias, scale=scale, attn_mask=mask, return_mass=True)
    expected, expected_mass = dense_grouped(q, k, v, groups, bias, scale, mask)
    assert log == [True] * 3  # one call per key class, each asking for the log-sum-exp
    torch.testing.assert_close(out, expected, **EXACT)
    torch.testing.assert_close(mass, expected_mass.float(), atol=1e-6, rtol=1e-6)  # the kernel's mass is float32


@pytest.mark.parametrize("even_out_means", [True, False])
def test_sage_smoothing_keeps_one_shift_for_every_key_class(even_out_means):
    """Per-class calls on a Sage-like backend subtract per-class means of K; moving each class to the call's mean
    keeps the merge exact. Without it the classes' log-sum-exps are shifted apart and the result is wrong."""
    q, k, v, groups, bias = grouped_inputs()
    scale = 0.3
    mean = k.mean(-2, keepdim=True) if even_out_means else None
    with registered("sage", sage_like_backend), class_kernel(backend_calls.dispatcher_lse(
            dispatch.dispatch_attention_fn, "sage", mean)):
        out, mass = grouped_attention(q, k, v, groups, groups, bias=bias, scale=scale, return_mass=True)
    expected, expected_mass = dense_grouped(q, k, v, groups, bias, scale)
    if even_out_means:
        torch.testing.assert_close(out, expected, **EXACT)
        torch.testing.assert_close(mass, expected_mass.float(), atol=1e-6, rtol=1e-6)
    else:
        assert float((out - expected).abs().max()) > 1e-2


def test_block_path_classes_on_a_sage_like_backend_equal_a_dense_float64_reference():
    """The block decomposition's fused calls on a Sage-like backend: blocks of rows that straddle groups, two or three
    key classes each with per-row biases (and one group blocked for one block), merged exactly."""
    from attnsteer.kernels.blocked import KeyClass, QueryBlock, blocked_attention

    q, k, v, groups, bias = grouped_inputs()
    scale = 0.3
    full = bias[groups][:, groups].clone()  # [Nq, Nk]
    full[:6, 8:] = float("-inf")  # rows 0-5 see no key of group 2
    spans = [slice(0, 4), slice(4, 8), slice(8, 12)]  # the key groups
    blocks = []
    for rows in (slice(0, 6), slice(6, 12)):
        classes = tuple(KeyClass(keys, full[rows, keys.start].float()) for keys in spans
                        if not bool(torch.isneginf(full[rows, keys.start]).all()))
        blocks.append(QueryBlock(rows, classes, None))
    with registered("sage", sage_like_backend) as log, class_kernel(backend_calls.dispatcher_lse(
            dispatch.dispatch_attention_fn, "sage", k.mean(-2, keepdim=True))):
        out = blocked_attention(q, k, v, blocks, scale=scale)
    assert log == [True] * 5  # 2 classes for the first block, 3 for the second
    torch.testing.assert_close(out, torch.softmax(q @ k.transpose(-1, -2) * scale + full, -1) @ v, **EXACT)


def test_flex_in_diffusers_crashes_on_return_lse_so_steered_flex_calls_torch_directly():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=gen) for _ in range(3))
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'permute'"):
        dispatch.dispatch_attention_fn(q, k, v, attention_kwargs={"return_lse": True}, backend="flex")
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))
    out, lse = backend_calls.flex_lse(qh, kh, vh, 0.5)
    logits = (qh @ kh.transpose(-1, -2)) * 0.5
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), **EXACT)
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ vh, **EXACT)


def on_native(pipe, run, rules) -> torch.Tensor:
    """The latents of ``rules`` steered on the ``native`` backend: what every other backend must equal."""
    use_backend(pipe.transformer, "native")
    with at.steer(pipe, rules):
        return run()


def on_standin(pipe, run, name: str, make, rules) -> tuple[torch.Tensor, dict, list[bool]]:
    """``rules`` steered on backend ``name``: the stand-in ``make`` registered as it, or (``make`` None) diffusers' own
    backend of that name (``flex``: nothing logged)."""
    with registered(name, make) if make is not None else contextlib.nullcontext([]) as log:
        use_backend(pipe.transformer, name)
        try:
            out, summary = steered(pipe, run, rules)
        finally:
            use_backend(pipe.transformer, "native")
    return out, summary, log


@pytest.mark.parametrize("name, make", [("flash", lse_backend), ("sage", sage_like_backend)])
@pytest.mark.parametrize("rule", ["dymos", "box"])
def test_group_constant_rules_run_on_an_lse_backend_like_native_on_wan(wan, native, name, make, rule):
    pipe, run = wan
    out, summary, log = on_standin(pipe, run, name, make, RULES[rule]())
    torch.testing.assert_close(out, native[rule], **TOL)
    steered_calls = summary["attention_calls_steered"]
    assert summary["steered_calls_by_route"] == {name: {"backend": steered_calls}} and steered_calls > 0
    assert log.count(True) >= 2 * steered_calls  # every steered call: one backend call per key class (>= 2)


def test_frame_maps_come_from_the_lse_backend_on_wan(wan, native):
    pipe, run = wan
    with registered("flash", lse_backend) as log:
        use_backend(pipe.transformer, "flash")
        try:
            with at.inspect(pipe) as rec:
                run()
        finally:
            use_backend(pipe.transformer, "native")
    assert log.count(True) > 0 and log.count(False) > 0  # self-attention recorded on it; cross-attention plain
    torch.testing.assert_close(rec.frame_map(), native["frame_map"], **TOL)


@pytest.mark.parametrize("name, make", [("xformers", lse_backend), ("flash", no_lse_backend)])
def test_backends_without_lse_run_attnsteer_for_steered_calls_and_the_summary_says_so(wan, native, name, make):
    """xformers is listed as unable to return the log-sum-exp (even a stand-in that could); a backend whose
    function takes no ``return_lse`` is treated the same."""
    pipe, run = wan
    out, summary, log = on_standin(pipe, run, name, make, RULES["dymos"]())
    torch.testing.assert_close(out, native["dymos"], **TOL)
    assert summary["steered_calls_by_route"] == {name: {"attnsteer": summary["attention_calls_steered"]}}
    assert True not in log and len(log) > 0  # the backend ran the other calls, never asked for the log-sum-exp


def test_native_family_backend_reports_attnsteer_for_steered_calls(wan, native):
    pipe, run = wan
    use_backend(pipe.transformer, "_native_math")
    try:
        out, summary = steered(pipe, run, RULES["dymos"]())
    finally:
        use_backend(pipe.transformer, "native")
    torch.testing.assert_close(out, native["dymos"], **TOL)
    assert summary["steered_calls_by_route"] == {"_native_math": {"attnsteer": summary["attention_calls_steered"]}}


def score_rule() -> at.Rule:
    """A score function (not constant per group pair): positive logits from generated to reference frames halved."""
    return at.Rule(at.frames.generated, at.frames.reference, at.scale_if_positive(0.5), when=at.steps(stop=1))


@pytest.fixture(scope="module")
def native_score(wan, native):
    pipe, run = wan
    return on_native(pipe, run, score_rule())


def test_score_rules_run_on_flex_as_its_score_mod(wan, native, native_score, monkeypatch):
    pipe, run = wan
    backend_calls._WARNED.discard("flex")
    pipe.transformer.set_attention_backend("flex")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", at.AttnsteerWarning)
            out, summary = steered(pipe, run, score_rule())
    finally:
        use_backend(pipe.transformer, "native")
    assert float((native_score - native["plain"]).abs().max()) > 1e-4  # the rule acts
    torch.testing.assert_close(out, native_score, **TOL)
    assert summary["steered_calls_by_route"] == {"flex": {"backend": summary["attention_calls_steered"]}}


def test_score_rules_elsewhere_run_attnsteers_score_path_with_one_warning_naming_the_backend(wan, native_score):
    pipe, run = wan
    backend_calls._WARNED.discard("flash")
    with registered("flash", lse_backend):
        use_backend(pipe.transformer, "flash")
        try:
            with pytest.warns(at.AttnsteerWarning, match="backend 'flash' run on attnsteer's own score path") as seen:
                first, summary = steered(pipe, run, score_rule())
                second, _ = steered(pipe, run, score_rule())
        finally:
            use_backend(pipe.transformer, "native")
    assert len([w for w in seen if "score path" in str(w.message)]) == 1
    torch.testing.assert_close(first, native_score, **TOL)
    assert torch.equal(first, second)
    assert summary["steered_calls_by_route"] == {"flash": {"attnsteer": summary["attention_calls_steered"]}}


def test_identity_attention_keeps_the_users_backend_for_the_attention_it_keeps(wan, native):
    """Generated frames attend only to themselves (STG-A-like), the reference frame's queries attend as usual: the
    backend computes the call as it was made and the identity rows replace its output."""
    pipe, run = wan
    rule = at.Rule(at.frames.generated, at.tokens, at.identity(), when=at.steps(stop=1), branch="cond")
    expected = on_native(pipe, run, rule)
    out, summary, log = on_standin(pipe, run, "flash", lse_backend, rule)
    assert float((expected - native["plain"]).abs().max()) > 1e-3  # the rule acts
    torch.testing.assert_close(out, expected, **TOL)
    assert summary["steered_calls_by_route"] == {"flash": {"backend": summary["attention_calls_steered"]}}
    assert True not in log


def seg_recipe() -> at.Recipe:
    """SEG: the queries of layers 0 and 1 blurred at the attention call (after RoPE) in a perturbed forward."""
    return at.recipes.seg(scale=3.0, sigma=2.0, layers="0,1")


@pytest.fixture(scope="module")
def native_seg(wan, native):
    pipe, run = wan
    return on_native(pipe, run, seg_recipe())


@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_query_transforms_reach_the_attention_on_a_routed_backend(wan, native, native_seg, backend):
    """A call whose only change is its transformed queries (SEG) must not be answered by the backend's call as the
    model made it (the given queries): it runs the transformed queries, equal to SEG on native."""
    pipe, run = wan
    out, summary, _ = on_standin(pipe, run, backend, lse_backend if backend == "flash" else None, seg_recipe())
    assert float((native_seg - native["plain"]).abs().max()) > 1e-3  # the blur acts
    torch.testing.assert_close(out, native_seg, **TOL)
    assert summary["steered_calls_by_route"] == {backend: {"attnsteer": summary["attention_calls_steered"]}}


@pytest.mark.parametrize("backend", ["native", "flex"])
def test_query_transforms_reach_every_pass_of_a_multi_pass_call(wan, native, native_seg, backend):
    """FreeLong with a window over every frame is plain attention (both passes attend to all keys), so FreeLong(16)
    with SEG equals SEG alone: the passes that the user's kernel would answer read the transformed queries too."""
    pipe, run = wan
    alone = on_native(pipe, run, at.recipes.freelong(window=16))
    torch.testing.assert_close(alone, native["plain"], **TOL)  # the oracle's premise
    if backend == "flex":
        pipe.transformer.set_attention_backend("flex")
    try:
        with at.steer(pipe, at.recipes.freelong(window=16), seg_recipe()):
            out = run()
    finally:
        use_backend(pipe.transformer, "native")
    torch.testing.assert_close(out, native_seg, **TOL)


def heatmap_specs() -> list:
    return [at.maps.onto(at.frames.reference), at.maps.region(at.box(0, 0, 0.5, 0.5), frame=1), at.maps.received()]


def test_heatmaps_on_flex_equal_native_on_wan(wan):
    """Onto-maps come from the per-class log-sum-exps of flex; region and received maps add attnsteer's transposed
    pass on the same numbers: every map equals the same recording on native."""
    pipe, run = wan
    recordings = {}
    for backend in ("native", "flex"):
        use_backend(pipe.transformer, backend)
        try:
            with at.inspect(pipe, maps=heatmap_specs()) as rec:
                run()
        finally:
            use_backend(pipe.transformer, "native")
        recordings[backend] = rec.maps
    for index in range(len(heatmap_specs())):
        native_map, flex_map = (recordings[b].heatmap(index) for b in ("native", "flex"))
        assert float(native_map.frames.abs().max()) > 0
        torch.testing.assert_close(flex_map.frames, native_map.frames, **TOL)


@pytest.mark.parametrize("name, make", [("flex", None), ("xformers", lse_backend)])
def test_output_transforms_leave_the_attention_call_on_the_users_backend(wan, native, name, make):
    """Enhance-A-Video scales the module's output by a readout of q and k: the attention itself is the backend's call
    as made, with or without the log-sum-exp, and the result equals the recipe on native."""
    pipe, run = wan
    expected = on_native(pipe, run, at.recipes.enhance_a_video(weight=4.0))
    out, summary, _ = on_standin(pipe, run, name, make, at.recipes.enhance_a_video(weight=4.0))
    assert float((expected - native["plain"]).abs().max()) > 1e-3  # the transform acts
    torch.testing.assert_close(out, expected, **TOL)
    assert summary["steered_calls_by_route"] == {name: {"backend": summary["attention_calls_steered"]}}


@pytest.mark.parametrize("name, make", [("flex", None), ("flash", lse_backend), ("sage", sage_like_backend)])
def test_group_constant_rules_that_block_most_logits_take_the_block_path_on_the_users_backend(wan, name, make):
    """local_window(1): every frame sees only itself, so -inf blocks hold most logits and the block decomposition
    computes the call (one block per frame, the blocked blocks skipped), its fused calls on the user's backend."""
    pipe, run = wan
    expected = on_native(pipe, run, at.recipes.local_window(window=1))
    out, summary, log = on_standin(pipe, run, name, make, at.recipes.local_window(window=1))
    assert make is None or True in log  # the stand-in was asked for the log-sum-exp
    torch.testing.assert_close(out, expected, **TOL)
    assert summary["steered_calls_by_route"] == {name: {"backend": summary["attention_calls_steered"]}}


def test_a_non_native_backend_under_compile_refuses_a_rule_naming_the_backend():
    """Traced, the dispatcher runs flex itself (attnsteer's custom op sits at SDPA): an active rule raises instead of
    being skipped."""
    from attnsteer.testing.tiny import tiny_wan

    model = tiny_wan(seed=0).transformer.eval()
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 36, 3, 8, 8, generator=gen),
                  encoder_hidden_states=torch.randn(1, 16, 32, generator=gen),
                  encoder_hidden_states_image=torch.randn(1, 5, 16, generator=gen), return_dict=False)
    torch._dynamo.reset()
    model.set_attention_backend("flex")
    compiled = torch.compile(model, backend="aot_eager")
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.0))
    try:
        with pytest.raises(at.SteeringError, match=r"blocks\.0\.attn1.*attention backend: flex"), torch.no_grad(), \
                at.steer(model, rule, num_steps=1):
            compiled(timestep=torch.tensor([999.0]), **inputs)
    finally:
        torch._dynamo.reset()


# --- real GPU backends (skipped without CUDA and the package): flash-attn, SageAttention, cuDNN ----------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")


def gpu_inputs(frames: int = 4, tokens: int = 256, heads: int = 4, dim: int = 64):
    """bf16 q, k, v [B, H, N, D] on CUDA (keys off zero mean, as Sage's smoothing expects of real models), frame
    groups and a DyMoS-like bias (-2 from later frames to frame 0, +1 to frame 1)."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, heads, frames * tokens, dim, generator=gen) for _ in range(3))
    k = k + 0.5 * torch.randn(1, heads, 1, dim, generator=gen)
    groups = torch.arange(frames).repeat_interleave(tokens).cuda()
    bias = torch.zeros(frames, frames)
    bias[1:, 0], bias[1:, 1] = -2.0, 1.0
    return (*(t.cuda().to(torch.bfloat16) for t in (q, k, v)), groups, bias.cuda())


def error_to_dense(out, q, k, v, groups, bias) -> float:
    expected, _ = dense_grouped(q.double(), k.double(), v.double(), groups, bias.double(), q.shape[-1] ** -0.5)
    return float((out.double() - expected).abs().max())


@CUDA
@pytest.mark.parametrize("name, package", [("flash", "flash_attn"), ("sage", "sageattention")])
def test_gpu_backend_runs_key_classes_as_exactly_as_its_own_plain_call(name, package):
    """Exact relative to the backend: the steered result is as far from the dense float64 oracle as the backend's
    own unsteered call is (flash: bf16 rounding; Sage: its 8-bit quantisation), while the bias moves it far more."""
    pytest.importorskip(package)
    q, k, v, groups, bias = gpu_inputs()
    key = k.transpose(1, 2)
    call = backend_calls.for_dispatch(dispatch.dispatch_attention_fn, name, name, key, None, lse_args=True)
    assert call.lse is not None
    plain = dispatch.dispatch_attention_fn(q.transpose(1, 2), key, v.transpose(1, 2), backend=name).transpose(1, 2)
    with class_kernel(call.lse):
        out, _ = grouped_attention(q, k, v, groups, groups, bias=bias)
    plain_error = error_to_dense(plain, q, k, v, groups, torch.zeros_like(bias))
    effect = float((out.double() - plain.double()).abs().max())
    assert call.ran == "backend"
    assert error_to_dense(out, q, k, v, groups, bias) <= 3 * plain_error + 1e-3 < effect / 10


@CUDA
def test_cudnn_sdpa_runs_key_classes_as_exactly_as_its_own_plain_call():
    """``_native_cudnn`` is in the native family: attnsteer's kernel runs on SDPA's cuDNN kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, groups, bias = gpu_inputs()
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            out, _ = grouped_attention(q, k, v, groups, groups, bias=bias)
    except RuntimeError as exc:  # no cuDNN attention on this GPU / build
        pytest.skip(f"cuDNN attention unavailable: {exc}")
    plain_error = error_to_dense(plain, q, k, v, groups, torch.zeros_like(bias))
    assert error_to_dense(out, q, k, v, groups, bias) <= 3 * plain_error + 1e-3
