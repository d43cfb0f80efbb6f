"""Recipes: named, parameterised groups of rules, written as plain Python.

This folder is installed as ``attnsteer.recipes``. Each public function returns an
:class:`attnsteer.Recipe`; :data:`RECIPES` lists them for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from .direct_a_video import direct_a_video
from .dymos import dymos
from .enhance_a_video import enhance_a_video
from .local_window import local_window
from .peekaboo import peekaboo
from .perturbed import pag, stg
from .temperature import proportional_attention, ultravico

RECIPES: dict[str, Callable[..., object]] = {
    "dymos": dymos,
    "direct_a_video": direct_a_video,
    "enhance_a_video": enhance_a_video,
    "peekaboo": peekaboo,
    "local_window": local_window,
    "proportional_attention": proportional_attention,
    "ultravico": ultravico,
    "pag": pag,
    "stg": stg,
}

__all__ = ["RECIPES", "direct_a_video", "dymos", "enhance_a_video", "local_window", "pag", "peekaboo",
           "proportional_attention", "stg", "ultravico"]
