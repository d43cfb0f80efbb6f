"""Recipes: named, parameterised groups of rules, written as plain Python.

This folder is installed as ``attnsteer.recipes``. Each public function returns an
:class:`attnsteer.Recipe`; :data:`RECIPES` lists them for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from .dymos import dymos
from .enhance_a_video import enhance_a_video

RECIPES: dict[str, Callable[..., object]] = {"dymos": dymos, "enhance_a_video": enhance_a_video}

__all__ = ["RECIPES", "dymos", "enhance_a_video"]
