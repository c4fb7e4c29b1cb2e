"""Reading user arrays from `.npy` / `.npz` files, memory-mapped where the format allows.

- `.npy`: `np.load(..., mmap_mode="r")`: nothing is read until rows are indexed.
- `.npz` written by `np.savez` (members stored uncompressed): each member is memory-mapped in
  place (the member's offset inside the zip plus its `.npy` header).
- `.npz` written by `np.savez_compressed`: the member is decompressed into memory (the only way).

Pickled objects are never loaded. Every failure raises `ArrayFileError` (a ValueError) whose
message starts with the file (and the key, for `.npz`) and says what is wrong.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["ArrayFileError", "open_array", "npz_keys", "check_finite_rows", "NpzMember", "read_npz_member_header"]


class ArrayFileError(ValueError):
    """A user array file that is missing, unreadable or has the wrong content; the message names the file."""


def _where(path: Path, key: str | None) -> str:
    return f"{path}" if key is None else f"{path} [{key}]"


def npz_keys(path: str | os.PathLike[str]) -> list[str]:
    """The array names stored in an `.npz` file (ArrayFileError if it is not a readable zip)."""
    path = Path(path)
    if not path.is_file():
        raise ArrayFileError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArrayFileError(f"{path}: not a readable .npz archive ({exc})") from None


@dataclass(frozen=True)
class NpzMember:
    """Where an uncompressed `.npz` member's array lies in the file: `offset` of its first element
    (after the member's `.npy` header), `end` one past the member's stored bytes, and the header's
    `shape`, `fortran_order` and `dtype`."""

    offset: int
    end: int
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype


def read_npz_member_header(f: BinaryIO, info: zipfile.ZipInfo, where: str) -> NpzMember:
    """The `NpzMember` of zip entry `info`, read from the open `.npz` file `f` (its local zip header,
    then the member's `.npy` header; the file position is left after it). ArrayFileError starting with
    `where` on a corrupt zip or `.npy` header."""
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ArrayFileError(f"{where}: corrupt zip member header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    f.seek(start)
    try:
        shape, fortran, dtype = read_npy_header(f)
    except ValueError as exc:
        raise ArrayFileError(f"{where}: bad .npy header ({exc})") from None
    return NpzMember(f.tell(), start + info.file_size, tuple(shape), bool(fortran), dtype)


# the header `np.lib.format` writes for a plain dtype: {'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z][0-9]*)', 'fortran_order': (False|True), "
                         r"'shape': \(((?:[0-9]+, ?)*[0-9]*)\), \} *\n")


def read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy header at f's position, leaving f at the data.
    Version-1.0 headers of plain dtypes are parsed directly; anything else goes through
    `np.lib.format`'s own reader (a literal_eval per header, about 60 us). ValueError on a bad header."""
    start = f.tell()
    magic = f.read(8)
    if magic[:6] == b"\x93NUMPY" and magic[6:8] == b"\x01\x00":
        (size,) = struct.unpack("<H", f.read(2))
        header = f.read(size)
        m = _NPY_HEADER.fullmatch(header.decode("latin1"))
        if m is not None and len(header) == size:
            shape = tuple(int(x) for x in m.group(3).replace(" ", "").split(",") if x)
            return shape, m.group(2) == "True", np.dtype(m.group(1))
    f.seek(start)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _memmap_member(path: Path, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    """Memory-map an uncompressed `.npz` member in place."""
    with open(path, "rb") as f:
        member = read_npz_member_header(f, info, _where(path, key))
    shape, dtype = member.shape, member.dtype
    if dtype.hasobject:
        raise ArrayFileError(f"{_where(path, key)}: holds Python objects (pickles are never loaded); "
                             "save plain numeric arrays")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if member.offset + size > member.end:
        raise ArrayFileError(f"{_where(path, key)}: truncated member (header shape {shape} of {dtype})")
    if size == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=member.offset, shape=shape,
                     order="F" if member.fortran_order else "C")


def open_array(path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """The array stored in `path` (`.npy`) or under `key` in `path` (`.npz`), memory-mapped where possible.

    Returns a read-only array (np.memmap for `.npy` and uncompressed `.npz` members). ArrayFileError
    names the file, the key and the problem (missing file, missing key with the keys present,
    unreadable data, pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise ArrayFileError(f"{_where(path, key)}: file not found")
    if key is None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ArrayFileError(f"{path}: not a readable .npy array ({exc})") from None
        if isinstance(arr, np.lib.npyio.NpzFile):
            arr.close()
            raise ArrayFileError(f"{path}: is an .npz archive; name the array inside it (keys: "
                                 f"{', '.join(npz_keys(path))})")
        return arr
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(f"{key}.npy")
            except KeyError:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                raise ArrayFileError(f"{path}: missing key {key!r} (keys present: "
                                     f"{', '.join(keys) if keys else 'none'})") from None
            if info.compress_type == zipfile.ZIP_STORED:
                return _memmap_member(path, info, key)
            with zf.open(info) as fh:
                try:
                    return np.lib.format.read_array(fh, allow_pickle=False)
                except (ValueError, OSError, EOFError) as exc:
                    raise ArrayFileError(f"{_where(path, key)}: unreadable array ({exc})") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArrayFileError(f"{path}: not a readable .npz archive ({exc})") from None


def check_finite_rows(where: str, a: np.ndarray, block_bytes: int = 64 * 2**20) -> None:
    """ArrayFileError when a float array (possibly memory-mapped) holds NaN or inf; scanned in row blocks."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    per_row = max(1, a.dtype.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, block_bytes // per_row)
    for s in range(0, len(a), step):
        blk = np.asarray(a[s:s + step])
        bad = ~np.isfinite(blk)
        if bad.any():
            first = np.unravel_index(int(np.flatnonzero(bad)[0]), blk.shape)
            first = (first[0] + s,) + tuple(first[1:])
            raise ArrayFileError(f"{where}: holds NaN or infinite values (first at index "
                                 f"{tuple(int(i) for i in first)})")
