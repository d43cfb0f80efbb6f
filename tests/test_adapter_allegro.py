"""Allegro beyond the shared battery (tests/test_families.py): a rule on its text cross-attention
(``attn2``), whose text arrives as ``encoder_hidden_states`` [B, 1, L, C] and whose padded keys carry an
additive -10000 bias.

Geometry from the tiny config: 32x32 pixels, 9 frames -> 3 latent frames of 2x2 tokens (12 video queries);
8 text keys, "a red dog runs" keeps 5 valid (one per word and one more).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import attnsteer as at
from attnsteer.testing.tiny import build_tiny, word_tokenizer
from dense_reference import sdpa_arguments

pytestmark = pytest.mark.usefixtures("one_thread")
VIDEO, TEXT, DOG = 12, 8, 2  # 'a', 'red', 'dog': the word tokenizer adds no special tokens


class DenseCross(TorchFunctionMode):
    """Cross-attention calls (12 queries, 8 keys) computed densely with ``bias`` added on key ``DOG``."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias, self.calls = bias, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        named = sdpa_arguments(args, kwargs)
        if func is not F.scaled_dot_product_attention or named["key"].shape[-2] != TEXT:
            return func(*args, **kwargs)
        self.calls += 1
        q, k, v = named["query"].double(), named["key"].double(), named["value"].double()
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + named["attn_mask"].double()
        logits[..., DOG] += self.bias
        return (logits.softmax(-1) @ v).to(named["query"].dtype)


def test_a_word_rule_on_cross_attention_matches_dense():
    pipe, call_kwargs = build_tiny("tiny-allegro")
    prompt = "a red dog runs"
    kwargs = call_kwargs(prompt, output_type="latent", num_inference_steps=2)

    def run():
        return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames)

    dense = DenseCross(3.0)
    with dense:
        expected = run()
    assert dense.calls == 2 * 2  # 2 steps x 2 blocks, both branches batched in one call
    rule = at.Rule(at.video, at.words("dog"), at.bias(3.0), attention="cross")
    with at.steer(pipe, rule, prompt=prompt, tokenizer=word_tokenizer()) as steering:
        got = run()
    assert np.abs(got - run()).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert steering.summary()["rules"][0]["layers"] == ["transformer.transformer_blocks.0.attn2",
                                                        "transformer.transformer_blocks.1.attn2"]
