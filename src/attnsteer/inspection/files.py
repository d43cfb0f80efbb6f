"""Reading a saved recording safely: a recording is an ``.npz`` (a zip of ``sums.npy`` and
``metadata.npy``, no pickles). Before anything is allocated, the zip's directory and each array's
header are checked (names, dtypes, shapes, declared sizes against the file's size), then the
metadata against the arrays, and the values for finiteness. Every problem is one
:class:`~attnsteer.errors.RecordingError` naming the file and what is wrong. Both recorders (frame maps and
spatial maps) write and read their files through :func:`write_npz` and :func:`load_npz`."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, RecordingError

MEMBERS = {"sums.npy", "metadata.npy"}
MAX_EXPANSION = 200  # uncompressed bytes per byte of file: far above what real recordings reach
MIN_ALLOWANCE = 64 << 20  # small files may always expand to this
T = TypeVar("T")


def read_npz(path: Path, sums_shape: str = "[records, heads, groups, groups]") -> tuple[dict[str, Any], np.ndarray]:
    """(metadata, sums) of a recording file, validated as far as the file alone allows; ``sums_shape``
    names the dimensions the sums must have (frame recordings; spatial map recordings have two)."""
    ndim = sums_shape.count(",") + 1
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording file")
    if not zipfile.is_zipfile(path):
        raise RecordingError(f"{path}: not a recording (.npz) file")
    budget = allowance(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if names != MEMBERS:
                raise RecordingError(f"{path}: a recording holds {sorted(MEMBERS)}, this file holds {sorted(names)}")
            declared = sum(info.file_size for info in archive.infolist())
            if declared > budget:
                raise RecordingError(f"{path}: its arrays would expand to {declared} bytes from a "
                                     f"{path.stat().st_size}-byte file; refusing to allocate that")
            meta_text = _read_array(path, archive, "metadata.npy", kind="U", max_dims=0)
            sums = _read_array(path, archive, "sums.npy", kind="f", max_dims=ndim)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise RecordingError(f"{path}: damaged recording file ({exc})") from exc
    try:
        meta = json.loads(str(meta_text))
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{path}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise RecordingError(f"{path}: its metadata must be a JSON object")
    if sums.ndim != ndim:
        raise RecordingError(f"{path}: sums must be {sums_shape}, got shape {sums.shape}")
    if not np.isfinite(sums).all():
        raise RecordingError(f"{path}: sums hold NaN or infinite values")
    return meta, sums


def allowance(path: Path) -> int:
    """The bytes a loader may allocate for the file at ``path``: a small file cannot make it allocate
    hundreds of times its size, whatever its metadata declares."""
    return max(MIN_ALLOWANCE, MAX_EXPANSION * path.stat().st_size)


def check_allocation(path: Path, nbytes: int, what: str) -> None:
    """Raise before allocating ``nbytes`` for ``what`` (declared by the file's metadata) beyond :func:`allowance`."""
    budget = allowance(path)
    if nbytes > budget:
        raise RecordingError(f"{path}: {what} would take {nbytes} bytes from a {path.stat().st_size}-byte file "
                             f"(at most {budget}); refusing to allocate that")


def _read_array(path: Path, archive: zipfile.ZipFile, name: str, kind: str, max_dims: int) -> np.ndarray:
    """One member, its header checked before its data is read."""
    with archive.open(name) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header[version](stream)
        except ValueError as exc:
            raise RecordingError(f"{path}: {name} is not a valid array ({exc})") from exc
        if dtype.kind != kind or dtype.hasobject or len(shape) > max_dims:
            raise RecordingError(f"{path}: {name} must be a {max_dims}-d array of kind {kind!r}, got {dtype} {shape}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected > archive.getinfo(name).file_size:
            raise RecordingError(f"{path}: {name} declares {expected} bytes but holds fewer")
        data = stream.read(expected)
        if len(data) != expected:
            raise RecordingError(f"{path}: {name} is truncated")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def write_npz(path: str | Path, meta: dict[str, Any], sums: np.ndarray, caller: str) -> Path:
    """Write a recording: ``sums`` and the JSON ``meta`` in one compressed ``.npz`` that :func:`read_npz`
    reads back; ``caller`` (e.g. ``"Record.save"``) names the method in the error for a wrong suffix."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"{caller}(path) needs a .npz path, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, sums=sums, metadata=np.array(json.dumps(meta)))
    return path


def load_npz(path: str | Path, build: Callable[[dict[str, Any], np.ndarray, Path], T], what: str,
             sums_shape: str = "[records, heads, groups, groups]") -> T:
    """``build(meta, sums, path)`` on a file checked by :func:`read_npz`; every problem that building finds
    (a RecordingError, or metadata of the wrong type or shape) becomes one RecordingError naming the file."""
    path = Path(path)
    meta, sums = read_npz(path, sums_shape)
    try:
        return build(meta, sums, path)
    except RecordingError as exc:
        raise RecordingError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordingError(f"{path}: inconsistent {what} ({type(exc).__name__}: {exc})") from exc
