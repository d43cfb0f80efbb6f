"""A procedural video world and a small trained image-to-video model, for demos and tests.

``ToyI2VPipeline.from_shipped()`` loads the weights shipped in the package (no download);
``python -m attnsteer.toy.train`` reproduces them.
"""

from __future__ import annotations

from typing import Any

from .pipeline import ToyI2VPipeline
from .world import FRAMES, SIZE, VOCABULARY, Clip, sample_clip


def load_toy_pipeline() -> ToyI2VPipeline:
    """The shipped toy image-to-video pipeline."""
    return ToyI2VPipeline.from_shipped()


def toy_call_kwargs(prompt: str = "right fast", **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a toy pipeline call (20 steps, guidance 3)."""
    kwargs: dict[str, Any] = dict(prompt=prompt or "right fast", num_inference_steps=20, guidance_scale=3.0,
                                  output_type="np")
    kwargs.update(overrides)
    return kwargs


__all__ = ["FRAMES", "SIZE", "VOCABULARY", "Clip", "ToyI2VPipeline", "load_toy_pipeline", "sample_clip",
           "toy_call_kwargs"]
