"""Helpers every tiny family shares: pseudo-embeddings of prompts and their masks, the test image, a word tokenizer,
the small VAEs and schedulers several families reuse. Imports no family module."""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' notices while a tiny pipeline is built (e.g. that torchvision is absent and the
    PIL image processor is used) say nothing about the tiny model; the verbosity is restored after."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def prompt_embedding(text: str, length: int, dim: int) -> torch.Tensor:
    """A fixed [1, length, dim] embedding for ``text`` (seeded by its hash), standing in for a text encoder."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return torch.randn(1, length, dim, generator=torch.Generator().manual_seed(seed))


def test_image(size: int = 64) -> Any:
    """A deterministic RGB test image: a colour gradient with a disc, the default ``--image``."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([x, y, 1 - x * y], axis=-1)
    disc = (x - 0.35) ** 2 + (y - 0.55) ** 2 < 0.04
    rgb[disc] = (0.95, 0.8, 0.1)
    return Image.fromarray((rgb * 255).astype("uint8"))

test_image.__test__ = False  # a helper, not a test: pytest must not collect it where a test module imports it


def text_mask(text: str, length: int) -> torch.Tensor:
    """A [1, length] attention mask with one valid token per word plus one, the rest padding (as a tokenizer pads)."""
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[:, : min(length, len(text.split()) + 1)] = 1
    return mask


def text_embedding(text: str, length: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A pseudo-embedding of ``text`` [1, length, dim] and its padded mask [1, length]."""

    return prompt_embedding(text, length, dim), text_mask(text, length)


def clip_image_processor_class() -> Any:
    """The PIL CLIP image processor where transformers has it (no torchvision warning), else the default one."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def clip_image_encoder() -> tuple[Any, Any]:
    """A tiny random CLIP vision encoder (32x32 input) and its image processor."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPImageProcessor = clip_image_processor_class()
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModelWithProjection(config), processor


def word_tokenizer(vocabulary: str = "a an the cat dog red blue ball grass runs jumps on in left right") -> Any:
    """The tiny pipelines' word-level tokenizer, so ``at.words(...)`` works on their prompts."""
    from ..language.words import word_level_tokenizer

    return word_level_tokenizer(vocabulary)


def no_progress_bar(pipe: Any) -> Any:
    """``pipe`` with its progress bar off (tiny runs print nothing)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.cache
def text_to_video(pipeline_class: type) -> type:
    """A subclass of the text-to-video ``pipeline_class`` whose ``__call__`` accepts and ignores ``image``."""

    def __call__(self, *args: Any, image: Any = None, **kwargs: Any) -> Any:
        return pipeline_class.__call__(self, *args, **kwargs)

    doc = (f"{pipeline_class.__name__} for the built-in tiny models: text-to-video, so the ``image`` every "
           "tiny model is called with is ignored.")
    # attnsteer_takes_image: the CLI refuses --image here, as for the pipeline class itself
    return type(f"Tiny{pipeline_class.__name__}", (pipeline_class,),
                {"__call__": __call__, "__doc__": doc, "attnsteer_takes_image": False})


def wan_vae() -> Any:
    """The tiny Wan VAE (z_dim 16, /8 in space, /4 in time), random weights."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def flow_unipc() -> Any:
    """The flow-matching UniPC scheduler the Wan-derived tiny pipelines use (shift 3)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def sd_vae(vae_class: type | None = None) -> Any:
    """A 2x-downsampling image VAE (4 latent channels) for the Stable-Diffusion-based tiny pipelines."""
    from diffusers import AutoencoderKL

    return (vae_class or AutoencoderKL)(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2, layers_per_block=1,
    )
