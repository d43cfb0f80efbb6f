"""grouped_attention against the dense oracle: randomised shapes, groups, biases and masks."""

from __future__ import annotations

import contextlib
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnsteer.kernels import dense_bias, grouped, grouped_attention
from attnsteer.kernels.grouped import grouped_attention_chunks
from attnsteer.testing import assert_close
from attnsteer.testing.oracle import dense_attention


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    nq, nk = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    d, dv = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4, 8, 12]))
    gq, gk = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    contiguous = draw(st.booleans())
    if contiguous:
        q_groups = torch.sort(torch.randint(0, gq, (nq,), generator=g)).values
        k_groups = torch.sort(torch.randint(0, gk, (nk,), generator=g)).values
    else:
        q_groups = torch.randint(0, gq, (nq,), generator=g)
        k_groups = torch.randint(0, gk, (nk,), generator=g)
    form = draw(st.sampled_from([None, 2, 3, 4]))
    bias = None
    if form is not None:
        shape = {2: (gq, gk), 3: (b, gq, gk), 4: (b, h, gq, gk)}[form]
        bias = torch.randn(shape, generator=g) * 2
        blocked = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3]))
        bias = bias.masked_fill(blocked, float("-inf"))
    mask_kind = draw(st.sampled_from([None, "bool-keys", "bool-full", "additive"]))
    mask = None
    if mask_kind == "bool-keys":
        mask = torch.rand(b, 1, 1, nk, generator=g) < 0.8
    elif mask_kind == "bool-full":
        mask = torch.rand(b, 1, nq, nk, generator=g) < 0.8
    elif mask_kind == "additive":
        mask = torch.randn(b, h, nq, nk, generator=g)
    scale = draw(st.sampled_from([None, 0.3]))
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, h, nk, d, generator=g)
    v = torch.randn(b, h, nk, dv, generator=g)
    return dict(q=q, k=k, v=v, q_groups=q_groups, k_groups=k_groups, bias=bias, scale=scale, attn_mask=mask,
                num_q_groups=gq, num_k_groups=gk)


def fully_blocked(p) -> bool:
    """Whether some query row sees no key at all (the kernel must raise then; checked separately)."""
    logits = torch.zeros(p["q"].shape[0], p["q"].shape[1], p["q"].shape[2], p["k"].shape[2], dtype=torch.float64)
    if p["bias"] is not None:
        b = p["bias"].double()
        b = b[:, None] if b.dim() == 3 else b
        logits = logits + b[..., p["q_groups"], :][..., p["k_groups"]]
    hidden_by_mask = torch.zeros(logits.shape[:-1], dtype=torch.bool)
    if p["attn_mask"] is not None and p["attn_mask"].dtype == torch.bool:
        hidden_by_mask = (~p["attn_mask"]).all(-1).expand(hidden_by_mask.shape)
        logits = logits.masked_fill(~p["attn_mask"], float("-inf"))
    return bool((torch.isneginf(logits).all(-1) & ~hidden_by_mask).any())


def small_query_chunks() -> contextlib.ExitStack:
    """The kernel's query chunks down to 2 rows and no dense-mask call (large calls run in chunks, merging their key
    classes; these tiny ones otherwise would not)."""
    stack = contextlib.ExitStack()
    stack.enter_context(patch.multiple(grouped, QUERY_BLOCK=2, BLOCKS_PER_THREAD=1, WHOLE_BYTES=0))
    stack.enter_context(patch.object(dense_bias, "MAX_LOGITS", 0))
    return stack


@pytest.mark.exactness
@settings(deadline=None, max_examples=150)
@given(problems(), st.booleans(), st.booleans())
def test_equals_dense_oracle(p, return_mass, chunked):
    with small_query_chunks() if chunked else contextlib.nullcontext():
        check_against_oracle(p, return_mass)


