"""The ``attnsteer`` command: run, inspect, sweep, recipes, models, demo (:mod:`.main`), its heatmap options
(:mod:`.heatmaps`), the ``--model`` loader (:mod:`.models`) and the demo (:mod:`.demo`). The top layer: it may
import every other part of attnsteer."""

from .main import build_parser, join_negative_values, main

__all__ = ["build_parser", "join_negative_values", "main"]
