"""Saved recordings: an exact round trip, and one clear error for every damaged or hostile file."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnsteer as at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recording(wan_pipe, tmp_path_factory):
    from attnsteer.testing.tiny import test_image, wan_call_kwargs

    with at.inspect(wan_pipe, heads=True, queries=at.frames[2]) as rec:
        wan_pipe(image=test_image(), generator=torch.Generator().manual_seed(0),
                 **wan_call_kwargs(num_inference_steps=2, output_type="latent"))
    path = tmp_path_factory.mktemp("rec") / "record.npz"
    return rec, rec.save(path)


def test_every_query_is_identical_after_a_round_trip(recording):
    rec, path = recording
    loaded = at.Record.load(path)
    for method, kwargs in [("frame_map", {}), ("frame_map", {"steps": [1], "branch": "cond"}),
                           ("frame_map", {"heads": [1]}), ("group_mass", {"layers": 0})]:
        torch.testing.assert_close(getattr(loaded, method)(**kwargs), getattr(rec, method)(**kwargs), rtol=0, atol=0)
    for by in ("step", "layer"):
        xs, ys = rec.reference_mass(by=by)
        xs2, ys2 = loaded.reference_mass(by=by)
        assert xs == xs2
        torch.testing.assert_close(ys2, ys, rtol=0, atol=0)  # the recorded queries (frame 2) survive the trip
    assert loaded.layout == rec.layout and loaded.layers == rec.layers and loaded.timesteps == rec.timesteps
    with pytest.raises(at.ConfigError, match="no text tokens"):  # Wan's text is in cross-attention: no zeros
        loaded.text_mass()


def rewrite(path, tmp_path, name="bad.npz", sums=None, meta=None):
    with np.load(path) as data:
        saved_sums, saved_meta = data["sums"], json.loads(str(data["metadata"]))
    sums = saved_sums if sums is None else sums(saved_sums)
    meta = saved_meta if meta is None else meta(saved_meta)
    out = tmp_path / name
    np.savez_compressed(out, sums=sums, metadata=np.array(json.dumps(meta)))
    return out


def truncated(path, tmp_path):
    out = tmp_path / "x.npz"
    out.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return out


def not_a_zip(path, tmp_path):
    out = tmp_path / "x.npz"
    out.write_text("hello")
    return out


@pytest.mark.parametrize("damage, message", [
    (truncated, "not a recording|damaged|truncated"),
    (not_a_zip, "not a recording"),
    (lambda p, t: rewrite(p, t, sums=lambda s: np.where(s > 0, np.nan, s)), "NaN"),
    (lambda p, t: rewrite(p, t, sums=lambda s: s[:, :, :-1]), "do not match"),
    (lambda p, t: rewrite(p, t, meta=lambda m: {**m, "counts": m["counts"][:-1]}), "do not match"),
    (lambda p, t: rewrite(p, t, meta=lambda m: {**m, "format": 99}), "unknown recording format"),
    (lambda p, t: rewrite(p, t, meta=lambda m: {**m, "layout": {**m["layout"], "num_frames": -1}}), "inconsistent"),
    (lambda p, t: rewrite(p, t, sums=lambda s: s.astype(np.int64)), "kind 'f'"),
    (lambda p, t: t / "missing.npz", "no such recording"),
])
def test_damaged_files_raise_one_recording_error(recording, tmp_path, damage, message):
    _, path = recording
    with pytest.raises(at.RecordingError, match=message) as info:
        at.Record.load(damage(path, tmp_path))
    assert "bad.npz" in str(info.value) or "x.npz" in str(info.value) or "missing.npz" in str(info.value)


def test_a_small_file_cannot_make_the_loader_allocate_hundreds_of_times_its_size(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 26,)})
        with archive.open("sums.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(1 << 24)
            for _ in range((1 << 29) // len(zeros)):  # 512 MiB of zeros
                member.write(zeros)
        archive.writestr("metadata.npy", b"")
    assert path.stat().st_size < 1 << 20
    with pytest.raises(at.RecordingError, match="refusing to allocate"):
        at.Record.load(path)


@given(st.binary(max_size=2048))
@settings(max_examples=60, deadline=None)
def test_fuzzed_bytes_never_crash_the_loader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.npz"
    path.write_bytes(data)
    with pytest.raises(at.RecordingError):
        at.Record.load(path)
