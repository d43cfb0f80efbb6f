"""The generic adapter on a small pure-torch video transformer that calls F.sdpa itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from dense_reference import DenseAttention, frame_bias

FRAMES, TOKENS, DIM, HEADS = 4, 6, 16, 2


class SelfAttention(torch.nn.Module):
    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.out = torch.nn.Linear(DIM, DIM)
        self.by_hand = by_hand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        if self.by_hand:  # what a custom kernel looks like to attnsteer: no F.sdpa call
            out = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out(out.transpose(1, 2).reshape(b, n, DIM))


class TinyVideoTransformer(torch.nn.Module):
    """video [B, F, T, C] -> same shape; two pre-norm attention blocks over the flattened frames."""

    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(DIM) for _ in range(2))
        self.attns = torch.nn.ModuleList(SelfAttention(by_hand) for _ in range(2))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.flatten(1, 2)
        for norm, attn in zip(self.norms, self.attns):
            x = x + attn(norm(x))
        return x.view_as(video)


def layout(model, inputs):
    _, frames, tokens, _ = inputs["video"].shape
    return at.TokenLayout(num_frames=frames, tokens_per_frame=tokens)


ADAPTER = at.GenericAdapter(layout=layout, attention=r"attns\.\d+")
UNCOND_COND = at.GenericAdapter(layout=layout, attention=r"attns\.\d+", branches=lambda inputs, b: ("uncond", "cond"))


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    return TinyVideoTransformer(), torch.randn(2, FRAMES, TOKENS, DIM)


def dense_bias(rows):
    return lambda q: frame_bias(FRAMES * TOKENS, 0, FRAMES, TOKENS, -1.5, rows, 2)


def test_rule_on_a_plain_torch_model_matches_dense(model_and_input):
    model, video = model_and_input
    vanilla = model(video)
    with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(0.0)), adapter=ADAPTER):
        torch.testing.assert_close(model(video), vanilla, atol=1e-6, rtol=1e-6)
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.5))
    with at.steer(model, rule, adapter=ADAPTER) as steering:
        steered = model(video)
    with DenseAttention(dense_bias([0, 1])):
        reference = model(video)
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=1e-5)
    assert (steered - vanilla).abs().max() > 1e-3
    assert steering.summary()["rules"][0]["layers"] == ["attns.0", "attns.1"]
    assert torch.equal(model(video), vanilla)
    assert not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in model.modules())


def test_attention_function_picks_the_layers(model_and_input):
    model, video = model_and_input
    only_second = at.GenericAdapter(layout=layout, attention=lambda m: [("second", m.attns[1])])
    with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.5)), adapter=only_second) as steering:
        steered = model(video)
    calls = iter(range(2))
    with DenseAttention(lambda q: dense_bias([0, 1])(q) if next(calls) == 1 else None):
        reference = model(video)
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=1e-5)
    assert steering.summary()["rules"][0]["layers"] == ["second"]


def test_branch_function_picks_the_rows_and_frame_maps_match_dense(model_and_input):
    model, video = model_and_input
    cond_rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.5), branch="cond")
    with at.steer(model, cond_rule, adapter=UNCOND_COND):
        steered = model(video)
    with DenseAttention(dense_bias([1])):
        second_row = model(video)
    with DenseAttention(dense_bias([0])):
        first_row = model(video)
    torch.testing.assert_close(steered, second_row, atol=1e-5, rtol=1e-5)
    assert (steered - first_row).abs().max() > 1e-3, "rows swapped would have matched"
    dense = DenseAttention(groups=lambda q: torch.arange(FRAMES * TOKENS) // TOKENS)
    with dense:
        model(video)
    with at.inspect(model, adapter=UNCOND_COND) as rec:
        model(video)
    assert rec.frame_map().shape == (FRAMES, FRAMES)
    for layer, mass in enumerate(dense.masses):
        for row, branch in enumerate(("uncond", "cond")):
            torch.testing.assert_close(rec.frame_map(layers=[layer], branch=branch).double(), mass[row].mean(0),
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.frame_map().sum(-1), torch.ones(FRAMES), atol=1e-5, rtol=0)


def test_attention_computed_without_sdpa_raises(model_and_input):
    _, video = model_and_input
    model = TinyVideoTransformer(by_hand=True)
    with pytest.raises(at.SteeringError, match="without calling torch.nn.functional.scaled_dot_product_attention"):
        with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0)), adapter=ADAPTER):
            model(video)
    assert not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in model.modules())


def test_unknown_branch_without_a_branch_function_raises(model_and_input):
    model, video = model_and_input
    with pytest.raises(at.ConfigError, match="guidance branch"):
        with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), branch="cond"), adapter=ADAPTER):
            model(video)


def test_bad_branch_function_results_raise(model_and_input):
    model, video = model_and_input
    for result in (("cond",), ("cond", "positive")):
        adapter = at.GenericAdapter(layout=layout, attention=r"attns\.\d+", branches=lambda inputs, b, r=result: r)
        with pytest.raises(at.ConfigError, match="branches function"):
            with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), branch="cond"), adapter=adapter):
                model(video)


def test_unsupported_without_adapter_and_bad_adapter_arguments(model_and_input):
    model, _ = model_and_input
    with pytest.raises(at.UnsupportedModelError, match="TinyVideoTransformer"):
        at.steer(model, at.recipes.dymos())
    with pytest.raises(at.ConfigError, match="layout"):
        at.GenericAdapter(layout=3, attention="x")
    with pytest.raises(at.ConfigError, match="regex"):
        at.GenericAdapter(layout=layout, attention="attns.(")
    with pytest.raises(at.ConfigError, match="branches"):
        at.GenericAdapter(layout=layout, attention="x", branches="cond")
    not_pairs = at.GenericAdapter(layout=layout, attention=lambda m: list(m.attns))
    with pytest.raises(at.ConfigError, match=r"\(name, module\) pairs"):
        with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0)), adapter=not_pairs):
            pass
    assert not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in model.modules())
