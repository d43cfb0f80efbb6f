"""``ToyI2VPipeline``: the toy model behind diffusers' calling convention.

Like ``WanImageToVideoPipeline`` it runs one transformer forward per guidance branch and step,
under ``cache_context("cond")`` then ``cache_context("uncond")``, so the Wan adapter and every
recipe work on it unchanged. ``image=None`` runs the same weights as text-to-video.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from PIL import Image

from ..errors import ConfigError
from ..language.words import word_level_tokenizer
from .model import WEIGHTS, PromptTable, condition, from_latents, has_frame_ramp, load_modules, read_info, to_latents
from .world import FRAMES, SIZE, VOCABULARY

SCHEDULER_SHIFT = 2.0


class ToyPipelineOutput(BaseOutput):
    frames: list[np.ndarray]


class ToyI2VPipeline(DiffusionPipeline):
    """Image-to-video on the toy world (32 x 32, 9 frames)."""

    def __init__(self, transformer: torch.nn.Module, prompts: PromptTable, scheduler: FlowMatchEulerDiscreteScheduler,
                 clean_reference: bool = False):
        super().__init__()
        self.register_modules(transformer=transformer, prompts=prompts, scheduler=scheduler)
        # Weights of the "clean-reference" training recipe expect latent frame 0 to hold the clean reference.
        self.clean_reference = clean_reference
        # One token per prompt word, as the prompt table embeds them, so ``at.words("fast")`` selects a word.
        self.tokenizer = word_level_tokenizer(" ".join(VOCABULARY[1:]))

    @classmethod
    def from_shipped(cls) -> ToyI2VPipeline:
        """The pipeline with the weights shipped in the package (no download)."""
        return cls.from_weights(WEIGHTS)

    @classmethod
    def from_weights(cls, path: Path, device: str | torch.device = "cpu") -> ToyI2VPipeline:
        """The pipeline with the weights in ``path`` (as written by ``python -m attnsteer.toy.train``)."""
        transformer, prompts = load_modules(path)
        clean = read_info(path).get("recipe") == "clean-reference"
        pipe = cls(transformer.to(device), prompts.to(device), FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT),
                   clean_reference=clean)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self) -> Any:
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return getattr(self, "_interrupt", False)

    def encode_prompt(self, prompt: str | list[str], **_ignored: Any) -> tuple[torch.Tensor, None]:
        """(prompt embeddings [B, 2, 32], None) from the prompt table, the toy's text encoder, as diffusers
        pipelines' ``encode_prompt`` returns them; "" is the empty prompt (the unconditional branch's)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return self.prompts([p or None for p in prompts]), None

    def _reference(self, image: Any) -> torch.Tensor | None:
        """Reference latents [1, 48, h, w] of one image (None for text-to-video)."""
        if image is None:
            return None
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
        array = np.asarray(image, dtype=np.float32)
        if array.shape != (SIZE, SIZE, 3):
            raise ConfigError(f"image must be a PIL image or an array [{SIZE}, {SIZE}, 3] in 0..1, got {array.shape}")
        return to_latents(torch.from_numpy(array)[None, None])[:, :, 0]

    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        prompt: str | list[str] = "right fast",
        num_frames: int = FRAMES,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        **_ignored: Any,
    ) -> ToyPipelineOutput:
        """One video per prompt. A list of prompts is one batch (as in diffusers): ``image`` and
        ``generator`` are then lists of the same length (or one image for all), and each video
        starts from its own generator's noise, so it equals the video of a call with that clip alone
        (to float rounding). ``callback_on_step_end(pipe, step, timestep, {"latents": ...})`` runs
        after each step, as in diffusers; setting ``pipe._interrupt`` there skips the remaining steps."""
        if num_frames != FRAMES:
            raise ConfigError(f"num_frames must be {FRAMES} for the toy model, got {num_frames}")
        if output_type not in ("np", "latent"):
            raise ConfigError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        images = _per_video(image, len(prompts), "image", single=lambda x: x is None or not isinstance(x, list))
        generators = _per_video(generator, len(prompts), "generator", single=lambda x: not isinstance(x, list))
        self._guidance_scale = guidance_scale
        device, dtype = self.transformer.device, self.transformer.dtype  # float64 components run in float64
        shape = (1, self.transformer.config.out_channels, FRAMES, SIZE // 4, SIZE // 4)
        # drawn on the CPU, one clip at a time: the same noise on any device and in any batch
        latents = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(device, dtype)
        references = [self._reference(im) for im in images]
        has_image = [r is not None for r in references]
        if any(has_image) and not all(has_image):
            raise ConfigError("image must be given for every video of a batch or for none")
        reference = torch.cat(references).to(device, dtype) if all(has_image) else None
        cond_channels = condition(reference, latents, has_frame_ramp(self.transformer))
        text = self.prompts(prompts)
        null = self.prompts([None] * len(prompts))
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        self._interrupt = False
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                if self._interrupt:
                    continue
                self._current_timestep = t
                if self.clean_reference and reference is not None:
                    latents[:, :, 0] = reference
                inputs = torch.cat([latents, cond_channels], dim=1)
                timestep = t.expand(len(prompts))
                with self.transformer.cache_context("cond"):
                    velocity = self.transformer(hidden_states=inputs, timestep=timestep,
                                                encoder_hidden_states=text, return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    with self.transformer.cache_context("uncond"):
                        unconditional = self.transformer(hidden_states=inputs, timestep=timestep,
                                                         encoder_hidden_states=null, return_dict=False)[0]
                    velocity = unconditional + guidance_scale * (velocity - unconditional)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)
                bar.update()
        self._current_timestep = None
        if self.clean_reference and reference is not None:
            latents[:, :, 0] = reference
        if output_type == "latent":
            return ToyPipelineOutput(frames=list(latents.cpu().numpy()))
        return ToyPipelineOutput(frames=list(from_latents(latents).cpu().numpy()))


def _per_video(value: Any, count: int, name: str, single: Any) -> list[Any]:
    """``value`` once per video of a batch: a single value repeated, or a list of exactly ``count``."""
    if single(value):
        return [value] * count
    if len(value) != count:
        raise ConfigError(f"{name} must be one value or a list of {count} (one per prompt), got {len(value)}")
    return list(value)
