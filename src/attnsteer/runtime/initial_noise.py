"""The initial-noise hook: a recipe's :class:`~attnsteer.language.noise.InitialNoise` applied to the latents a
diffusers pipeline starts from.

Every diffusers video pipeline makes its initial latents in ``prepare_latents(..., generator, latents)``: drawn
from ``generator``, or the ``latents=`` the caller passed. While a session with such a recipe is active, the
pipeline *instance* answers ``prepare_latents`` with a wrapper that transforms what the pipeline's own method
returns (the first tensor of a tuple, as Wan I2V returns ``(latents, condition)``); the class and the model are not
touched, and the wrapper is taken off on exit. The transform's generator is a CPU ``torch.Generator`` seeded with
the run generator's ``initial_seed()`` (the default generator's without one; per row with a list of generators),
so the run's own random draws are not consumed.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from ..errors import SteeringError
from ..language.noise import InitialNoise

_MISSING = object()


def _seed(generator: Any) -> int:
    return int(generator.initial_seed()) if isinstance(generator, torch.Generator) else int(torch.initial_seed())


def transform_latents(noise: InitialNoise, latents: torch.Tensor, generator: Any, where: str) -> torch.Tensor:
    """``latents`` [B, C, F, H, W] transformed by ``noise`` with generators seeded from the run's ``generator``."""
    if not isinstance(latents, torch.Tensor) or latents.dim() != 5:
        raise SteeringError(f"{noise!r}: {where} made latents of shape {tuple(getattr(latents, 'shape', ()))}; the "
                            "initial-noise hook needs video latents [B, C, F, H, W]")
    if isinstance(generator, (list, tuple)):
        if len(generator) != latents.shape[0]:
            raise SteeringError(f"{noise!r}: {len(generator)} generators for {latents.shape[0]} latent rows")
        rows = [noise.apply(latents[i:i + 1], torch.Generator().manual_seed(_seed(g))) for i, g in enumerate(generator)]
        return torch.cat(rows)
    return noise.apply(latents, torch.Generator().manual_seed(_seed(generator)))


class NoiseHook:
    """The wrapper on one pipeline instance's ``prepare_latents`` while a session is active."""

    def __init__(self, pipeline: Any, noise: InitialNoise) -> None:
        original = getattr(pipeline, "prepare_latents", None)
        if not callable(original):
            raise SteeringError(
                f"{noise!r} transforms the initial latents through the pipeline's prepare_latents (where diffusers "
                f"pipelines draw them or take latents=), which {type(pipeline).__name__} does not have; run the "
                "recipe without its initial-noise transform (at.recipes.freenoise(noise=False); on the command line "
                "--param noise=false), or draw the latents yourself and pass latents=")
        self.pipeline, self.noise, self.calls = pipeline, noise, 0
        self._previous = pipeline.__dict__.get("prepare_latents", _MISSING)
        signature = inspect.signature(original)
        where = f"{type(pipeline).__name__}.prepare_latents"

        @functools.wraps(original)
        def prepare_latents(*args: Any, **kwargs: Any) -> Any:
            made = original(*args, **kwargs)
            bound = signature.bind_partial(*args, **kwargs).arguments
            generator = bound.get("generator")
            self.calls += 1
            if isinstance(made, tuple):
                return (transform_latents(noise, made[0], generator, where), *made[1:])
            return transform_latents(noise, made, generator, where)

        pipeline.__dict__["prepare_latents"] = prepare_latents

    def remove(self) -> None:
        """Give the pipeline back its own ``prepare_latents`` (or the one a session outside this one set)."""
        if self._previous is _MISSING:
            self.pipeline.__dict__.pop("prepare_latents", None)
        else:
            self.pipeline.__dict__["prepare_latents"] = self._previous


def install(pipeline: Any, noise: InitialNoise | None) -> NoiseHook | None:
    """The noise hook of ``noise`` on ``pipeline`` (None without a transform); a bare model is refused."""
    if noise is None:
        return None
    if pipeline is None:
        raise SteeringError(f"{noise!r} transforms a pipeline's initial latents: steer the pipeline, not a bare model "
                            "(or transform the latents you pass yourself)")
    return NoiseHook(pipeline, noise)
