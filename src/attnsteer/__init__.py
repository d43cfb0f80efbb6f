"""attnsteer: steer and inspect the self-attention of video diffusion models.

Declare rules (query selector, key selector, schedule, transform, branch, layer and head filters),
apply them to an unmodified model with :func:`steer`, and record frame-level attention with
:func:`inspect`.
"""

from . import kernels, maps, readouts
from .errors import (AttnsteerError, AttnsteerWarning, ConfigError, KernelError, RecordingError, SteeringError,
                     UnsupportedModelError)
from .geometry import box, mask, point, trajectory
from .layout import Segment, TokenLayout
from .outputs import output_scale
from .pairs import frame_distance, frame_window, same_location, same_region, token_distance
from .plugins.base import Adapter
from .plugins.generic import GenericAdapter
from .plugins.hookspecs import hookimpl
from .rules import Recipe, Rule
from .schedules import always, progress, steps, timesteps
from .selectors import audio, frames, text, tokens, video
from .record import Record
from .recipe_registry import recipe
from .session import inspect, steer
from .transforms import (bias, block, fill, identity, logit_scale, proportional, query_bias, scale, scale_if_positive,
                         score_mod, temperature)
from .words import prompt, words

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AttnsteerError",
    "AttnsteerWarning",
    "ConfigError",
    "GenericAdapter",
    "KernelError",
    "Recipe",
    "RecordingError",
    "Record",
    "Rule",
    "Segment",
    "SteeringError",
    "TokenLayout",
    "UnsupportedModelError",
    "always",
    "audio",
    "bias",
    "block",
    "box",
    "fill",
    "frame_distance",
    "frame_window",
    "frames",
    "hookimpl",
    "identity",
    "inspect",
    "kernels",
    "logit_scale",
    "output_scale",
    "maps",
    "mask",
    "point",
    "progress",
    "prompt",
    "proportional",
    "query_bias",
    "readouts",
    "recipe",
    "same_location",
    "same_region",
    "scale",
    "scale_if_positive",
    "score_mod",
    "steer",
    "steps",
    "temperature",
    "text",
    "timesteps",
    "token_distance",
    "tokens",
    "trajectory",
    "video",
    "words",
]


def __getattr__(name: str):
    """Import the heavier parts (recipes, viz, metrics, toy) on first use."""
    import importlib

    if name in ("recipes", "viz", "metrics", "toy", "videoio"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'attnsteer' has no attribute {name!r}")
