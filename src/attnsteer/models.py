"""Turn a ``--model`` argument into a video generator: a built-in tiny model, the shipped toy
model, or a diffusers pipeline directory / hub name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError


class VideoModel:
    """A pipeline plus how to call it: ``model(image, prompt, seed)`` returns frames [T, H, W, 3] in 0..1."""

    def __init__(self, name: str, pipe: Any, call_kwargs: Callable[..., dict[str, Any]], image_size: tuple[int, int] | None):
        self.name = name
        self.pipe = pipe
        self._call_kwargs = call_kwargs
        self.image_size = image_size  # (height, width) the image is resized to, None: the pipeline decides

    def __call__(self, image: Image.Image | None, prompt: str, seed: int = 0, **overrides: Any) -> np.ndarray:
        kwargs = self._call_kwargs(prompt=prompt, **{k: v for k, v in overrides.items() if v is not None})
        if image is not None and self.image_size is not None:
            image = image.convert("RGB").resize((self.image_size[1], self.image_size[0]))
        device = getattr(self.pipe, "device", torch.device("cpu"))
        generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed)
        output = self.pipe(image=image, generator=generator, **kwargs)
        frames = output.frames[0]
        return np.asarray(frames, dtype=np.float32)

    def show_progress(self, enabled: bool = True) -> None:
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=not enabled)


def _pipeline_call_kwargs(**defaults: Any) -> Callable[..., dict[str, Any]]:
    def make(prompt: str, **overrides: Any) -> dict[str, Any]:
        kwargs = {"prompt": prompt, "output_type": "np", **defaults}
        kwargs.update(overrides)
        return kwargs

    return make


def load_model(name: str, *, device: str | None = None, dtype: str = "auto", seed: int = 0) -> VideoModel:
    """``tiny-<family>`` (random weights, offline), ``toy`` (the shipped trained toy model),
    or a diffusers pipeline directory or hub name (loaded with ``DiffusionPipeline.from_pretrained``)."""
    from .tiny import TINY_MODELS, build_tiny

    if name in TINY_MODELS:
        pipe, call_kwargs = build_tiny(name, seed=seed)
        defaults = call_kwargs(prompt="")
        size = (defaults["height"], defaults["width"]) if "height" in defaults else None
        return VideoModel(name, pipe, call_kwargs, size)
    if name == "toy":
        from .toy import load_toy_pipeline, toy_call_kwargs

        pipe = load_toy_pipeline()
        return VideoModel(name, pipe, toy_call_kwargs, None)
    if name.startswith("tiny-"):
        raise ConfigError(f"--model {name!r} is not a built-in tiny model; choose one of {sorted(TINY_MODELS)} or 'toy'")
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                   "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"--dtype must be one of auto, float32, bfloat16, float16; got {dtype!r}")
    pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=torch_dtype).to(device)
    return VideoModel(name, pipe, _pipeline_call_kwargs(), None)
