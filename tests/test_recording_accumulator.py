"""The running sums both recorders share (attnsteer.inspection.accumulator) and the file format they write: means
are exact against float64 arithmetic done here, files written in the format of earlier releases load, and a file
whose counts or keys disagree with its sums is one RecordingError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnsteer as at
from attnsteer.inspection.accumulator import Accumulator
from attnsteer.language.layout import TokenLayout

LAYOUT = TokenLayout(num_frames=2, tokens_per_frame=3)  # video only: groups = frames


def test_mean_and_pooled_are_the_float64_means_of_what_was_added():
    gen = torch.Generator().manual_seed(0)
    a1, a2, b1 = (torch.rand(2, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    acc = Accumulator()
    acc.add("a", a1)
    acc.add("a", a2)
    acc.add("b", b1)
    assert torch.equal(acc.mean("a"), (a1 + a2) / 2)
    assert torch.equal(acc.pooled(["a", "b"]), (a1 + a2 + b1) / 3)  # every call weighs the same, not every key
    assert acc.keys() == ["a", "b"] and acc.counts == {"a": 2, "b": 1}


def test_adding_never_writes_into_the_callers_tensor():
    first = torch.ones(3, dtype=torch.float64)
    acc = Accumulator()
    acc.add("k", first)
    acc.add("k", torch.ones(3, dtype=torch.float64))
    assert torch.equal(first, torch.ones(3, dtype=torch.float64))


def test_arrays_round_trip_exactly():
    acc = Accumulator()
    acc.add((1, "x"), torch.tensor([0.1, 0.2], dtype=torch.float64))
    acc.add((0, "y"), torch.tensor([0.3, 0.4], dtype=torch.float64))
    acc.add((0, "y"), torch.tensor([1e-17, 0.5], dtype=torch.float64))
    keys, counts, sums = acc.to_arrays((0, 2))
    assert keys == [[0, "y"], [1, "x"]] and counts == [2, 1]
    back = Accumulator.from_arrays([tuple(k) for k in keys], counts, sums, (2,), "maps")
    for key in acc.keys():
        assert torch.equal(back.mean(key), acc.mean(key)) and back.counts[key] == acc.counts[key]


@pytest.mark.parametrize("keys, counts, shape, message", [
    ([("a",), ("b",)], [1], (2,), "do not match"),       # a count missing
    ([("a",), ("b",)], [1, 0], (2,), "do not match"),    # a count below 1
    ([("a",), ("b",)], [1, 1], (3,), "do not match"),    # rows of the wrong length
    ([("a",)], [1], (2,), "do not match"),               # more rows than keys
    ([("a",), ("a",)], [1, 1], (2,), "twice"),           # one key stored twice
])
def test_from_arrays_refuses_counts_and_keys_that_disagree_with_the_sums(keys, counts, shape, message):
    with pytest.raises(at.RecordingError, match=message):
        Accumulator.from_arrays(keys, counts, np.zeros((2, 2)), shape, "maps")


def write_v1_record(path, sums, counts, keys):
    """A frame recording exactly as the writer of format 1 laid it out before the recorders shared their files."""
    meta = {"format": 1, "heads": False, "queries": "frames[1:]", "query_groups": [1], "layout": LAYOUT.describe(),
            "layers": {"blocks.0.attn1": 0}, "timesteps": {"0": 999.0}, "keys": keys, "counts": counts}
    np.savez_compressed(path, sums=sums, metadata=np.array(json.dumps(meta)))
    return path


def test_a_frame_recording_written_in_format_1_loads_with_its_exact_means(tmp_path):
    sums = np.array([[[[1.5, 0.5], [0.25, 1.75]]]])  # one record, 1 head, 2 x 2 groups, summed over 2 calls
    path = write_v1_record(tmp_path / "v1.npz", sums, [2], [[0, "blocks.0.attn1", "cond"]])
    rec = at.Record.load(path)
    expected = torch.tensor([[0.75, 0.25], [0.125, 0.875]], dtype=torch.float64).float()
    assert torch.equal(rec.frame_map(), expected)
    assert rec.layout == LAYOUT and rec.timesteps == {0: 999.0} and rec.steps == [0] and rec.branches == ["cond"]
    again = at.Record.load(rec.save(tmp_path / "again.npz"))
    assert torch.equal(again.frame_map(), expected)


def test_a_frame_recording_with_a_repeated_key_is_one_recording_error(tmp_path):
    key = [0, "blocks.0.attn1", "cond"]
    path = write_v1_record(tmp_path / "twice.npz", np.ones((2, 1, 2, 2)), [1, 1], [key, key])
    with pytest.raises(at.RecordingError, match="twice.npz.*twice"):
        at.Record.load(path)


def test_both_recorders_refuse_a_path_without_the_npz_suffix(tmp_path):
    with pytest.raises(at.ConfigError, match=r"Record.save\(path\) needs a .npz path"):
        at.Record().save(tmp_path / "r.json")
    with pytest.raises(at.ConfigError, match=r"maps.save\(path\) needs a .npz path"):
        at.maps.MapRecording([at.maps.onto(at.frames[0])]).save(tmp_path / "m.npy")
