"""Region arguments shared by the region recipes: a box given as a tuple or as text ("x0,y0,x1,y1"),
optionally moving to an end box over the video."""

from __future__ import annotations

import attnsteer as at
from attnsteer.language.geometry import Trajectory
from attnsteer.errors import ConfigError


def parse_box(value: object, field: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) from a 4-sequence or from the CLI's "x0,y0,x1,y1"."""
    if isinstance(value, str):
        try:
            value = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(f"{field} must be 'x0,y0,x1,y1' in fractions of the frame, got {value!r}") from None
    if not isinstance(value, (tuple, list)) or len(value) != 4:
        raise ConfigError(f"{field} must be (x0, y0, x1, y1) in fractions of the frame, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def region(box: object, end_box: object = None) -> Trajectory:
    """The object's region: ``box`` in every frame, or moving linearly from ``box`` to ``end_box``."""
    start = parse_box(box, "box")
    end = start if end_box is None else parse_box(end_box, "end_box")
    return at.trajectory([(0.0, start), (1.0, end)]) if end != start else at.trajectory([(0.0, start)])
