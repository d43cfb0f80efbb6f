"""The block-decomposed score path (runtime/block_plan.py + kernels/blocked.py) against an independent dense
float64 computation: random layouts, boxes, frame windows, token distances, masks, branches and dtypes.

The reference recomputes each token's frame and grid cell with plain loops, builds every rule's pair matrix from
its definition, applies the rules in order to the full float64 logits and takes the softmax; nothing of
attnsteer's selectors, plans or kernels is used for it.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import attnsteer as at
from attnsteer.kernels.blocked import KeyClass, QueryBlock, blocked_attention
from attnsteer.language.blocks import block_states
from attnsteer.language.selectors import SelectionContext
from attnsteer.runtime import block_plan
from attnsteer.runtime.block_plan import block_score_fn, decompose
from attnsteer.runtime.execute import _decomposition, run_plan
from attnsteer.runtime.plan import build_plan
from attnsteer.testing.tolerance import assert_close


def table_of(frames: int, rows: int, cols: int, text: int) -> list[dict]:
    """Per token: frame (-1 for text) and cell centre, by plain loops (text first, then the frames)."""
    table = [{"frame": -1, "cx": -1.0, "cy": -1.0} for _ in range(text)]
    for f in range(frames):
        for r in range(rows):
            for c in range(cols):
                table.append({"frame": f, "cx": (c + 0.5) / cols, "cy": (r + 0.5) / rows})
    return table


def in_box(t: dict, box: tuple) -> bool:
    x0, y0, x1, y1 = box
    return t["frame"] >= 0 and x0 <= t["cx"] < x1 and y0 <= t["cy"] < y1


def window(fq: int, size: int, frames: int, adjusted: bool) -> tuple[int, int]:
    """FreeLong's local window of query frame ``fq``: [start, end) of key frames."""
    start, end = max(0, fq - size // 2), min(frames, fq + size // 2 + 1)
    if adjusted and end - start < size:
        if start == 0:
            end = min(frames, size)
        else:
            start = max(0, end - size)
    return start, end


def random_case(rng: random.Random, frames: int, rows: int, cols: int):
    """(rules for attnsteer, the same rules as (query test, key test, pair test, edit) for the reference)."""
    box = (rng.uniform(0, 0.45), rng.uniform(0, 0.45), rng.uniform(0.55, 1), rng.uniform(0.55, 1))
    size, adjusted, radius = rng.randint(1, frames + 1), rng.random() < 0.5, rng.randint(0, 2 * rows * cols)
    selectors = {
        "video": (at.video, lambda t, i: t["frame"] >= 0),
        "tokens": (at.tokens, lambda t, i: True),
        "box": (at.box(*box), lambda t, i: in_box(t, box)),
        "late": (at.frames[1:], lambda t, i: t["frame"] >= 1),
    }
    predicates = {
        "none": (None, lambda a, b, i, j: True),
        "window": (at.frame_window(size, adjusted),
                   lambda a, b, i, j: a["frame"] >= 0 and window(a["frame"], size, frames, adjusted)[0] <= b["frame"]
                   < window(a["frame"], size, frames, adjusted)[1]),
        "outside window": (~at.frame_window(size, adjusted),
                           lambda a, b, i, j: not (a["frame"] >= 0 and window(a["frame"], size, frames, adjusted)[0]
                                                   <= b["frame"] < window(a["frame"], size, frames, adjusted)[1])),
        "distance": (at.token_distance(radius), lambda a, b, i, j: abs(i - j) > radius),
        "same box": (at.same_region(at.box(*box)), lambda a, b, i, j: in_box(a, box) == in_box(b, box)),
        "box and distance": (at.same_region(at.box(*box)) & at.token_distance(radius),
                             lambda a, b, i, j: in_box(a, box) == in_box(b, box) and abs(i - j) > radius),
    }
    value = rng.uniform(-3, 3)
    transforms = {
        "bias": (at.bias(value), lambda s, qi, ki: s + value),
        "block": (at.block(), lambda s, qi, ki: torch.full_like(s, -math.inf)),
        "scale_if_positive": (at.scale_if_positive(0.5), lambda s, qi, ki: torch.where(s > 0, s * 0.5, s)),
        "score_mod": (at.score_mod(lambda s, b, h, qi, ki: s - 0.05 * (qi - ki).abs().to(s.dtype), "dist"),
                      lambda s, qi, ki: s - 0.05 * (qi - ki).abs()),
    }
    rules, reference = [], []
    for _ in range(rng.randint(1, 3)):
        qs, ks = rng.choice(list(selectors)), rng.choice(list(selectors))
        pairs, transform = rng.choice(list(predicates)), rng.choice(list(transforms))
        branch, heads = rng.choice(["all", "all", "cond"]), rng.choice([None, None, [1]])
        rules.append(at.Rule(selectors[qs][0], selectors[ks][0], transforms[transform][0], branch=branch,
                             heads=heads, pairs=predicates[pairs][0]))
        reference.append((selectors[qs][1], selectors[ks][1], predicates[pairs][1], transforms[transform][1],
                          branch, heads))
    return rules, reference


def dense(q, k, v, table, reference, branches, mask):
    """(output float64, rows that must raise) from the definition, on [B, H, N, N] float64 logits: a row raises
    when it is left without keys and the mask alone does not hide it (those get output 0, as SDPA gives)."""
    n = len(table)
    s = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
    idx = torch.arange(n, dtype=torch.float64)
    qi, ki = idx[:, None], idx[None, :]
    for q_test, k_test, pair_test, edit, branch, heads in reference:
        pairs = torch.tensor([[q_test(table[i], i) and k_test(table[j], j) and pair_test(table[i], table[j], i, j)
                               for j in range(n)] for i in range(n)])
        rows = torch.tensor([branch == "all" or b == branch for b in branches])
        head_mask = torch.tensor([heads is None or h in heads for h in range(q.shape[1])])
        where = rows[:, None, None, None] & head_mask[None, :, None, None] & pairs[None, None]
        s = torch.where(where, edit(s, qi, ki), s)
    by_mask = torch.zeros(s.shape[:-1], dtype=torch.bool)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
        by_mask = (~mask).all(-1).expand(s.shape[:-1])
    hidden = torch.isneginf(s).all(-1)
    p = torch.softmax(s.masked_fill(hidden[..., None], 0.0), -1).masked_fill(hidden[..., None], 0.0)
    return p @ v.double(), hidden & ~by_mask


@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
@settings(max_examples=40, deadline=None)
def test_block_decomposition_equals_dense_float64_on_random_rules(seed, dtype):
    rng = random.Random(seed)
    frames, rows, cols, text = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 4), rng.choice([0, 0, 3])
    lay = at.TokenLayout(num_frames=frames, tokens_per_frame=rows * cols, video_start=text,
                         segments=[at.Segment("text", 0, text)] if text else [], grid=(rows, cols))
    table = table_of(frames, rows, cols, text)
    rules, reference = random_case(rng, frames, rows, cols)
    n, branches = lay.seq_len, ("uncond", "cond")
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    mask = None
    if rng.random() < 0.4:  # boolean: key padding per batch row, or a full random mask (may hide whole rows)
        mask = (torch.rand(2, 1, 1, n, generator=g) < 0.8) if rng.random() < 0.5 else (torch.rand(2, 1, n, n, generator=g) < 0.85)
    ctx = SelectionContext(lay)
    try:
        plan = build_plan(tuple((r, ctx) for r in rules), lay, branches, 2, 2)
    except at.ConfigError:  # a box that covers no token of this grid
        assume(False)
    assume(plan.path in ("scored", "grouped"))
    expected, blocked = dense(q, k, v, table, reference, branches, mask)
    block_plan.BLOCK_ROWS, saved = rng.randint(1, 7), block_plan.BLOCK_ROWS  # blocks that cut frames
    try:
        decompose.cache_clear()
        parts = decompose(plan, lay, 2, 2, q.device)
        fn = block_score_fn(plan, 2, 2, q.device)
        if bool(blocked.any()):
            with pytest.raises(at.KernelError, match="every key blocked"):
                blocked_attention(q, k, v, parts.blocks, fn, plan.logit_scale(8, None), mask)
            return
        out = blocked_attention(q, k, v, parts.blocks, fn, plan.logit_scale(8, None), mask)
    finally:
        block_plan.BLOCK_ROWS = saved
        decompose.cache_clear()
    assert out.dtype == dtype
    assert_close(out, expected, dtype=dtype, magnitude=max(1.0, float(expected.abs().max())), ops=n,
                 msg=f"rules {rules}, mask {None if mask is None else tuple(mask.shape)}")


