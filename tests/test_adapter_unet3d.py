"""ModelScope-style video UNets beyond the shared battery (tests/test_families.py runs tiny-i2vgen-xl, whose dense
reference edits every 3-token call, i.e. the temporal ones, and leaves the per-frame spatial calls alone): which
modules are hooked, and branches where the pipeline does not say whether guidance is on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

TEMPORAL = ["image_latents_temporal_encoder.attn1", "transformer_in.transformer_blocks.0.attn1",
            "transformer_in.transformer_blocks.0.attn2"] + [
    f"{block}.temp_attentions.{j}.transformer_blocks.0.attn{a}"
    for block, modules in (("down_blocks.0", 1), ("mid_block", 1), ("up_blocks.1", 2))
    for j in range(modules) for a in (1, 2)]


@pytest.fixture(scope="module")
def pipe():
    from attnsteer.testing.tiny import build_tiny

    return build_tiny("tiny-i2vgen-xl")[0]


def test_temporal_self_attention_only_in_execution_order(pipe):
    from attnsteer.contract.registry import require_adapter

    adapter = require_adapter(pipe.unet)
    assert [name for name, _ in adapter.attention_modules(pipe.unet)] == TEMPORAL
    assert [name for name, _ in adapter.blocks(pipe.unet)][0] == "transformer_in.transformer_blocks.0"


def test_branches_are_unknown_where_the_pipeline_does_not_say_whether_guidance_is_on(pipe):
    from attnsteer.contract.registry import require_adapter

    adapter = require_adapter(pipe.unet)
    text_to_video = SimpleNamespace()  # TextToVideoSDPipeline keeps do_classifier_free_guidance local
    assert adapter.branches(pipe.unet, {}, None, 2, text_to_video) is None
    assert adapter.branches(pipe.unet, {}, None, 2, SimpleNamespace(do_classifier_free_guidance=True)) == (
        "uncond", "cond")


def test_text_to_video_unet_a_frame_to_frame_rule_matches_dense_on_the_temporal_calls():
    import torch
    from diffusers import UNet3DConditionModel

    import attnsteer as at
    from dense_reference import EditedAttention

    torch.manual_seed(0)
    unet = UNet3DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=2,
    )
    sample, text = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 8)  # 2 videos, 3 frames; spatial calls: 64 or 16
    with torch.no_grad():
        vanilla = unet(sample, 10, text).sample
        with at.steer(unet, at.Rule(at.frames[1:], at.frames[0], at.bias(-2.0))):
            steered = unet(sample, 10, text).sample

        def edit(logits):
            logits[..., 1:, 0] -= 2.0
            return logits

        temporal = EditedAttention(edit, lambda q, k: q.shape[-2] == k.shape[-2] == 3)
        with temporal:
            reference = unet(sample, 10, text).sample
    assert temporal.calls == 10 and (steered - vanilla).abs().max() > 1e-3
    torch.testing.assert_close(steered, reference, atol=1e-5, rtol=0)
