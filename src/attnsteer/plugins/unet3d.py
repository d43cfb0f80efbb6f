"""ModelScope text-to-video UNets: ``UNet3DConditionModel`` (deprecated ``TextToVideoSDPipeline``,
``VideoToVideoSDPipeline``) and ``I2VGenXLUNet`` (deprecated ``I2VGenXLPipeline``).

Layout facts:

- Spatial attention (``attentions.j.transformer_blocks.0.attn1``: the h*w positions of one frame,
  batch B*F; ``attn2``: cross-attention to the prompt, and in I2VGen-XL to image context tokens) runs
  per frame. Temporal attention ``TransformerTemporalModel`` folds space into the batch,
  (B*F, C, h, w) -> (B*h*w, F, C), video-major: ``transformer_in`` after ``conv_in`` and
  ``{down_blocks.i,mid_block,up_blocks.i}.temp_attentions.j``, whose ``transformer_blocks.0``
  run ``attn1`` and ``attn2`` both as self-attention over the F frames (``double_self_attention``,
  no encoder states). I2VGen-XL also runs ``image_latents_temporal_encoder.attn1`` over the F frames
  of its image-condition latents (the image latent in frame 0, a frame-position mask) before
  ``conv_in``. Legacy ``Attention`` with ``AttnProcessor2_0`` (F.sdpa).
- Which calls rules act on: every temporal self-attention over the F frames, in execution order
  (the image-latent encoder, ``transformer_in``, down blocks, mid block, up blocks; ``attn1`` then
  ``attn2``); one token per frame, F = ``sample.shape[2]`` (the VAE is per image). A spatial call
  holds one frame, so no frame-to-frame rule can act there; spatial attention is left alone.
- Reference frame: latent frame 0; in I2VGen-XL the conditioning image is the first frame (its
  latent in frame 0 of the image-condition latents), in text-to-video it is the first frame.
- Guidance: one forward per step with the batch [uncond, cond], no cache context. I2VGen-XL says
  whether guidance is on (``do_classifier_free_guidance``); the text-to-video pipelines keep it in
  a local variable, so there rows' branches are unknown and rules on one branch raise
  (``branch="all"`` rules act on every row).
"""

from __future__ import annotations

from .temporal import TemporalUNetAdapter


class TextToVideoUNet3DAdapter(TemporalUNetAdapter):
    family = "unet3d"
    model_classes = ("UNet3DConditionModel", "I2VGenXLUNet")
    self_attention = (r"image_latents_temporal_encoder\.attn1|transformer_in\.transformer_blocks\.\d+\.attn[12]"
                      r"|(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.temp_attentions\.\d+\.transformer_blocks\.\d+"
                      r"\.attn[12]")
    text = "cross"
    branches = "batched-uncond-cond"
    tiny_models = ("tiny-i2vgen-xl",)
    tested = ("I2VGen-XL: temporal layers only (image-latent encoder included), in execution order; "
              "UNet3DConditionModel: a frame-to-frame rule against dense on the temporal calls (spatial calls "
              "unchanged); branches unknown where the pipeline does not say whether guidance is on")
    execution_order = ("image_latents_temporal_encoder", "transformer_in", "down_blocks", "mid_block", "up_blocks")
    block_pattern = (r"transformer_in\.transformer_blocks\.\d+"
                     r"|(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.temp_attentions\.\d+\.transformer_blocks\.\d+")
