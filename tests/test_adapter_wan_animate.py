"""Wan 2.2 Animate beyond the shared battery (whose dense DyMoS leaves the face adapter's per-frame cross-attention
alone and matches): rules reach the self-attention and, with attention="cross", the text cross-attention only.

From the tiny config: 64x64 pixels, VAE /8, patch 2x2 -> 4x4 tokens per frame; 5 pose frames -> the character
image's latent frame and 2 segment frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnsteer as at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import tiny_wan_animate

    return tiny_wan_animate()


def run(pipe, image):
    from attnsteer.testing.tiny import wan_animate_call_kwargs

    kwargs = wan_animate_call_kwargs(output_type="latent", num_inference_steps=2)
    return np.asarray(pipe(image=image, generator=torch.Generator().manual_seed(0), **kwargs).frames)


def test_rules_reach_self_and_text_cross_attention_only(pipe, image):
    vanilla = run(pipe, image)
    rules = (at.Rule(at.frames[1:], at.frames[0], at.bias(-2.0), branch="all"),
             at.Rule(at.video, at.text, at.bias(-1.0), branch="all", attention="cross"))
    with at.inspect(pipe) as rec, at.steer(pipe, *rules) as steering:
        steered = run(pipe, image)
    self_rule, cross_rule = steering.summary()["rules"]
    assert self_rule["layers"] == [f"transformer.blocks.{i}.attn1" for i in range(2)]
    assert cross_rule["layers"] == [f"transformer.blocks.{i}.attn2" for i in range(2)]
    assert (rec.layout.num_frames, rec.layout.reference_frames) == (3, (0,))
    assert np.abs(steered - vanilla).max() > 1e-3
