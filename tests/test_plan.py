"""Compiling active rules into a call plan: the grouped bias over cells, or the scored path."""

from __future__ import annotations

import math

import pytest
import torch

import attnsteer as at
from attnsteer.runtime.plan import build_plan
from attnsteer.language.selectors import SelectionContext

LAYOUT = at.TokenLayout(num_frames=3, tokens_per_frame=2)
GRID_LAYOUT = at.TokenLayout(num_frames=2, tokens_per_frame=4, grid=(2, 2))


def build_bias(rules, layout, branches, batch_size, num_heads):
    """The grouped plan's (bias, applied rules), or (None, []) when nothing applies."""
    ctx = SelectionContext(layout)
    plan = build_plan(tuple((r, ctx) for r in rules), layout, branches, batch_size, num_heads)
    if plan.path == "plain":
        return None, list(plan.applied)
    assert plan.path == "grouped"
    return plan.bias, list(plan.applied)


def test_biases_of_rules_on_the_same_pair_add():
    rules = [at.Rule(at.frames[1:], at.frames[0], at.bias(-0.5)), at.Rule(at.frames[2], at.frames[0], at.scale(2.0))]
    bias, applied = build_bias(rules, LAYOUT, None, batch_size=2, num_heads=4)
    expected = torch.zeros(3, 3)
    expected[1:, 0] = -0.5
    expected[2, 0] += math.log(2.0)
    assert bias.shape == (3, 3) and torch.allclose(bias, expected)
    assert applied == rules


def test_branch_rows_and_heads_expand_the_bias():
    rule = at.Rule(at.frames[1:], at.frames[0], at.block(), branch="cond", heads=[1])
    bias, _ = build_bias([rule], LAYOUT, ("uncond", "cond"), batch_size=2, num_heads=3)
    assert bias.shape == (2, 3, 3, 3)
    assert torch.isinf(bias[1, 1, 1:, 0]).all()
    bias[1, 1, 1:, 0] = 0
    assert (bias == 0).all()


def test_branch_only_rule_gives_per_row_bias():
    rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(1.0), branch="uncond")
    bias, _ = build_bias([rule], LAYOUT, ("uncond", "cond"), batch_size=2, num_heads=3)
    assert bias.shape == (2, 3, 3) and bias[0, 1, 0] == 1.0 and (bias[1] == 0).all()


def test_no_selected_pair_gives_no_bias():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="cond")
    assert build_bias([rule], LAYOUT, ("uncond",), batch_size=1, num_heads=2) == (None, [])


def test_unknown_branch_is_an_error_not_a_skip():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="cond")
    with pytest.raises(at.ConfigError, match="guidance branch"):
        build_bias([rule], LAYOUT, None, batch_size=1, num_heads=2)


def test_head_out_of_range():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), heads=[5])
    with pytest.raises(at.ConfigError, match=r"heads \[5\] out of range.*0\.\.1"):
        build_bias([rule], LAYOUT, None, batch_size=1, num_heads=2)


def test_frame_rules_keep_cells_equal_to_layout_groups():
    ctx = SelectionContext(LAYOUT)
    plan = build_plan(((at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0)), ctx),), LAYOUT, None, 1, 1)
    assert plan.path == "grouped" and plan.num_cells == LAYOUT.num_groups
    assert torch.equal(plan.cells, LAYOUT.group_ids())


def test_a_box_refines_cells_and_biases_only_its_tokens():
    ctx = SelectionContext(GRID_LAYOUT)
    region = at.box(0.0, 0.0, 0.5, 1.0)  # the left column of the 2x2 grid, in both frames
    rule = at.Rule(at.frames[1] & region, at.frames[0], at.bias(2.0))
    plan = build_plan(((rule, ctx),), GRID_LAYOUT, None, 1, 1)
    assert plan.path == "grouped" and plan.num_cells == 3  # frame 0; frame 1 in and out of the box
    per_token = plan.bias[plan.cells][:, plan.cells]  # [N, N] expanded for the check
    left = torch.tensor([True, False, True, False] * 2)
    frame = torch.arange(8) // 4
    expected = ((frame == 1) & left)[:, None] & (frame == 0)[None, :]
    assert torch.equal(per_token, expected.float() * 2.0)


def test_elementwise_rules_take_the_scored_path_in_order():
    ctx = SelectionContext(GRID_LAYOUT)
    rules = (at.Rule(at.video, at.video, at.bias(1.0)), at.Rule(at.video, at.video, at.scale_if_positive(0.5),
                                                                 pairs=at.token_distance(3)))
    plan = build_plan(tuple((r, ctx) for r in rules), GRID_LAYOUT, None, 1, 1)
    assert plan.path == "scored" and [s.rule for s in plan.scored] == list(rules)


def test_a_uniform_logit_scale_folds_into_the_call_scale():
    ctx = SelectionContext(LAYOUT)
    plan = build_plan(((at.Rule(at.tokens, at.tokens, at.proportional(train_tokens=3)), ctx),), LAYOUT, None, 1, 1)
    assert plan.path == "plain" and plan.scale_factor == pytest.approx(math.sqrt(math.log(6) / math.log(3)))
