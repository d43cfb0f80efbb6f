"""Recipes: named, parameterised groups of rules, written as plain Python.

This folder is installed as ``attnsteer.recipes``. Each public function returns an
:class:`attnsteer.Recipe`; :data:`RECIPES` lists them for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from .dymos import dymos

RECIPES: dict[str, Callable[..., object]] = {"dymos": dymos}

__all__ = ["RECIPES", "dymos"]
