"""Initial-noise transforms: what a recipe does to the latents a pipeline starts from (``Recipe(initial_noise=...)``).

The runtime (:mod:`attnsteer.runtime.initial_noise`) hands each transform the pipeline's initial latents
[B, C, F, H, W] (F latent frames) and a ``torch.Generator`` seeded from the run's generator, so the same seed gives
the same video. The model is not touched: only the latents it is given change.
"""

from __future__ import annotations

import attrs
import torch

from ..errors import ConfigError, SteeringError
from ..validation import integer


class InitialNoise:
    """Base class: ``apply(latents [B, C, F, H, W], generator) -> latents`` of the same shape (a new tensor)."""

    def apply(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


@attrs.frozen
class ShuffledNoise(InitialNoise):
    """FreeNoise's noise rescheduling: for f in range(W, F, S), frames ``[f, f + S)`` become the frames
    ``f - W .. f - W + S - 1`` in a random order, in sequence (copied blocks are themselves copies); one permutation
    per block (``torch.randperm(S, generator)``) for the whole batch, as the authors' one ``random.shuffle``."""

    window: int = attrs.field(converter=lambda v: integer(v, "shuffled_noise(window=...)", minimum=1))
    stride: int = attrs.field(converter=lambda v: integer(v, "shuffled_noise(stride=...)", minimum=1))

    def __attrs_post_init__(self) -> None:
        if self.stride > self.window:
            raise ConfigError(f"shuffled_noise(stride={self.stride}) must be <= window={self.window}: each block "
                                "is drawn from the window before it")

    def apply(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        frames = latents.shape[2]
        if frames > self.window and (frames - self.window) % self.stride:
            raise SteeringError(f"{self!r} on {frames} latent frames: (frames - window) % stride must be 0 (the "
                                f"authors' shuffle assumes it); choose a stride that divides {frames - self.window}")
        z = latents.clone()
        for f in range(self.window, frames, self.stride):
            order = torch.randperm(self.stride, generator=generator)
            z[:, :, f:f + self.stride] = z[:, :, f - self.window + order]
        return z

    def __repr__(self) -> str:
        return f"shuffled_noise({self.window}, {self.stride})"


def shuffled_noise(window: int, stride: int) -> ShuffledNoise:
    """FreeNoise's rescheduling of the initial noise over windows of ``window`` frames every ``stride``."""
    return ShuffledNoise(window, stride)


__all__ = ["InitialNoise", "ShuffledNoise", "shuffled_noise"]
