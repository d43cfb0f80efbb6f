"""The rule language against an independent dense computation: regions, words, pair predicates,
score functions, identity attention, over random layouts and tensors.

The reference below recomputes every token's frame and grid cell with plain loops, applies each
rule to the full float64 logit matrix in the order given, and takes the softmax; nothing of
attnsteer's selectors, plans or kernels is used for it.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnsteer as at
from attnsteer.runtime.execute import run_plan
from attnsteer.runtime.plan import build_plan
from attnsteer.language.selectors import SelectionContext
from attnsteer.language.words import WordIndex
from dense_reference import EditedAttention

TEXT = 3  # text tokens before the video in the test layouts


def layout(frames: int, rows: int, cols: int, text: int = TEXT) -> at.TokenLayout:
    return at.TokenLayout(num_frames=frames, tokens_per_frame=rows * cols, video_start=text,
                          segments=[at.Segment("text", 0, text)] if text else [], grid=(rows, cols))


def token_table(frames: int, rows: int, cols: int, text: int = TEXT) -> list[dict]:
    """Per token: kind, frame, row, col and the centre of its cell — by plain loops."""
    table = [{"kind": "text", "frame": -1, "row": -1, "col": -1} for _ in range(text)]
    for f in range(frames):
        for r in range(rows):
            for c in range(cols):
                table.append({"kind": "video", "frame": f, "row": r, "col": c,
                              "cx": (c + 0.5) / cols, "cy": (r + 0.5) / rows})
    return table


def in_box(t: dict, box: tuple, frames=None) -> bool:
    x0, y0, x1, y1 = box
    return (t["kind"] == "video" and (frames is None or t["frame"] in frames)
            and x0 <= t["cx"] < x1 and y0 <= t["cy"] < y1)


def dense(q, k, v, logit_edits, scale=None):
    """softmax(edits(q k^T * scale)) @ v in float64; ``logit_edits(s) -> s`` on [B, H, N, N]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = logit_edits((q.double() @ k.double().transpose(-1, -2)) * scale)
    p = s.softmax(-1)
    return (p @ v.double()), p


def run(rules, lay, q, k, v, words=None, branches=None, want_mass=False):
    ctx = SelectionContext(lay, words)
    plan = build_plan(tuple((r, ctx) for r in rules), lay, branches, q.shape[0], q.shape[1], want_mass=want_mass)
    out, mass = run_plan(plan, q, k, v, lay, None, None, want_mass=want_mass)
    return plan, out, mass