def check_against_oracle(p, return_mass):
    if fully_blocked(p):
        with pytest.raises(ValueError, match="every key blocked"):
            grouped_attention(**p, return_mass=return_mass)
        return
    out, mass = grouped_attention(**p, return_mass=return_mass)
    ref_out, ref_mass = dense_attention(**p, return_mass=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if return_mass:
        assert mass.shape == (p["q"].shape[0], p["q"].shape[1], p["num_q_groups"], p["num_k_groups"])
        torch.testing.assert_close(mass, ref_mass, atol=1e-5, rtol=1e-5)
    else:
        assert mass is None


@pytest.mark.exactness
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_write_the_output_and_yield_per_query_mass_of_their_rows(dtype):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=g).to(dtype) for _ in range(3))
    groups = torch.arange(37) % 5
    bias = torch.randn(2, 5, 5, generator=g)
    mask = torch.rand(2, 1, 37, 37, generator=g) < 0.9
    args = dict(bias=bias, attn_mask=mask)
    whole, qm = grouped_attention(q, k, v, groups, groups, per_query=True, **args)
    out = torch.full_like(q, float("nan"))
    with small_query_chunks():
        chunks = list(grouped_attention_chunks(q, k, v, groups, groups, out, **args))
        discarded = list(grouped_attention_chunks(q, k, v, groups, groups, None, **args))
    assert len(chunks) > 1 and chunks[-1][0].stop == 37
    assert all(a.start == b.stop for (a, _), (b, _) in zip(chunks[1:], chunks))  # consecutive, covering every row
    # chunks change the fused kernel's blocking, so its rounding: sums over the 37 keys in another order
    if dtype == torch.float32:
        assert_close(out, whole, ops=37)
    else:  # float32 sums rounded once to bfloat16: at most one bfloat16 step apart
        torch.testing.assert_close(out, whole, atol=torch.finfo(dtype).eps * float(whole.float().abs().max()), rtol=0)
    for (rows, part), (_, again) in zip(chunks, discarded):
        assert_close(part.weights, qm.weights[:, :, rows], dtype=torch.float32, ops=37, magnitude=1.0)
        assert_close(part.lse, qm.lse[:, :, rows], dtype=torch.float32, ops=37)  # the mass is float32 in any dtype
        torch.testing.assert_close(again.weights, part.weights, atol=0, rtol=0)
    ref_out, _ = dense_attention(q.double(), k.double(), v.double(), groups, groups, bias=bias, attn_mask=mask)
    torch.testing.assert_close(whole.double(), ref_out, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)


def dymos_problem(frames=4, tokens=24, heads=2, dim=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    n = frames * tokens
    q, k, v = (torch.randn(1, heads, n, dim, generator=g).to(dtype) for _ in range(3))
    groups = torch.arange(frames).repeat_interleave(tokens)
    bias = torch.zeros(frames, frames)
    bias[1:, 0] = -0.6
    return q, k, v, groups, bias


@pytest.mark.exactness
def test_without_bias_equals_sdpa():
    q, k, v, groups, _ = dymos_problem()
    out, mass = grouped_attention(q, k, v, groups, groups)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=0, rtol=0)
    assert mass is None


@pytest.mark.exactness
def test_fused_classes_equal_per_group_calls():
    """DyMoS needs 2 fused calls (frame 0 / the rest); asking for the mass splits every frame: same output."""
    q, k, v, groups, bias = dymos_problem()
    fused, _ = grouped_attention(q, k, v, groups, groups, bias=bias)
    split, mass = grouped_attention(q, k, v, groups, groups, bias=bias, return_mass=True)
    assert_close(fused, split, ops=q.shape[-2])  # two merges of the same keys: another order of the sums
    torch.testing.assert_close(mass.sum(-1), torch.ones_like(mass.sum(-1)), atol=1e-5, rtol=0)


@pytest.mark.exactness
@pytest.mark.parametrize("reference_bias, class_calls", [(-0.6, 0), (-1e4, 2)])
def test_small_calls_with_moderate_biases_run_one_masked_sdpa_call(monkeypatch, reference_bias, class_calls):
    """kernels.dense_bias: a small call with |bias| <= 16 runs as one SDPA call with the bias as its mask; a huge bias
    (float32 could not hold logit + bias) merges its two key classes by log-sum-exp. Both equal float64."""
    from attnsteer.kernels import backends

    q, k, v, groups, bias = dymos_problem()
    bias[1:, 0] = reference_bias
    calls = []
    monkeypatch.setattr(grouped, "class_attention", lambda *a: calls.append(1) or backends.class_attention(*a))
    out, _ = grouped_attention(q, k, v, groups, groups, bias=bias)
    expected, _ = dense_attention(q.double(), k.double(), v.double(), groups, groups, bias=bias.double())
    assert len(calls) == class_calls
    assert_close(out, expected, ops=q.shape[-2])


@pytest.mark.exactness
def test_bfloat16_merges_in_float32():
    q, k, v, groups, bias = dymos_problem(dtype=torch.bfloat16)
    out, mass = grouped_attention(q, k, v, groups, groups, bias=bias, return_mass=True)
    ref, ref_mass = dense_attention(q.float(), k.float(), v.float(), groups, groups, bias=bias, return_mass=True)
    assert out.dtype == torch.bfloat16 and mass.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(mass, ref_mass, atol=1e-2, rtol=0)


