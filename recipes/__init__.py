"""Recipes: named, parameterised groups of rules, written as plain Python.

This folder is installed as ``attnsteer.recipes``. Each recipe is a function returning an
:class:`attnsteer.Recipe`, declared once with :func:`attnsteer.language.recipe.recipe` (``@recipe``
on the function: typed parameters, a one-line description, registration). :data:`RECIPES` maps the
built-in recipes' names to them; ``attnsteer recipes`` also lists third-party ones.
"""

from __future__ import annotations

from attnsteer.language.recipe import RecipeSpec

from .dymos import dymos  # noqa: I001  (first: @recipe registers in import order, which `attnsteer recipes` lists)
from .direct_a_video import direct_a_video
from .enhance_a_video import enhance_a_video
from .freelong import freelong
from .freenoise import freenoise
from .local_window import local_window
from .nag import nag
from .peekaboo import peekaboo
from .perturbed import pag, stg
from .seg import seg
from .subject_motion import subject_motion
from .temperature import proportional_attention, ultravico

RECIPES: dict[str, RecipeSpec] = {r.name: r for r in (dymos, direct_a_video, enhance_a_video, peekaboo, local_window,
                                                      proportional_attention, ultravico, pag, stg, subject_motion, nag,
                                                      seg, freelong, freenoise)}

def __getattr__(name: str) -> RecipeSpec:
    """``at.recipes.<name>`` of a third-party recipe; an unknown name raises AttributeError with a did-you-mean."""
    import difflib

    from attnsteer.language.recipe import available_recipes

    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    found = available_recipes()
    if name in found:
        return found[name]
    close = difflib.get_close_matches(name, [*found, *__all__], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise AttributeError(f"attnsteer.recipes has no recipe {name!r}{hint} (`attnsteer recipes` lists them)")


__all__ = ["RECIPES", "direct_a_video", "dymos", "enhance_a_video", "freelong", "freenoise", "local_window", "nag",
           "pag", "peekaboo", "proportional_attention", "seg", "stg", "subject_motion", "ultravico"]
