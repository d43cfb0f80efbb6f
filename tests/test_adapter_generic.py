"""The generic adapter on a small pure-torch video transformer that calls F.sdpa itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnsteer as at
from dense_reference import DenseAttention, frame_bias

FRAMES, TOKENS, DIM, HEADS = 4, 6, 16, 2


class SelfAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.out = torch.nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, DIM))


class TinyVideoTransformer(torch.nn.Module):
    """video [B, F, T, C] -> same shape; two pre-norm attention blocks over the flattened frames."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(DIM) for _ in range(2))
        self.attns = torch.nn.ModuleList(SelfAttention() for _ in range(2))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = video.flatten(1, 2)
        for norm, attn in zip(self.norms, self.attns):
            x = x + attn(norm(x))
        return x.view_as(video)


def layout(model, inputs):
    _, frames, tokens, _ = inputs["video"].shape
    return at.TokenLayout(num_frames=frames, tokens_per_frame=tokens)


ADAPTER = at.GenericAdapter(layout=layout, attention=r"attns\.\d+")


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    return TinyVideoTransformer(), torch.randn(2, FRAMES, TOKENS, DIM)


def test_rule_on_a_plain_torch_model_matches_dense(model_and_input):
    model, video = model_and_input
    vanilla = model(video)
    rule = at.Rule(at.frames[1:], at.frames[0], at.bias(-1.5))
    with at.steer(model, rule, adapter=ADAPTER) as steering:
        steered = model(video)
    with DenseAttention(lambda q: frame_bias(FRAMES * TOKENS, 0, FRAMES, TOKENS, -1.5, [0, 1], 2)):
        reference = model(video)
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=1e-5)
    assert (steered - vanilla).abs().max() > 1e-3
    assert steering.summary()["rules"][0]["layers"] == ["attns.0", "attns.1"]
    assert torch.equal(model(video), vanilla)
    assert not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in model.modules())


def test_branch_function_and_frame_map(model_and_input):
    model, video = model_and_input
    adapter = at.GenericAdapter(layout=layout, attention=r"attns\.\d+", branches=lambda inputs, b: ("uncond", "cond"))
    cond_rule = at.Rule(at.frames.generated, at.frames.reference, at.bias(-1.5), branch="cond")
    with at.steer(model, cond_rule, adapter=adapter):
        steered = model(video)
    with DenseAttention(lambda q: frame_bias(FRAMES * TOKENS, 0, FRAMES, TOKENS, -1.5, [1], 2)):
        reference = model(video)
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=1e-5)
    dense = DenseAttention(groups=lambda q: torch.arange(FRAMES * TOKENS) // TOKENS)
    with dense:
        model(video)
    with at.inspect(model, adapter=adapter) as rec:
        model(video)
    for layer, mass in enumerate(dense.masses):
        torch.testing.assert_close(rec.frame_map(layers=[layer], branch="cond").double(), mass[1].mean(0),
                                   atol=1e-5, rtol=0)


def test_unknown_branch_without_a_branch_function_raises(model_and_input):
    model, video = model_and_input
    with pytest.raises(at.ConfigError, match="guidance branch"):
        with at.steer(model, at.Rule(at.frames[1:], at.frames[0], at.bias(-1.0), branch="cond"), adapter=ADAPTER):
            model(video)


def test_unsupported_without_adapter_and_bad_adapter_arguments(model_and_input):
    model, _ = model_and_input
    with pytest.raises(at.UnsupportedModelError, match="TinyVideoTransformer"):
        at.steer(model, at.recipes.dymos())
    with pytest.raises(at.ConfigError, match="layout"):
        at.GenericAdapter(layout=3, attention="x")