def test_every_key_blocked_raises():
    q, k, v, groups, _ = dymos_problem(frames=2)
    bias = torch.zeros(2, 2)
    bias[1, :] = float("-inf")
    with pytest.raises(ValueError, match="every key blocked"):
        grouped_attention(q, k, v, groups, groups, bias=bias)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(bias=torch.zeros(5, 2, 2)), r"bias must have shape"),
        (dict(q_groups=torch.zeros(5, dtype=torch.long)), r"q_groups must be a LongTensor of shape \[48\]"),
        (dict(k_groups=torch.arange(48)), r"k_groups must hold group ids in \[0, 2\)"),
        (dict(attn_mask=torch.ones(1, 1, 7, 48, dtype=torch.bool)), r"attn_mask must be broadcastable"),
        (dict(k=torch.randn(1, 2, 48, 8)), r"k's head dim"),
        (dict(bias=torch.full((2, 2), float("nan"))), r"NaN"),
    ],
)
def test_bad_arguments_are_named(change, match):
    q, k, v, groups, _ = dymos_problem(frames=2)
    args = dict(q=q, k=k, v=v, q_groups=groups, k_groups=groups, bias=torch.zeros(2, 2))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        grouped_attention(**args)


@pytest.mark.exactness
def test_rows_hidden_by_the_mask_alone_give_zeros_like_sdpa():
    """Padding used as queries (HunyuanVideo 1.5 masks m_i & m_j): no error, output 0, mass 0."""
    q, k, v, groups, bias = dymos_problem(frames=2)
    mask = torch.ones(1, 1, q.shape[-2], k.shape[-2], dtype=torch.bool)
    mask[..., :3, :] = False
    out, mass = grouped_attention(q, k, v, groups, groups, bias=bias, attn_mask=mask, return_mass=True)
    assert (out[..., :3, :] == 0).all()
    ref, ref_mass = dense_attention(q, k, v, groups, groups, bias=bias, attn_mask=mask, return_mass=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mass, ref_mass, atol=1e-5, rtol=1e-5)
    plain, _ = grouped_attention(q, k, v, groups, groups, attn_mask=mask)
    torch.testing.assert_close(plain, ref_plain := dense_attention(q, k, v, groups, groups, attn_mask=mask)[0],
                               atol=1e-5, rtol=1e-5)
    assert (ref_plain[..., :3, :] == 0).all()


@pytest.mark.exactness
def test_math_fallback_equals_oracle():
    from attnsteer.kernels.backends import _chunked_math

    q, k, v, groups, _ = dymos_problem()
    mask = torch.zeros(1, 1, 1, k.shape[-2])
    mask[..., :5] = float("-inf")
    out, lse = _chunked_math(q, k, v, 0.25, mask)
    ref, _ = dense_attention(q, k, v, groups, groups, scale=0.25, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    logits = (q.double() @ k.double().transpose(-1, -2)) * 0.25 + mask.double()
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), atol=1e-5, rtol=1e-5)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")


def _to(p: dict, device: str, dtype: torch.dtype | None = None) -> dict:
    moved = {}
    for key, value in p.items():
        if isinstance(value, torch.Tensor):
            floating = value.is_floating_point() and key in ("q", "k", "v")
            value = value.to(device, dtype if (floating and dtype) else value.dtype)
        moved[key] = value
    return moved


@CUDA
@settings(deadline=None, max_examples=150)
@given(problems(), st.booleans())
def test_cuda_equals_dense_oracle(p, return_mass):
    """The CUDA paths (flash, memory-efficient with a bias, math fallback) against the float64 oracle."""
    if fully_blocked(p):
        return
    out, mass = grouped_attention(**_to(p, "cuda"), return_mass=return_mass)
    ref_out, ref_mass = dense_attention(**p, return_mass=True)
    torch.testing.assert_close(out.cpu(), ref_out, atol=1e-4, rtol=1e-4)
    if return_mass:
        torch.testing.assert_close(mass.cpu(), ref_mass, atol=1e-4, rtol=1e-4)


def video_head_problem(masked: bool) -> dict:
    """DyMoS at a real head size (64), with the last 7 keys masked out or not."""
    q, k, v, groups, bias = dymos_problem(frames=5, tokens=77, heads=4, dim=64)
    mask = None
    if masked:
        mask = torch.ones(1, 1, 1, k.shape[-2], dtype=torch.bool)
        mask[..., -7:] = False
    return dict(q=q, k=k, v=v, q_groups=groups, k_groups=groups, bias=bias, attn_mask=mask)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_uses_fused_kernels_at_video_head_sizes(monkeypatch, dtype, masked):
    """At real head sizes the fused ops take every call (the math fallback would raise here)."""
    from attnsteer.kernels import backends

    def no_fallback(*args):
        raise AssertionError("the math fallback ran")

    monkeypatch.setattr(backends, "_chunked_math", no_fallback)
    p = video_head_problem(masked)
    out, mass = grouped_attention(**_to(p, "cuda", dtype), return_mass=True)
    ref, ref_mass = dense_attention(**p, return_mass=True)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)
    torch.testing.assert_close(mass.cpu(), ref_mass, atol=tol, rtol=0)


