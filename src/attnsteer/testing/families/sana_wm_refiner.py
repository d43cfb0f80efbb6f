"""Tiny random-weight pipelines of SANA-WM's LTX-2 refiner (stage 2, chunk-causal with a sliding-window KV cache):
built from configs, offline, seconds on a CPU (registered in :data:`attnsteer.testing.tiny.TINY_MODELS`)."""

from __future__ import annotations

from typing import Any

import torch

from ..tiny_parts import prompt_embedding

TEXT_TOKENS, CAPTION_CHANNELS = 8, 32


def tiny_sana_wm_refiner(seed: int = 0) -> Any:
    """A SANA-WM LTX-2 refiner pipeline (``SanaWMLTX2Refiner``): two refiner blocks, 2 heads, random weights; the
    prompt stands for fixed embeddings (no Gemma-3 text encoder or connectors), latents in and out (no VAE)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.sana_wm.refiner import SanaWMLTX2Refiner

    class TinyRefiner(SanaWMLTX2Refiner):
        """The refiner with a fixed embedding per prompt in place of its text encoder and connectors."""

        def _encode_prompt(self, prompt: str, *, device: torch.device, dtype: torch.dtype):
            embeds = prompt_embedding(prompt, TEXT_TOKENS, CAPTION_CHANNELS).to(device=device, dtype=dtype)
            return embeds, torch.ones(1, TEXT_TOKENS, dtype=torch.long, device=device)

    torch.manual_seed(seed)
    transformer = SanaWMLTX2RefinerTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, caption_channels=CAPTION_CHANNELS, rope_double_precision=False,
        rope_type="split",
    )
    pipe = TinyRefiner(transformer=transformer, connectors=None, tokenizer=None, text_encoder=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_wm_refiner_call_kwargs(prompt: str = "a cat", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a fast call of :func:`tiny_sana_wm_refiner`: a stage-1 latent of 6 latent frames of 4x4
    tokens (sink 1, blocks of 2 frames, a window of 4 frames: the history is trimmed in the last block), latents
    out, the 3-step distilled schedule."""
    kwargs: dict[str, Any] = dict(
        sana_latent=torch.randn(1, 4, 6, 4, 4, generator=torch.Generator().manual_seed(1)), prompt=prompt,
        fps=24.0, sink_size=1, block_size=2, kv_max_frames=4, output_type="latent",
    )
    kwargs.update(overrides)
    return kwargs
