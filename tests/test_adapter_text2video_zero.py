"""Text2Video-Zero is refused with its reason: its image UNet's cross-frame attention holds one frame's queries."""

from __future__ import annotations

import pytest
import torch

import attnsteer as at


def test_a_session_on_the_image_unet_raises_naming_the_cross_frame_attention():
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))  # as TextToVideoZeroPipeline sets it
    for session in (lambda: at.steer(unet, at.recipes.dymos(gamma=1.0)), lambda: at.inspect(unet)):
        with pytest.raises(at.UnsupportedModelError, match=r"\(text2video-zero\) cannot be steered .*CrossFrameAttn"):
            session()