@CUDA
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_each_sdpa_backend_equals_dense_oracle(monkeypatch, backend, masked):
    """With SDPA limited to one backend (``sdpa_kernel``), the fused path takes that kernel's log-sum-exp
    variant where SDPA supports the inputs, and matches the float64 oracle."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnsteer.kernels import backends

    chosen = []
    choose = backends._sdpa_choice
    monkeypatch.setattr(backends, "_sdpa_choice", lambda *a: chosen.append(choose(*a)) or chosen[-1])
    p = video_head_problem(masked)
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        out, mass = grouped_attention(**_to(p, "cuda", torch.bfloat16), return_mass=True)
    ref, ref_mass = dense_attention(**p, return_mass=True)
    torch.testing.assert_close(out.float().cpu(), ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(mass.cpu(), ref_mass.float(), atol=2e-2, rtol=2e-2)
    assert set(chosen) <= {getattr(SDPBackend, backend), SDPBackend.ERROR}  # SDPA's own choice, or none possible


def query_runs_problem(batch=1, heads_bias=False, dtype=torch.float64, groups=48, keys=40, lengths=(64, 96)):
    """Many small key classes (``groups`` of ``keys`` keys) and queries in runs of ``lengths`` (alternating), whose
    groups come in shuffled order; a moderate random bias per (query group, key group)."""
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(groups, generator=g)
    q_groups = torch.cat([torch.full((lengths[i % len(lengths)],), int(group)) for i, group in enumerate(order)])
    k_groups = torch.arange(groups).repeat_interleave(keys)
    heads = 2
    q = torch.randn(batch, heads, q_groups.numel(), 16, generator=g, dtype=dtype)
    k, v = (torch.randn(batch, heads, k_groups.numel(), 16, generator=g, dtype=dtype) for _ in range(2))
    shape = (batch, heads, groups, groups) if heads_bias else (batch, groups, groups)
    bias = (torch.randn(shape, generator=g) * 4).clamp(-16, 16)
    return q, k, v, q_groups, k_groups, bias


@pytest.mark.exactness
@pytest.mark.parametrize("batch, heads_bias, dtype", [(1, False, torch.float64), (2, True, torch.float32),
                                                      (2, False, torch.float64)])
def test_many_small_key_classes_run_as_masked_calls_over_query_runs(monkeypatch, batch, heads_bias, dtype):
    """kernels.query_runs: 48 key groups of 40 keys, the queries in runs of two lengths in shuffled group order, a
    bias per batch row (and head): no class call, one masked SDPA call per run length and batch row, and the output
    equals a dense float64 computation; a prepared call gives the same output bit for bit."""
    from attnsteer.kernels import backends, query_runs
    from attnsteer.kernels.prepared import prepare_groups, prepared_attention

    q, k, v, q_groups, k_groups, bias = query_runs_problem(batch, heads_bias, dtype)
    calls, sdpa_calls = [], []
    monkeypatch.setattr(grouped, "class_attention", lambda *a: calls.append(1) or backends.class_attention(*a))
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(query_runs.F, "scaled_dot_product_attention", lambda *a, **kw: sdpa_calls.append(1) or sdpa(*a, **kw))
    out, _ = grouped_attention(q, k, v, q_groups, k_groups, bias=bias)
    expected, _ = dense_attention(q.double(), k.double(), v.double(), q_groups, k_groups, bias=bias.double())
    assert not calls and len(sdpa_calls) == 2 * batch
    assert_close(out, expected, ops=k.shape[-2])
    prepared = prepare_groups(q_groups, k_groups, bias, batch, q.shape[1])
    assert prepared.runs is not None
    assert torch.equal(prepared_attention(q, k, v, prepared), out)


@pytest.mark.parametrize("change", ["few classes", "short run", "many lengths", "large bias", "-inf bias"])
def test_query_runs_are_planned_only_where_they_pay_and_an_additive_mask_is_exact(change):
    """Calls with few or large key classes, short query runs, many run lengths, or a bias an additive mask cannot
    hold exactly keep the class calls."""
    from attnsteer.kernels import query_runs

    kwargs = {"few classes": dict(groups=16, keys=40), "short run": dict(lengths=(64, 32)),
              "many lengths": dict(lengths=(64, 72, 80, 88, 96)), "large bias": {}, "-inf bias": {}}[change]
    _, _, _, q_groups, k_groups, bias = query_runs_problem(**kwargs)
    bias4 = bias[:, None]
    planned = query_runs.plan(q_groups, k_groups, bias.shape[-1], bias4)
    if change in ("large bias", "-inf bias"):
        assert planned is not None  # the same call with a moderate bias runs over the query runs
        bias4 = bias4.clone()
        bias4[..., 0, 0] = 17.0 if change == "large bias" else float("-inf")
        planned = query_runs.plan(q_groups, k_groups, bias.shape[-1], bias4)
    assert planned is None
