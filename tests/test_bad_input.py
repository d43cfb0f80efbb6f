"""Hostile and mistaken input (issue 22 §4): every bad value is refused early with an AttnsteerError naming
the field, never a raw exception, an allocation the input's size does not justify, or a silent fallback."""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.language.layout import TokenLayout


# --- §4.1 saved recordings -----------------------------------------------------------------------------------------
def maps_file(path, tokens_per_frame=4, query_sets=None, keys=0):
    """A map recording written by hand: one map, 2 frames of ``tokens_per_frame`` tokens, ``keys`` saved maps."""
    layout = TokenLayout(num_frames=2, tokens_per_frame=tokens_per_frame)
    meta = {"format": "attnsteer-maps-1", "maps": ["m"], "axes": {"m": "key"},
            "query_sets": {"m": [0, 1]} if query_sets is None else query_sets, "layout": layout.describe(),
            "layers": {"blocks.0": 0}, "step_bins": {"0": [0]}, "layer_bins": {"0": ["blocks.0"]},
            "keys": [["m", "0", "0", "cond"]] * keys, "counts": [1] * keys}
    sums = np.ones((keys, layout.seq_len if keys else 0))
    np.savez_compressed(path, sums=sums, metadata=np.array(json.dumps(meta)))
    return path


def test_a_small_maps_file_cannot_make_the_loader_allocate_from_its_declared_layout(tmp_path):
    for tokens in (4_000_000_000, 400_000_000):
        path = maps_file(tmp_path / f"bomb{tokens}.npz", tokens_per_frame=tokens)
        assert path.stat().st_size < 2048
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(at.RecordingError, match="refusing to allocate"):
            at.maps.MapRecording.load(path)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing of 400 MB


@pytest.mark.parametrize("tokens", [[8], [-1], [0.5], [True]])
def test_a_query_set_index_outside_the_layout_is_a_recording_error(tmp_path, tokens):
    path = maps_file(tmp_path / "bad.npz", query_sets={"m": tokens}, keys=1)
    with pytest.raises(at.RecordingError, match=r"query set of map 'm' must hold token indices in \[0, 8\)"):
        at.maps.MapRecording.load(path)


def test_a_valid_hand_written_maps_file_loads_its_query_set(tmp_path):
    rec = at.maps.MapRecording.load(maps_file(tmp_path / "ok.npz", keys=1))
    assert rec.query_sets["m"].tolist() == [True, True] + [False] * 6
    assert torch.equal(rec.heatmap("m").values, torch.ones(8))


def test_record_query_groups_outside_the_layout_fail_at_load(tmp_path):
    layout = TokenLayout(num_frames=2, tokens_per_frame=4)
    meta = {"format": None, "heads": False,
            "queries": "groups([99])", "query_groups": [99], "layout": layout.describe(), "layers": {},
            "timesteps": {}, "keys": [], "counts": []}
    from attnsteer.inspection.record import FORMAT_VERSION

    meta["format"] = FORMAT_VERSION
    path = tmp_path / "rec.npz"
    np.savez_compressed(path, sums=np.zeros((0, 1, 1, 1)), metadata=np.array(json.dumps(meta)))
    with pytest.raises(at.RecordingError, match=r"query_groups.*\[99\] out of range for a layout of 2 groups"):
        at.Record.load(path)
