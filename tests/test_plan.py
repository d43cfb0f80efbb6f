"""Compiling active rules to a group-level bias."""

from __future__ import annotations

import math

import pytest
import torch

import attnsteer as at
from attnsteer.plan import build_bias

LAYOUT = at.TokenLayout(num_frames=3, tokens_per_frame=2)


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
