"""Rules, selectors, schedules and transforms: pure data, validated at construction."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import attnsteer as at
from attnsteer.language.schedules import StepInfo

LAYOUT = at.TokenLayout(num_frames=4, tokens_per_frame=3, video_start=2, segments=[at.Segment("text", 0, 2)])


def test_frame_selectors_resolve_to_groups():
    assert at.frames[0].groups(LAYOUT) == {0}
    assert at.frames[-1].groups(LAYOUT) == {3}
    assert at.frames[1:].groups(LAYOUT) == {1, 2, 3}
    assert at.frames[::2].groups(LAYOUT) == {0, 2}
    assert at.frames.reference.groups(LAYOUT) == {0}
    assert at.frames.generated.groups(LAYOUT) == {1, 2, 3}
    assert at.text.groups(LAYOUT) == {4}
    assert at.video.groups(LAYOUT) == {0, 1, 2, 3}
    assert at.tokens.groups(LAYOUT) == {0, 1, 2, 3, 4}


def test_selectors_combine():
    assert (at.frames[0] | at.text).groups(LAYOUT) == {0, 4}
    assert (at.frames[1:] & at.frames[:2]).groups(LAYOUT) == {1}
    assert (~at.frames.reference).groups(LAYOUT) == {1, 2, 3, 4}
    assert repr(at.frames[1:] | ~at.text) == "(frames[1:] | ~text)"


def test_frame_index_out_of_range_names_the_allowed_values():
    layout = at.TokenLayout(num_frames=3, tokens_per_frame=4)
    with pytest.raises(at.ConfigError, match=re.escape("frames[7]") + ".*3 latent frames.*-3..2"):
        at.frames[7].groups(layout)


def test_text_on_a_video_only_layout_is_an_error():
    with pytest.raises(at.ConfigError, match="no text tokens"):
        at.text.groups(at.TokenLayout(num_frames=2, tokens_per_frame=2))


@pytest.mark.parametrize("bad", ["0", 1.5, True, None])
def test_bad_frame_index(bad):
    with pytest.raises(at.ConfigError, match="frames"):
        at.frames[bad]


def test_layout_segments_must_tile_the_sequence():
    with pytest.raises(at.ConfigError, match="tile"):
        at.TokenLayout(num_frames=2, tokens_per_frame=2, video_start=3, segments=[at.Segment("text", 0, 2)])
    assert LAYOUT.seq_len == 14
    assert LAYOUT.group_ids().tolist() == [4, 4] + [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_schedules():
    info = lambda s, n=10, t=None: StepInfo(step=s, num_steps=n, timestep=t)  # noqa: E731
    assert [at.steps(stop=2).active(info(s)) for s in range(4)] == [True, True, False, False]
    assert [at.steps(start=1, stop=3).active(info(s)) for s in range(4)] == [False, True, True, False]
    assert [at.progress(stop=0.2).active(info(s)) for s in range(4)] == [True, True, False, False]
    assert at.progress(start=0.5).active(info(9)) and not at.progress(start=0.5).active(info(4))
    assert at.timesteps(high=900, low=500).active(info(0, t=700.0))
    assert not at.timesteps(high=900, low=500).active(info(0, t=950.0))
    assert at.always.active(StepInfo())
    with pytest.raises(at.ConfigError, match="num_steps"):
        at.progress(stop=0.5).active(StepInfo(step=1))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: at.steps(stop=0), "stop"),
        (lambda: at.steps(start=-1), "start"),
        (lambda: at.steps(start=3, stop=2), "stop"),
        (lambda: at.progress(stop=1.5), "stop"),
        (lambda: at.progress(start=0.5, stop=0.2), "stop"),
        (lambda: at.timesteps(high=float("nan")), "high"),
        (lambda: at.bias(float("nan")), "value"),
        (lambda: at.bias(math.inf), "value"),
        (lambda: at.scale(-1.0), "factor"),
    ],
)
def test_bad_schedules_and_transforms_name_the_field(make, field):
    with pytest.raises(at.ConfigError, match=field):
        make()


def test_transforms_are_logit_biases():
    assert at.bias(-0.6).logit_bias == -0.6
    assert at.scale(2.0).logit_bias == pytest.approx(math.log(2.0))
    assert at.scale(0.0).logit_bias == -math.inf
    assert at.block().logit_bias == -math.inf


def test_rule_validation_names_field_and_allowed_values():
    with pytest.raises(at.ConfigError, match=r"Rule\.branch must be one of \('cond', 'uncond', 'perturbed', 'all'\), got 'foo'"):
        at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), branch="foo")
    with pytest.raises(at.ConfigError, match=r"Rule\.query must be a selector"):
        at.Rule("frames", at.frames[0], at.bias(1.0))
    with pytest.raises(at.ConfigError, match=r"Rule\.transform"):
        at.Rule(at.frames[1:], at.frames[0], 0.5)
    with pytest.raises(at.ConfigError, match=r"Rule\.when"):
        at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), when=range(3))
    with pytest.raises(at.ConfigError, match=r"Rule\.heads"):
        at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), heads=[-1])
    with pytest.raises(at.ConfigError, match=r"Rule\.layers"):
        at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), layers=["("])


def test_rule_layer_filter():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(1.0), layers=[0, "blocks.3.attn1", r"transformer_2\..*"])
    assert rule.matches_layer(0, ["blocks.0.attn1"])
    assert rule.matches_layer(3, ["blocks.3.attn1", "transformer.blocks.3.attn1"])
    assert rule.matches_layer(5, ["blocks.5.attn1", "transformer_2.blocks.5.attn1"])
    assert not rule.matches_layer(5, ["blocks.5.attn1", "transformer.blocks.5.attn1"])


def test_rules_are_frozen_and_hashable():
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(1.0))
    with pytest.raises(AttributeError):
        rule.branch = "cond"
    assert hash(rule) == hash(at.Rule(at.frames[1:], at.frames[0], at.bias(1.0)))


def test_dymos_recipe():
    recipe = at.recipes.dymos(gamma=0.6)
    assert repr(recipe) == "dymos(gamma=0.6, stop=0.2)"
    (rule,) = recipe.rules
    assert rule.query == at.frames.generated and rule.key == at.frames.reference
    assert rule.transform == at.bias(-0.6) and rule.branch == "cond" and rule.when == at.progress(stop=0.2)
    assert at.recipes.dymos(gamma=-1, until_step=3).rules[0].when == at.steps(stop=3)
    assert at.recipes.dymos(reference_queries=True).rules[0].query == at.video
    for bad, field in [(dict(gamma=float("nan")), "gamma"), (dict(stop=0), "stop"), (dict(branch="foo"), "branch")]:
        with pytest.raises(at.ConfigError, match=field):
            at.recipes.dymos(**bad)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**40, 10**40), st.text(max_size=3),
                 st.none(), st.booleans()))
@settings(max_examples=200, deadline=None)
def test_transform_and_schedule_construction_accepts_or_raises_config_error(value):
    """Any value either builds a valid object (finite where it must be) or raises ConfigError, nothing else."""
    import numpy as np

    for make in (at.bias, at.scale, at.logit_scale, at.fill, lambda v: at.progress(stop=v), lambda v: at.steps(stop=v),
                 lambda v: at.box(0, 0, v, 1), lambda v: at.frames[v]):
        for candidate in (value, np.float32(value) if isinstance(value, float) else value):
            try:
                made = make(candidate)
            except at.ConfigError:
                continue
            for field in ("value", "factor", "stop"):
                number = getattr(made, field, None)
                if isinstance(number, float):
                    assert not math.isnan(number) and number != math.inf
