"""Sana-Video and SANA-WM are refused with their reason: their self-attention is linear attention."""

from __future__ import annotations

import pytest
import torch

import attnsteer as at


def tiny_sana_video():
    from diffusers import SanaVideoTransformer3DModel

    torch.manual_seed(0)
    return SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=8,
    )


def test_its_self_attention_is_the_linear_processor_and_a_session_raises_naming_it():
    from diffusers.models.transformers.transformer_sana_video import SanaLinearAttnProcessor3_0

    model = tiny_sana_video()
    assert isinstance(model.transformer_blocks[0].attn1.processor, SanaLinearAttnProcessor3_0)
    for session in (lambda: at.steer(model, at.recipes.dymos(gamma=1.0)), lambda: at.inspect(model)):
        with pytest.raises(at.UnsupportedModelError, match=r"\(sana-video\) cannot be steered .*ReLU linear attention"):
            session()


def test_sana_wm_is_refused_naming_its_gated_delta_net_attention():
    SanaWM = type("SanaWMTransformer3DModel", (torch.nn.Module,), {})  # stands in by class name, as adapters match
    with pytest.raises(at.UnsupportedModelError, match=r"\(sana-wm\) cannot be steered .*gated-delta-net linear"):
        at.steer(SanaWM(), at.recipes.dymos(gamma=1.0))
