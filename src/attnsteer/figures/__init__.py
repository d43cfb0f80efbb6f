"""Figures and video files: frame-map and heatmap plots (:mod:`.viz`, :mod:`.heatmaps`), reading and writing
videos and images (:mod:`.videoio`), and the motion metrics that sweeps and the demo plot (:mod:`.metrics`).
It may import the recordings of :mod:`attnsteer.inspection` and everything below them, never the scale layer or
the command line."""