def test_no_rule_on_a_block_gives_one_fused_call_equal_to_sdpa():
    q, k, v = (torch.randn(1, 2, 40, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    blocks = [QueryBlock(slice(0, 16), (KeyClass(slice(0, 40), None),), None),
              QueryBlock(slice(16, 40), (KeyClass(slice(0, 40), None),), None)]
    out = blocked_attention(q, k, v, blocks)
    expected = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 8**-0.5, -1) @ v.double()
    assert_close(out, expected, dtype=torch.float32, magnitude=float(expected.abs().max()), ops=40)


def test_blocks_that_do_not_tile_the_queries_raise():
    q = torch.zeros(1, 1, 8, 4)
    with pytest.raises(at.KernelError, match="tile the query rows.*1 are in none, 0 in several"):
        blocked_attention(q, q, q, [QueryBlock(slice(0, 4), (), None), QueryBlock(slice(5, 8), (), None)])
    with pytest.raises(at.KernelError, match="4 are in none"):
        blocked_attention(q, q, q, [QueryBlock(slice(0, 4), (KeyClass(slice(0, 8), None),), None)])
    with pytest.raises(at.KernelError, match="0 are in none, 2 in several"):
        blocked_attention(q, q, q, [QueryBlock(slice(0, 6), (), None), QueryBlock(torch.tensor([4, 5, 6, 7]), (), None)])


def _video(frames: int, tokens: int) -> at.TokenLayout:
    return at.TokenLayout(num_frames=frames, tokens_per_frame=tokens, grid=(1, tokens))


@pytest.mark.parametrize("rule, path", [
    (at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(3)), "grouped"),  # FreeLong's local window
    (at.Rule(at.video, at.video, at.bias(-1.0), pairs=at.token_distance(24)), "scored"),  # a far-pair bias
    (at.Rule(at.box(0.0, 0.0, 0.125, 1.0), at.box(0.0, 0.0, 0.125, 1.0), at.scale_if_positive(1.5)), "scored"),
])
def test_piecewise_constant_rules_take_the_block_path_and_stay_exact(rule, path):
    lay = _video(8, 16)
    q, k, v = (torch.randn(1, 2, lay.seq_len, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    plan = build_plan(((rule, SelectionContext(lay)),), lay, None, 1, 2)
    assert plan.path == path and _decomposition(plan, q, k, lay) is not None
    out, _ = run_plan(plan, q, k, v, lay, None, None, want_mass=False)
    reference, _ = run_plan(plan, q.double().requires_grad_(), k.double(), v.double(), lay, None, None,
                            want_mass=False)  # under autograd: the elementwise score path, in float64
    assert_close(out, reference.detach(), dtype=torch.float32, magnitude=float(reference.detach().abs().max()),
                 ops=lay.seq_len)


def test_rows_no_rule_reads_leave_their_blocks_for_one_plain_block():
    """A boost inside a box (a 2 x 2 corner of each 4 x 4 frame): the box's rows of every frame form one block of
    gathered rows (the box's keys elementwise, the rest one gathered class); the other 48 rows, one block of plain
    attention over every key. Exact against a dense float64 softmax of the definition."""
    lay = at.TokenLayout(num_frames=4, tokens_per_frame=16, grid=(4, 4))
    rule = at.Rule(at.box(0.0, 0.0, 0.5, 0.5), at.box(0.0, 0.0, 0.5, 0.5), at.scale_if_positive(1.5))
    plan = build_plan(((rule, SelectionContext(lay)),), lay, None, 1, 2)
    parts = decompose(plan, lay, 1, 2, torch.device("cpu"))
    in_box = torch.tensor([(t % 16) // 4 < 2 and t % 4 < 2 for t in range(64)])
    plain = [block for block in parts.blocks if block.mixed is None]
    boxed = [block for block in parts.blocks if block.mixed is not None]
    assert len(plain) == 1 and plain[0].classes == (KeyClass(slice(0, 64), None),)
    assert torch.equal(plain[0].rows, (~in_box).nonzero()[:, 0])
    assert [block.rows.tolist() for block in boxed] == [[f * 16 + t for f in range(4) for t in (0, 1, 4, 5)]]
    assert torch.equal(boxed[0].mixed, in_box.nonzero()[:, 0])
    assert [torch.equal(cls.keys, (~in_box).nonzero()[:, 0]) for cls in boxed[0].classes] == [True]
    q, k, v = (torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
               for i in range(3))
    out = blocked_attention(q, k, v, parts.blocks, block_score_fn(plan, 1, 2, q.device))
    s = (q @ k.transpose(-1, -2)) * 8**-0.5
    pairs = in_box[:, None] & in_box[None, :]
    s = torch.where(pairs & (s > 0), s * 1.5, s)
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, atol=1e-12, rtol=0)


def test_a_fully_elementwise_score_mod_keeps_the_score_path():
    lay = _video(4, 16)
    q = torch.randn(1, 2, lay.seq_len, 8)
    rule = at.Rule(at.video, at.video, at.score_mod(lambda s, b, h, qi, ki: s - 0.01 * (qi - ki).abs(), "dist"))
    plan = build_plan(((rule, SelectionContext(lay)),), lay, None, 1, 2)
    assert plan.path == "scored" and _decomposition(plan, q, q, lay) is None
    assert decompose(plan, lay, 1, 2, q.device).mixed_share == 1.0


def test_token_distance_blocks_hold_only_the_band_of_mixed_keys():
    lay = _video(4, 64)  # 256 tokens, one block per frame
    rule = at.Rule(at.video, at.video, at.bias(-1.0), pairs=at.token_distance(100))
    plan = build_plan(((rule, SelectionContext(lay)),), lay, None, 1, 1)
    parts = decompose(plan, lay, 1, 1, torch.device("cpu"))
    for block in parts.blocks:  # rows [a, b): keys within (a - 101, b + 100) of some row but not of every row
        a, b = block.rows.start, block.rows.stop
        expected = [j for j in range(256) if any(abs(i - j) > 100 for i in range(a, b))
                    and not all(abs(i - j) > 100 for i in range(a, b))]
        assert block.mixed.tolist() == expected
    assert parts.mixed_share == pytest.approx(sum(b.mixed.numel() * 64 for b in parts.blocks) / 256**2)


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_block_states_of_predicates_are_exact_for_leaves_and_conservative_for_combinations(seed):
    rng = random.Random(seed)
    frames, rows, cols = rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 4)
    lay = at.TokenLayout(num_frames=frames, tokens_per_frame=rows * cols, video_start=2,
                         segments=[at.Segment("text", 0, 2)], grid=(rows, cols))
    ctx = SelectionContext(lay)
    leaves = [at.token_distance(rng.randint(0, 6)), at.frame_window(rng.randint(1, 4), rng.random() < 0.5),
              at.frame_distance(rng.randint(0, 2)), at.same_region(at.box(0, 0, 0.6, 0.6)), at.same_location()]
    pairs = rng.choice(leaves)
    for _ in range(rng.randint(0, 2)):
        other = rng.choice(leaves)
        pairs = rng.choice([lambda a, b: a & b, lambda a, b: a | b, lambda a, b: ~a])(pairs, other)
    start = rng.randint(0, lay.seq_len - 1)
    block = torch.arange(start, rng.randint(start + 1, lay.seq_len))
    keys = torch.arange(lay.seq_len)
    truth = pairs.evaluate(ctx, block, keys)
    all_in, any_in = block_states(pairs, ctx, block, keys)
    assert not bool((all_in & ~truth.all(0)).any()), f"{pairs!r}: a key claimed in for every row is not"
    assert not bool((truth.any(0) & ~any_in).any()), f"{pairs!r}: a key in for some row is missed"
    if pairs in leaves:  # a single predicate: exact
        assert torch.equal(all_in, truth.all(0)) and torch.equal(any_in, truth.any(0))


def test_grouped_plans_that_block_little_keep_the_grouped_kernel_without_decomposing():
    lay = _video(8, 16)
    q = torch.randn(1, 2, lay.seq_len, 8)
    ctx = SelectionContext(lay)
    decompose.cache_clear()
    dymos = build_plan(((at.Rule(at.frames[1:], at.frames[0], at.bias(-0.6)), ctx),), lay, None, 1, 2)
    wide = build_plan(((at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(9)), ctx),), lay, None, 1, 2)
    assert dymos.path == "grouped" and _decomposition(dymos, q, q, lay) is None
    assert wide.path == "grouped" and _decomposition(wide, q, q, lay) is None  # blocks 12 of 64 frame pairs
    assert decompose.cache_info().misses == 0