def qkv(b, h, n, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def pair_matrix(table, predicate) -> torch.Tensor:
    n = len(table)
    return torch.tensor([[predicate(table[i], table[j], i, j) for j in range(n)] for i in range(n)])


@given(
    frames=st.integers(1, 3), rows=st.integers(1, 3), cols=st.integers(1, 4),
    box=st.tuples(st.floats(0, 0.49), st.floats(0, 0.49), st.floats(0.51, 1), st.floats(0.51, 1)),
    value=st.floats(-5, 5), seed=st.integers(0, 10_000),
)
@settings(max_examples=25, deadline=None)
def test_a_box_bias_equals_the_dense_biased_softmax(frames, rows, cols, box, value, seed):
    lay, table = layout(frames, rows, cols), token_table(frames, rows, cols)
    region = at.box(*box)
    inside = torch.tensor([in_box(t, box) for t in table])
    if not bool(inside.any()):
        with pytest.raises(at.ConfigError, match="covers no token"):
            run([at.Rule(region, at.text, at.bias(value))], lay, *qkv(1, 1, len(table)))
        return
    rule = at.Rule(region, at.text | at.frames[0], at.bias(value))
    q, k, v = qkv(2, 2, len(table), seed=seed)
    plan, out, _ = run([rule], lay, q, k, v)
    assert plan.path == "grouped"
    keys = torch.tensor([t["kind"] == "text" or t["frame"] == 0 for t in table])
    expected, _ = dense(q, k, v, lambda s: s + value * (inside[:, None] & keys[None, :]).double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_peekaboo_style_region_isolation_keeps_the_grouped_path_and_is_exact():
    frames, rows, cols = 3, 2, 3
    lay, table = layout(frames, rows, cols), token_table(frames, rows, cols)
    traj = at.trajectory([(0.0, (0.0, 0.0, 0.5, 1.0)), (1.0, (0.5, 0.0, 1.0, 1.0))])
    rule = at.Rule(at.video, at.video, at.bias(-1e4), pairs=~at.same_region(traj))
    q, k, v = qkv(1, 2, len(table), seed=3)
    plan, out, _ = run([rule], lay, q, k, v)
    assert plan.path == "grouped"

    def box_of(frame):  # linear interpolation between the two keyframes, by hand
        w = frame / (frames - 1)
        return (0.5 * w, 0.0, 0.5 + 0.5 * w, 1.0)

    inside = [t["kind"] == "video" and in_box(t, box_of(t["frame"])) for t in table]
    differ = pair_matrix(table, lambda a, b, i, j: a["kind"] == b["kind"] == "video" and inside[i] != inside[j])
    expected, _ = dense(q, k, v, lambda s: s - 1e4 * differ.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adjusted", [False, True])
def test_frame_window_is_freelongs_local_mask(adjusted):
    frames = 7
    lay, table = layout(frames, 1, 2, text=0), token_table(frames, 1, 2, text=0)
    size = 4
    allowed = torch.zeros(frames, frames, dtype=torch.bool)  # FreeLong's loop, transcribed
    for i in range(frames):
        start, end = max(0, i - size // 2), min(frames, i + size // 2 + 1)
        if adjusted and end - start < size:
            if start == 0:
                end = min(frames, start + size)
            else:
                start = max(0, end - size)
        allowed[i, start:end] = True
    rule = at.Rule(at.video, at.video, at.block(), pairs=~at.frame_window(size, adjusted=adjusted))
    q, k, v = qkv(1, 1, len(table), seed=1)
    plan, out, _ = run([rule], lay, q, k, v)
    assert plan.path == "grouped"
    keep = pair_matrix(table, lambda a, b, i, j: bool(allowed[a["frame"], b["frame"]]))
    expected, _ = dense(q, k, v, lambda s: s.masked_fill(~keep, float("-inf")))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_score_functions_apply_in_rule_order_on_their_pairs():
    frames, rows, cols = 2, 2, 2
    lay, table = layout(frames, rows, cols), token_table(frames, rows, cols)
    rules = [
        at.Rule(at.video, at.video, at.scale_if_positive(0.5), pairs=at.token_distance(3)),
        at.Rule(at.video, at.video, at.bias(0.7), pairs=at.same_location()),
        at.Rule(at.frames[0], at.text, at.fill(-1e4)),
        at.Rule(at.text, at.tokens, at.logit_scale(2.0), heads=[1]),
        at.Rule(at.frames[1], at.video, at.score_mod(lambda s, b, h, qi, ki: s - 0.1 * (qi - ki).abs(), "dist")),
    ]
    q, k, v = qkv(2, 2, len(table), seed=5)
    plan, out, _ = run(rules, lay, q, k, v)
    assert plan.path == "scored"
    far = pair_matrix(table, lambda a, b, i, j: a["kind"] == b["kind"] == "video" and abs(i - j) > 3)
    same = pair_matrix(table, lambda a, b, i, j: a["kind"] == b["kind"] == "video" and (a["row"], a["col"]) == (b["row"], b["col"]))
    f0_text = pair_matrix(table, lambda a, b, i, j: a["frame"] == 0 and b["kind"] == "text")
    text_q = pair_matrix(table, lambda a, b, i, j: a["kind"] == "text")
    f1_video = pair_matrix(table, lambda a, b, i, j: a["frame"] == 1 and b["kind"] == "video")
    idx = torch.arange(len(table)).double()

    def edits(s):
        s = torch.where(far & (s > 0), s * 0.5, s)
        s = s + 0.7 * same.double()
        s = s.masked_fill(f0_text, -1e4)
        head1 = torch.tensor([False, True])[None, :, None, None]
        s = torch.where(text_q & head1, s * 2.0, s)
        return torch.where(f1_video, s - 0.1 * (idx[:, None] - idx[None, :]).abs(), s)

    expected, _ = dense(q, k, v, edits)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_fill_values_differ_when_a_row_is_fully_filled():
    lay = layout(2, 1, 2, text=0)
    q, k, v = qkv(1, 1, lay.seq_len, seed=2)
    _, uniform, _ = run([at.Rule(at.frames[0], at.tokens, at.fill(-1e4))], lay, q, k, v)
    mean_v = v[:, :, :].mean(-2, keepdim=True).expand(-1, -1, 2, -1)
    torch.testing.assert_close(uniform[:, :, :2], mean_v, atol=1e-5, rtol=1e-5)  # filled row: uniform weights
    _, biased, _ = run([at.Rule(at.frames[0], at.tokens, at.bias(-1e4))], lay, q, k, v)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(biased[:, :, :2], plain[:, :, :2], atol=1e-5, rtol=1e-5)  # relative logits kept
    with pytest.raises(at.KernelError, match="every key blocked"):
        run([at.Rule(at.frames[0], at.tokens, at.fill(-math.inf))], lay, q, k, v)


def test_identity_attention_returns_v_for_the_selected_rows_only():
    lay = layout(2, 2, 2)
    q, k, v = qkv(2, 2, lay.seq_len, seed=4)
    rule = at.Rule(at.frames[1], at.tokens, at.identity(), branch="cond")
    plan, out, _ = run([rule], lay, q, k, v, branches=("uncond", "cond"))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    frame1 = slice(lay.video_start + 4, lay.video_end)
    torch.testing.assert_close(out[1, :, frame1], v[1, :, frame1])
    torch.testing.assert_close(out[0], plain[0])
    torch.testing.assert_close(out[1, :, : frame1.start], plain[1, :, : frame1.start])
    _, recorded, mass = run([rule], lay, q, k, v, branches=("uncond", "cond"), want_mass=True)  # exact on the scored path
    torch.testing.assert_close(recorded, out, atol=1e-5, rtol=1e-5)
    assert float(mass[1, 0, 1, 1]) == pytest.approx(1.0)


def test_per_query_bias_refines_cells_and_matches_dense():
    lay, table = layout(2, 2, 2), token_table(2, 2, 2)
    values = torch.linspace(-1, 1, lay.seq_len)
    rule = at.Rule(at.video, at.text, at.query_bias(values))
    q, k, v = qkv(1, 1, lay.seq_len, seed=6)
    plan, out, _ = run([rule], lay, q, k, v)
    assert plan.path == "grouped"
    text_k = pair_matrix(table, lambda a, b, i, j: a["kind"] == "video" and b["kind"] == "text")
    expected, _ = dense(q, k, v, lambda s: s + text_k.double() * values.double()[:, None])
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_grouped_mass_over_cells_sums_back_to_layout_groups():
    lay, table = layout(2, 2, 2), token_table(2, 2, 2)
    rule = at.Rule(at.box(0, 0, 0.5, 0.5), at.frames[0], at.bias(1.5))
    q, k, v = qkv(1, 2, lay.seq_len, seed=7)
    _, _, mass = run([rule], lay, q, k, v, want_mass=True)
    inside = torch.tensor([in_box(t, (0, 0, 0.5, 0.5)) for t in table])
    keys = torch.tensor([t["frame"] == 0 for t in table])
    _, p = dense(q, k, v, lambda s: s + 1.5 * (inside[:, None] & keys[None, :]).double())
    groups = lay.group_ids()
    onehot = torch.nn.functional.one_hot(groups, lay.num_groups).double()
    expected = (onehot.T @ (p @ onehot)) / onehot.sum(0)[:, None]
    torch.testing.assert_close(mass.double(), expected, atol=1e-5, rtol=1e-5)


def test_autograd_through_the_scored_path_matches_dense():
    lay, table = layout(2, 1, 2), token_table(2, 1, 2)
    q, k, v = (t.requires_grad_() for t in qkv(1, 1, lay.seq_len, seed=8, dtype=torch.float64))
    rule = at.Rule(at.video, at.video, at.scale_if_positive(0.3))
    _, out, _ = run([rule], lay, q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    video = pair_matrix(table, lambda a, b, i, j: a["kind"] == b["kind"] == "video")
    expected, _ = dense(q, k, v, lambda s: torch.where(video & (s > 0), s * 0.3, s))
    torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), (q, k, v)), atol=1e-5, rtol=1e-5)


class WordTokenizer:
    """A stand-in fast tokenizer: one token per word piece of at most 3 letters, a start token,
    with character offsets (so 'elephant' is split in sub-word tokens)."""

    def __call__(self, prompt, return_offsets_mapping=True, add_special_tokens=True):
        import re

        spans = [(0, 0)]
        for m in re.finditer(r"\w+", prompt):
            for start in range(m.start(), m.end(), 3):
                spans.append((start, min(start + 3, m.end())))
        return {"offset_mapping": spans}


def test_words_select_every_sub_word_token_and_unknown_words_list_the_prompt():
    index = WordIndex.from_tokenizer(WordTokenizer(), "an elephant and a dog")
    assert index.positions("elephant") == [2, 3, 4]  # 'ele', 'pha', 'nt' after the start token and 'an'
    assert index.positions("Dog") == [7]
    lay = at.TokenLayout(num_frames=1, tokens_per_frame=2, video_start=10, segments=[at.Segment("text", 0, 10)])
    mask = at.words("elephant").token_mask(SelectionContext(lay, index))
    assert mask.nonzero().flatten().tolist() == [2, 3, 4]
    with pytest.raises(at.ConfigError, match=r"'cat' is not in the prompt; its words are \['an', 'elephant'"):
        index.positions("cat")
    with pytest.raises(at.ConfigError, match="needs the prompt"):
        at.words("dog").token_mask(SelectionContext(lay))


def test_spatial_selectors_need_a_grid_and_valid_fractions():
    with pytest.raises(at.ConfigError, match="x0 < x1"):
        at.box(0.5, 0, 0.4, 1)
    with pytest.raises(at.ConfigError, match=r"in \[0, 1\]"):
        at.point(1.5, 0)
    with pytest.raises(at.ConfigError, match="strictly"):
        at.trajectory([(0.5, (0, 0, 1, 1)), (0.5, (0, 0, 1, 1))])
    no_grid = at.TokenLayout(num_frames=1, tokens_per_frame=4)
    with pytest.raises(at.ConfigError, match="token grid"):
        at.box(0, 0, 1, 1).token_mask(SelectionContext(no_grid))


def test_pixel_masks_select_tokens_at_least_half_covered():
    lay = layout(1, 2, 2, text=0)
    pixels = torch.zeros(4, 4, dtype=torch.bool)
    pixels[:2, :2] = True  # the top-left cell, fully
    pixels[2, 2:] = True  # half of the bottom-right cell
    pixels[3, 0] = True  # a quarter of the bottom-left cell
    mask = at.mask(pixels).token_mask(SelectionContext(lay))
    assert mask.tolist() == [True, False, False, True]


def test_numbers_of_any_real_type_are_accepted_and_nonfinite_ones_refused():
    np = pytest.importorskip("numpy")
    assert at.bias(np.float32(0.5)).value == 0.5
    assert at.steps(stop=np.int64(3)).stop == 3
    for bad in (float("nan"), 1e39, "1"):
        with pytest.raises(at.ConfigError, match=r"bias\(value\)"):
            at.bias(bad)
    with pytest.raises(at.ConfigError, match="must be finite"):
        at.logit_scale(float("inf"))


def test_the_compiled_score_path_equals_the_eager_one():
    from attnsteer.runtime.execute import _score_fn
    from attnsteer.kernels import scored_attention

    lay = layout(4, 4, 4, text=0)
    plan = build_plan(((at.Rule(at.video, at.video, at.scale_if_positive(0.5), pairs=at.token_distance(20)),
                        SelectionContext(lay)),), lay, None, 1, 2)
    fn = _score_fn(plan.scored, 1, 2, lay.seq_len, torch.device("cpu"))
    q, k, v = qkv(1, 2, lay.seq_len, seed=9)
    compiled, _ = scored_attention(q, k, v, fn, compile=True, chunk=16)
    eager, _ = scored_attention(q, k, v, fn, compile=False, chunk=16)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


def test_cross_attention_rules_steer_wans_text_calls_exactly(wan_pipe, image):
    import numpy as np

    from attnsteer.testing.tiny import wan_call_kwargs, word_tokenizer

    prompt = "a red dog runs"
    kwargs = wan_call_kwargs(prompt=prompt, num_inference_steps=2, output_type="latent")

    def run():
        return np.asarray(wan_pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames[0])

    table = token_table(3, 4, 4, text=0)  # 3 latent frames of 4x4 tokens are the queries
    box = (0.0, 0.0, 0.5, 1.0)
    rows = torch.tensor([in_box(t, box) for t in table])
    dog = 2  # 'a', 'red', 'dog' in the word-level tokenizer, no special tokens
    edit_mode = EditedAttention(lambda s: s + 3.0 * (rows[:, None] & (torch.arange(512) == dog)[None, :]).double(),
                                lambda q, k: k.shape[-2] == 512 and q.shape[-2] != 512)
    with edit_mode:
        expected = run()
    assert edit_mode.calls == 2 * 2 * 2  # 2 steps x 2 branches x 2 blocks
    rule = at.Rule(at.box(*box), at.words("dog"), at.bias(3.0), attention="cross")
    with at.steer(wan_pipe, rule, prompt=prompt, tokenizer=word_tokenizer()) as steering:
        got = run()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert steering.summary()["rules"][0]["layers"] == ["transformer.blocks.0.attn2", "transformer.blocks.1.attn2"]
    with pytest.raises(at.SteeringError, match="declares no cross-attention modules"):
        from attnsteer.testing.tiny import tiny_cogvideox

        with at.steer(tiny_cogvideox(), at.Rule(at.video, at.text, at.bias(1.0), attention="cross")):
            pass


def test_grouped_rules_under_autograd_take_the_differentiable_path():
    lay, table = layout(2, 1, 2), token_table(2, 1, 2)
    q, k, v = (t.requires_grad_() for t in qkv(1, 2, lay.seq_len, seed=10, dtype=torch.float64))
    rule = at.Rule(at.frames[1], at.frames[0] | at.text, at.bias(-0.7))
    plan, out, _ = run([rule], lay, q, k, v)
    assert plan.path == "grouped"
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    sel = pair_matrix(table, lambda a, b, i, j: a["frame"] == 1 and (b["frame"] == 0 or b["kind"] == "text"))
    expected, _ = dense(q, k, v, lambda s: s - 0.7 * sel.double())
    torch.testing.assert_close(grads, torch.autograd.grad(expected.sum(), (q, k, v)), atol=1e-5, rtol=1e-5)
    with pytest.raises(at.AttnsteerError, match="no backward"):
        at.kernels.grouped_attention(q, k, v, lay.group_ids(), lay.group_ids(), bias=torch.zeros(3, 3))


@pytest.mark.parametrize("shape", [(1, 0, 6), (0, 2, 6), (1, 2, 0)])
def test_empty_inputs_give_empty_outputs(shape):
    b, h, n = shape
    q = torch.randn(b, h, n, 4)
    k = torch.randn(b, h, 3, 4)
    groups, kgroups = torch.zeros(n, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    out, mass = at.kernels.grouped_attention(q, k, k, groups, kgroups, bias=torch.zeros(1, 1), return_mass=True)
    assert out.shape == (b, h, n, 4) and mass.shape == (b, h, 1, 1)
    with pytest.raises(at.AttnsteerError, match="at least one key"):
        at.kernels.grouped_attention(q, k[:, :, :0], k[:, :, :0], groups, kgroups[:0])
