"""attnsteer: steer and inspect the self-attention of video diffusion models.

Declare rules (query selector, key selector, schedule, transform, branch, layer and head filters),
apply them to an unmodified model with :func:`steer`, and record frame-level attention with
:func:`inspect`.

Extensions subclass the exported base classes (docs/extending.md): :class:`Transform` (and
:class:`OutputTransform`), :class:`Selector` (reading a :class:`SelectionContext`), :class:`Pairs`,
:class:`Schedule` (reading a :class:`StepInfo`), :class:`Readout` (reading a :class:`ReadoutCall`),
:class:`PerturbedGuidance` and :class:`Adapter`; recipes are declared with :func:`recipe`.
"""

from . import kernels
from .contract.adapter import Adapter
from .contract.hookspecs import hookimpl
from .errors import (
    AttnsteerError,
    AttnsteerWarning,
    ConfigError,
    KernelError,
    RecordingError,
    SteeringError,
    UnsupportedModelError,
)
from .inspection import maps, masks
from .inspection.record import Record
from .language import readouts
from .language.geometry import box, mask, point, trajectory
from .language.contexts import nag_combine, second_context
from .language.guidance import PerturbedGuidance
from .language.layout import Segment, TokenLayout
from .language.model_layers import ModelDepth, ModelLayers, family_layers, layer_fraction
from .language.noise import InitialNoise, shuffled_noise
from .language.outputs import OutputTransform, output_scale
from .language.pairs import Pairs, frame_distance, frame_window, same_location, same_region, token_distance
from .language.passes import Pass, PassCall, combine_with, frame_windows, multi_pass, spectral_blend, weighted_mean
from .language.query_transforms import QueryTransform, query_blur, query_mean, query_transform
from .language.readouts import Readout, ReadoutCall
from .language.recipe import recipe
from .language.rules import Recipe, Rule
from .language.schedules import Schedule, StepInfo, always, progress, steps, timesteps
from .language.selectors import SelectionContext, Selector, audio, frames, text, tokens, video
from .language.transforms import (
    Transform,
    bias,
    block,
    fill,
    identity,
    logit_scale,
    proportional,
    query_bias,
    scale,
    scale_if_positive,
    score_mod,
    temperature,
)
from .language.words import prompt, words
from .contract.registry import register_adapter
from .plugins.generic import GenericAdapter
from .session import inspect, steer

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AttnsteerError",
    "AttnsteerWarning",
    "ConfigError",
    "GenericAdapter",
    "KernelError",
    "ModelDepth",
    "ModelLayers",
    "OutputTransform",
    "Pairs",
    "PerturbedGuidance",
    "Readout",
    "QueryTransform",
    "ReadoutCall",
    "Recipe",
    "RecordingError",
    "Record",
    "Rule",
    "Schedule",
    "Segment",
    "SelectionContext",
    "Selector",
    "SteeringError",
    "StepInfo",
    "TokenLayout",
    "Transform",
    "UnsupportedModelError",
    "always",
    "audio",
    "bias",
    "block",
    "box",
    "family_layers",
    "fill",
    "frame_distance",
    "frame_window",
    "frames",
    "hookimpl",
    "identity",
    "inspect",
    "kernels",
    "layer_fraction",
    "logit_scale",
    "output_scale",
    "maps",
    "mask",
    "masks",
    "nag_combine",
    "point",
    "progress",
    "prompt",
    "proportional",
    "query_bias",
    "query_blur",
    "query_mean",
    "query_transform",
    "readouts",
    "recipe",
    "register_adapter",
    "same_location",
    "same_region",
    "scale",
    "scale_if_positive",
    "score_mod",
    "second_context",
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
    # multi-pass attention and the initial-noise hook (attnsteer.language.passes, attnsteer.language.noise)
    "InitialNoise",
    "Pass",
    "PassCall",
    "combine_with",
    "frame_windows",
    "multi_pass",
    "shuffled_noise",
    "spectral_blend",
    "weighted_mean",
]


def __getattr__(name: str):
    """Import the heavier parts (recipes, viz, metrics, toy) on first use."""
    import importlib

    lazy = {"recipes": ".recipes", "viz": ".figures.viz", "metrics": ".figures.metrics", "toy": ".toy",
            "videoio": ".figures.videoio"}
    if name in lazy:
        return importlib.import_module(lazy[name], __name__)
    raise AttributeError(f"module 'attnsteer' has no attribute {name!r}")
