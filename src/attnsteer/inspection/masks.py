"""``at.masks``: per-frame token masks drawn from recorded attention, to steer a second run with.

Inspect first, keeping a word map (``at.maps.onto(at.words("cat"))``) or a region map; then
``at.masks.from_attention(rec, word="cat", threshold=0.5)`` marks, in every latent frame, the tokens whose
map value is at least ``threshold`` times the largest value of that frame (and above zero). The result
is a :class:`~attnsteer.language.masks.TokenMask`, a selector: ``at.frames.generated & mask`` is "the
cat in the generated frames", ``at.video & ~mask`` "the background".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RecordingError
from ..language.masks import TokenMask
from ..language.words import words as word_selector
from ..validation import real_number
from .files import load_npz, write_npz
from .map_recording import Heatmap, MapRecording
from .map_specs import MapSpec

FORMAT = "attnsteer-mask-1"
WORD_LABEL = re.compile(r"onto words\((.*?)\)( \(cross-attention\))?")


def _maps_of(recording: Any) -> MapRecording:
    """The map recording of ``at.inspect(..., maps=...)``'s record, of a MapRecording, or of a saved ``maps.npz``."""
    if isinstance(recording, (str, Path)):
        return MapRecording.load(recording)
    found = getattr(recording, "maps", recording)
    if not isinstance(found, MapRecording):
        raise ConfigError(
            "from_attention(recording) must be the record of at.inspect(..., maps=[...]), its .maps, or the path of a "
            f"saved maps.npz; got {type(recording).__name__}"
            + (" (this recording keeps no spatial maps: pass maps= to at.inspect)" if found is None else "")
        )
    return found


def _word_label(maps: MapRecording, word: object) -> str:
    """The recorded label of the word map of ``word`` (self- or cross-attention)."""
    recorded = [label for label in maps.labels if WORD_LABEL.fullmatch(label)]
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(f"from_attention(word=...) must be a prompt word (a non-empty string), got {word!r}")
    wanted = f"onto {word_selector(word)!r}"
    found = [label for label in recorded if label in (wanted, wanted + " (cross-attention)")]
    if not found:
        names = [WORD_LABEL.fullmatch(label).group(1) for label in recorded]  # type: ignore[union-attr]
        raise ConfigError(f"from_attention(word={word!r}): the recording keeps no map of that word; its word maps "
                          f"are {names or 'none'} (record one with "
                          f"at.inspect(maps=[at.maps.onto(at.words({word!r}))]))")
    return found[0]


def _checked_steps(maps: MapRecording, steps: Any) -> list[int] | None:
    """``steps`` as a list of recorded step indices, or ConfigError naming the recorded ones."""
    if steps is None:
        return None
    items = [steps] if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else steps
    if not isinstance(items, Iterable) or isinstance(items, str):
        raise ConfigError(f"from_attention(steps=...) must be step indices, got {steps!r}")
    items = list(items)
    recorded = sorted(set().union(*maps.bin_steps.values()))
    bad = [s for s in items if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s not in recorded]
    if bad or not items:
        raise ConfigError(f"from_attention(steps=...) must be recorded step indices, allowed: {recorded}; "
                          f"got {steps!r}")
    return [int(s) for s in items]


def threshold_value(threshold: object, field: str = "from_attention(threshold=...)") -> float:
    """``threshold`` as a fraction in (0, 1] of each frame's largest value, or ConfigError."""
    value = real_number(threshold, field)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{field} must be a fraction of each frame's largest value in (0, 1], got {threshold!r}")
    return value


def from_heatmap(heatmap: Heatmap, threshold: float = 0.5) -> TokenMask:
    """The tokens of each latent frame of ``heatmap`` whose value is at least ``threshold`` times the frame's
    largest value (and above zero)."""
    if not isinstance(heatmap, Heatmap):
        raise ConfigError(f"from_heatmap(heatmap) must be a Heatmap (rec.maps.heatmap(...)), got {heatmap!r}")
    fraction = threshold_value(threshold, "from_heatmap(threshold=...)")
    values = heatmap.frames.double()
    peak = values.flatten(1).amax(1)[:, None, None]
    tokens = (values > 0) & (values >= fraction * peak)
    if not bool(tokens.any()):
        raise ConfigError(f"{heatmap.title} is zero in every frame: it marks no token, whatever the threshold")
    return TokenMask(tokens, f"{heatmap.label} >= {fraction:g} x frame max; {heatmap.steps}, {heatmap.layers}, "
                             f"{heatmap.branch} branch")


def from_attention(recording: Any, word: str | None = None, map: MapSpec | str | int | None = None,
                   threshold: float = 0.5, steps: Iterable[int] | int | None = None, layers: Any = None,
                   branch: str | None = "cond") -> TokenMask:
    """A per-frame token mask from a recording's word map (``word=``) or any other map (``map=``: a region
    map, ``at.maps.received()``, a label or index): each frame's tokens at ``threshold`` x its peak or above.

    ``steps``, ``layers``, ``branch`` select the recorded calls averaged first, as in ``rec.maps.heatmap``.
    """
    maps = _maps_of(recording)
    if (word is None) == (map is None):
        raise ConfigError("from_attention needs exactly one of word= (a prompt word with a recorded word map) and "
                          f"map= (a recorded map: {maps.labels}); got word={word!r}, map={map!r}")
    threshold_value(threshold)
    label = _word_label(maps, word) if word is not None else map
    heatmap = maps.heatmap(label, steps=_checked_steps(maps, steps), layers=layers, branch=branch)
    return from_heatmap(heatmap, threshold)


def save(mask: TokenMask, path: str | Path) -> Path:
    """Write ``mask`` as ``.npz`` (a 0/1 array [F, rows, cols] and its source), read back by :func:`load`."""
    if not isinstance(mask, TokenMask):
        raise ConfigError(f"masks.save(mask) must be a TokenMask (at.masks.from_attention(...)), got {mask!r}")
    return write_npz(path, {"format": FORMAT, "source": mask.source}, mask.tokens.double().numpy(), "masks.save")


def load(path: str | Path) -> TokenMask:
    """A mask written by :func:`save`."""
    return load_npz(path, _from_saved, "mask", sums_shape="[frames, rows, cols]")


def _from_saved(meta: dict, values: np.ndarray, path: Path | None = None) -> TokenMask:
    if meta.get("format") != FORMAT:
        raise RecordingError(f"not a mask file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if not np.isin(values, (0.0, 1.0)).all():
        raise RecordingError("a mask file holds only 0 and 1")
    try:
        return TokenMask(torch.from_numpy(values == 1.0), str(meta["source"]))
    except ConfigError as exc:
        raise RecordingError(str(exc)) from exc


__all__ = ["TokenMask", "from_attention", "from_heatmap", "load", "save", "threshold_value"]
