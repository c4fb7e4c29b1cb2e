"""The run directory on disk: the only code that knows its layout and encodings.

Layout of `<output.dir>/<output.name>-<hash12>/`: `config.hash`, `config.json`, `units/<key>.npz`
(one per work unit), `cmax_prepass.json`, and the outputs (`points.csv`, `summary.json`,
`report.md`, PNG plots). Every file is written atomically (temporary file in the same directory,
fsync, `os.replace`), so a killed run leaves either the old or the new file, never half of one.

Unit file format (version `FORMAT_VERSION`; `.npz` stored uncompressed so `UnitFile` reads rows in
place): `meta` (JSON) and, per learner j, the `Evidence` of its model on every test point:
`L{j}.votes` (t,) int16, `L{j}.scores` (t, K) float64; at level "certificate" also `L{j}.radius`
(t,) int64, `L{j}.cost_lower` / `L{j}.cost_upper` (t, K) and `L{j}.class_exact` (t,) bool; at level
"pairs" also `L{j}.pair` (t, K, K) and `L{j}.roe_fallback` (t,) bool. Flip counts (costs and pair
costs) are stored as unsigned integers whose maximum value means "no attack" (inf), in the smallest
dtype of uint8 / uint16 / uint32 whose maximum exceeds the unit's number of training labels n
(`count_dtype`; a finite count is at most n); a member whose counts do not fit after all is widened
(to uint32) before it is written, and the reader accepts any of the three.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from numba import njit

from ..arrayfiles import read_npz_member_header
from ..evidence import FIELD_LEVEL, LEVELS, Evidence, FlipCounts
from ..integrity import Check, check_layout, digest_map, verify_digests
from ..provenance import Provenance
from ..runlock import RunLock, unique_temp_path

logger = logging.getLogger("kernelcert.pipeline")
_STACK_TILE = 64  # unit files read into one buffer before their rows are copied into a stacked block
_HAS_PREADV = hasattr(os, "preadv")  # Linux, BSD, macOS 11+; elsewhere rows are read with os.pread and copied

PathLike = str | os.PathLike[str]
Layout = dict[str, tuple[Any, tuple[int, ...]]]  # member -> (dtype or tuple of allowed dtypes, shape)

# Run-directory format. 1: the first release; 2: the config hash leaves out unset (None) fields;
# 3: each unit file holds a `checksums` member and the producer's provenance in `meta`;
# 4: flip counts in the smallest unsigned dtype above the unit's n (uint8 for partitions under 255 samples).
# A directory of another format is never reused (its units are not mixed into a run of this one).
FORMAT_VERSION = 4
COUNT_DTYPES = (np.uint8, np.uint16, np.uint32)  # flip-count encodings, narrowest first
CHECKSUMS = "checksums"  # member: JSON {member: BLAKE2b-256 of its dtype, shape and bytes} of every other member

# evidence field -> (stored name, stored dtype or None for the flip-count dtype `count_dtype(n)`)
_STORED = {"votes": ("votes", np.int16), "scores": ("scores", np.float64), "radius": ("radius", np.int64),
           "cost_lower": ("cost_lower", None), "cost_upper": ("cost_upper", None),
           "costs_exact": ("class_exact", bool), "pair_costs": ("pair", None), "fallback": ("roe_fallback", bool)}
_COUNTS = ("cost_lower", "cost_upper", "pair_costs")


class RunDirError(ValueError):
    """A run directory that cannot be used (another config's, another format's, not writable)."""


# --------------------------------------------------------------------------- atomic files
def _atomic(path: PathLike, write: Callable[[IO[bytes]], object]) -> None:
    path = Path(path)
    tmp = unique_temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same directory, fsync, os.replace."""
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez (uncompressed, so rows can be read in place) to a temporary file, then os.replace."""
    members: dict[str, Any] = dict(arrays)  # numpy's stubs type **kwds of savez narrowly
    _atomic(path, lambda f: np.savez(f, **members))


# --------------------------------------------------------------------------- flip-count encoding
@njit(cache=True, nogil=True)
def _encode_counts(a: np.ndarray, out: np.ndarray, sentinel: Any) -> int:  # pragma: no cover - compiled (numba); tested through to_counts
    """out[i] = a[i] for finite non-negative integers below `sentinel`, `sentinel` for +inf; returns 0,
    or 1 at a NaN / negative / fractional / -inf value, 2 at a finite count >= sentinel (out then partial)."""
    top = float(sentinel)
    status = 0
    for i in range(a.size):
        x = a[i]
        if 0.0 <= x < top:  # False for NaN
            k = np.int64(x)
            if k != x:
                return 1
            out[i] = k
        elif x == np.inf:
            out[i] = sentinel
        elif x >= top:
            status = 2
        else:
            return 1
    return status


def encode_counts(a: npt.ArrayLike, out: np.ndarray, what: str) -> bool:
    """Write float flip counts `a` (inf = no attack) into the unsigned integer array `out` (same
    shape) with the dtype's maximum as inf, in one compiled pass. Returns False (out partly written)
    when a finite count does not fit the dtype; ValueError for NaN, negative or fractional values."""
    src = np.ascontiguousarray(a, dtype=np.float64)
    if src.shape != out.shape:
        raise ValueError(f"{what}: shape {src.shape} does not match the stored shape {out.shape}")
    flat = out.reshape(-1)  # a view for the C-contiguous row blocks of the stored arrays
    if not np.shares_memory(flat, out):
        raise ValueError(f"{what}: the stored array must be C-contiguous")
    status = _encode_counts(src.reshape(-1), flat, flat.dtype.type(np.iinfo(out.dtype).max))
    if status == 1:
        raise ValueError(f"{what}: expected non-negative integer flip counts or inf")
    return status == 0


def to_counts(a: npt.ArrayLike, dtype: npt.DTypeLike, what: str) -> np.ndarray:
    """Float flip counts (inf = no attack) -> unsigned integers with the dtype's maximum as inf."""
    src = np.asarray(a, dtype=np.float64)
    out = np.empty(src.shape, dtype)
    if not encode_counts(src, out, what):
        raise ValueError(f"{what}: a flip count does not fit {np.dtype(dtype).name}")
    return out


def counts_to_float(a: npt.ArrayLike) -> np.ndarray:
    """Inverse of `to_counts`: float64 with inf where the dtype's maximum was stored."""
    return FlipCounts(np.asarray(a)).decode()


def count_dtype(n_train: int) -> np.dtype:
    """The narrowest of `COUNT_DTYPES` whose maximum (the inf code) exceeds n_train: every finite flip
    count of a model trained on n_train labels is at most n_train."""
    for dt in COUNT_DTYPES:
        if n_train < np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"a unit of {n_train} training labels is too large for the flip-count encoding")


def _widen_codes(codes: np.ndarray, dtype: npt.DTypeLike) -> np.ndarray:
    """Stored counts re-encoded in a wider unsigned dtype (the inf code mapped to the new maximum)."""
    out = codes.astype(dtype)
    out[codes == np.iinfo(codes.dtype).max] = np.iinfo(dtype).max
    return out


# --------------------------------------------------------------------------- unit files
def unit_key(kind: str, size: int, index: int, d: int | None = None) -> str:
    """File stem of a work unit: partition `index` of N_p = size, or FA learner `index` of k = size, d."""
    if kind == "partition":
        return f"np{size:05d}-p{index:05d}"
    return f"fa-k{size:05d}-d{d:03d}-l{index:05d}"


def evidence_fields(level: str) -> tuple[str, ...]:
    """The evidence fields stored at `level`."""
    top = LEVELS.index(level)
    return tuple(f for f, lv in FIELD_LEVEL.items() if LEVELS.index(lv) <= top)


def allocate_unit(num_learners: int, num_test: int, num_classes: int, level: str, n_train: int
                  ) -> dict[str, np.ndarray]:
    """Empty stored arrays of a unit holding `level` evidence of every learner on every test point."""
    counts = count_dtype(n_train)
    trail = {"scores": (num_classes,), "cost_lower": (num_classes,), "cost_upper": (num_classes,),
             "pair_costs": (num_classes, num_classes)}
    out: dict[str, np.ndarray] = {}
    for j in range(num_learners):
        for f in evidence_fields(level):
            name, dtype = _STORED[f]
            out[f"L{j}.{name}"] = np.empty((num_test, *trail.get(f, ())), counts if dtype is None else dtype)
    return out


def put_evidence(arrays: dict[str, np.ndarray], learner: int, rows: slice, ev: Evidence) -> None:
    """Write learner `learner`'s evidence on test points `rows` into the arrays of `allocate_unit`."""
    for f, (name, _) in _STORED.items():
        key = f"L{learner}.{name}"
        if key not in arrays:
            continue
        value = getattr(ev, f)
        if f in _COUNTS:
            if not encode_counts(value, arrays[key][rows], f):  # a count above n: widen the member, once
                wide = _widen_codes(arrays[key], np.uint32)
                if not encode_counts(value, wide[rows], f):
                    raise ValueError(f"{f}: a flip count does not fit uint32")
                arrays[key] = wide
        else:
            arrays[key][rows] = value


class UnitFile:
    """Random row access to the arrays of an uncompressed `.npz` without loading whole members.

    Reads the zip directory and each member's .npy header once; `rows(name, start, stop)` reads only
    the bytes of rows start..stop of a C-ordered array (one open/seek/read).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._index: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        with zipfile.ZipFile(self.path) as zf, open(self.path, "rb") as f:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"{self.path}: member {info.filename} is compressed; expected np.savez output")
                member = read_npz_member_header(f, info, f"{self.path}: member {info.filename}")
                if member.fortran_order and len(member.shape) > 1:
                    raise ValueError(f"{self.path}: member {info.filename} is Fortran-ordered")
                if member.dtype.hasobject:
                    raise ValueError(f"{self.path}: member {info.filename} holds Python objects")
                self._index[info.filename[:-4]] = (member.offset, member.dtype, member.shape)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def shape(self, name: str) -> tuple[int, ...]:
        return self._index[name][2]

    def data_offset(self, name: str) -> int:
        """Byte offset in the file of member `name`'s first element (after its .npy header)."""
        return self._index[name][0]

    def layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """{member: (dtype, shape)} as read from the .npy headers."""
        return {name: (dtype, shape) for name, (_, dtype, shape) in self._index.items()}

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows start..stop of member `name` (all rows when stop is None)."""
        return self.rows_of([name], start, stop)[0]

    def rows_of(self, names: Sequence[str], start: int = 0, stop: int | None = None) -> list[np.ndarray]:
        """`rows(name, start, stop)` for each of `names`: one open file descriptor, one positioned
        read (`os.pread`) per member."""
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            return [self._read(fd, name, start, stop) for name in names]
        finally:
            os.close(fd)

    def _read(self, fd: int, name: str, start: int, stop: int | None) -> np.ndarray:
        offset, dtype, shape = self._index[name]
        start, stop = _clip_rows(shape, start, stop)
        row_bytes = dtype.itemsize * math.prod(shape[1:])
        size = (stop - start) * row_bytes
        buf = os.pread(fd, size, offset + start * row_bytes) if size else b""
        if len(buf) != size:
            raise ValueError(f"{self.path}: truncated member {name}")
        arr = np.frombuffer(buf, dtype=dtype)
        return arr.reshape((stop - start,) + shape[1:]) if shape else arr.reshape(())

    def read_rows_into(self, names: Sequence[str], start: int, stop: int, outs: Sequence[np.ndarray]) -> None:
        """Rows start..stop of each member of `names` (clipped to its rows, as `rows`) written into
        `outs`: C-contiguous arrays of the rows' shape, in the member's dtype, or in another dtype to
        which they are converted (flip counts: a wider unsigned dtype, re-encoded as `_widen_codes`).
        One open file descriptor; where the dtypes agree, one positioned read per member straight into
        its output (`os.preadv`, no intermediate copy)."""
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            for name, out in zip(names, outs):
                offset, dtype, shape = self._index[name]
                lo, hi = _clip_rows(shape, start, stop)
                if out.shape != (hi - lo,) + shape[1:] or not out.flags.c_contiguous:
                    raise ValueError(f"{self.path}: rows {lo}..{hi} of member {name} {shape} do not fit an "
                                     f"output of shape {out.shape}")
                if out.dtype != dtype or not _HAS_PREADV or not shape:
                    src = self._read(fd, name, lo, hi)
                    codes = out.dtype != dtype and out.dtype.kind == dtype.kind == "u"  # flip counts, widened
                    out[...] = _widen_codes(src, out.dtype) if codes else src
                    continue
                size = out.nbytes
                if size:
                    _preadv_exact(fd, self.path, name, out.reshape(-1).view(np.uint8).data, offset + lo * (size // (hi - lo)))
        finally:
            os.close(fd)

    def meta(self) -> dict[str, Any]:
        """The unit's JSON metadata."""
        return json.loads(str(self.rows("meta")[()]))


def _preadv_exact(fd: int, path: PathLike, name: str, view: memoryview, offset: int) -> None:
    """Fill `view` (a writable byte buffer) from `fd` at `offset`; a short read means member `name`
    of the unit file `path` is truncated."""
    if os.preadv(fd, [view], offset) != view.nbytes:
        raise ValueError(f"{path}: truncated member {name}")


def _clip_rows(shape: tuple[int, ...], start: int, stop: int | None) -> tuple[int, int]:
    """Rows start..stop of a member of `shape` clipped to its rows (a 0-d member has one)."""
    n = shape[0] if shape else 1
    stop = n if stop is None else min(stop, n)
    return max(0, min(start, stop)), stop


def read_stored_block(files: Sequence[UnitFile], learner: int, start: int, stop: int, fields: Sequence[str]
                      ) -> dict[str, np.ndarray]:
    """Rows start..stop of learner `learner`'s stored evidence `fields`, stacked over the unit files
    (axis 1), in their compact stored dtypes (what an aggregation task ships to a worker): the arrays
    `np.stack` of each file's rows gives. Each file is opened once for all fields and its rows are read
    straight into a small file-major buffer (`_STACK_TILE` files x rows x ...), copied into its
    columns of the (rows, M, ...) result while it is still in the CPU caches; a member's counts are
    widened to the widest dtype among the files."""
    if not files:
        raise ValueError("read_stored_block needs at least one unit file")
    if not fields:
        return {}
    names = [f"L{learner}.{_STORED[f][0]}" for f in fields]
    buffers: list[np.ndarray] = []
    uniform = _HAS_PREADV  # every file stores every field in the block's dtype: one positioned read each
    first_rows: list[int] = []  # byte offset of row `start` inside each member
    for f, name in zip(fields, names):
        layouts = {uf._index[name][1:] for uf in files}
        shapes = set()
        for _, shape in layouts:
            lo, hi = _clip_rows(shape, start, stop)
            shapes.add((hi - lo,) + shape[1:])
        if len(shapes) > 1:
            raise ValueError(f"{name}: rows {start}..{stop} differ in shape between the unit files: {sorted(shapes)}")
        dtypes = {dtype for dtype, _ in layouts}
        dtype = max(dtypes, key=lambda d: d.itemsize) if f in _COUNTS else np.result_type(*dtypes)
        shape = next(iter(layouts))[1]
        uniform &= len(dtypes) == 1 and bool(shape)
        first_rows.append(_clip_rows(shape, start, stop)[0] * dtype.itemsize * math.prod(shape[1:]))
        buffers.append(np.empty((min(len(files), _STACK_TILE), *shapes.pop()), dtype))
    out = {f: np.empty((b.shape[1], len(files), *b.shape[2:]), b.dtype) for f, b in zip(fields, buffers)}
    views = [[b[i].reshape(-1).view(np.uint8).data for b in buffers] for i in range(len(buffers[0]))]
    for m0 in range(0, len(files), _STACK_TILE):
        tile = files[m0:m0 + _STACK_TILE]
        for i, uf in enumerate(tile):
            if not uniform:
                uf.read_rows_into(names, start, stop, [b[i] for b in buffers])
                continue
            fd = os.open(uf.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                index = uf._index
                for name, view, first in zip(names, views[i], first_rows):
                    if view.nbytes:
                        _preadv_exact(fd, uf.path, name, view, index[name][0] + first)
            finally:
                os.close(fd)
        for f, b in zip(fields, buffers):
            out[f][:, m0:m0 + len(tile)] = b[:len(tile)].swapaxes(0, 1)
    return out


def decode_block(stored: dict[str, np.ndarray], *, compact_pairs: bool = False) -> Evidence:
    """The stacked `Evidence` of a `read_stored_block` result (float64 costs with inf, int64 votes).
    compact_pairs: pair costs stay in their stored codes as `evidence.FlipCounts` (white-box ROE
    widens only the rows it reads)."""
    kw: dict[str, Any] = {}
    for f, a in stored.items():
        if f == "pair_costs" and compact_pairs:
            kw[f] = FlipCounts(a)
        elif f in _COUNTS:
            kw[f] = counts_to_float(a)
        elif f == "votes":
            kw[f] = a.astype(np.int64)
        else:
            kw[f] = a
    kw.setdefault("votes", None)
    kw.setdefault("scores", None)
    return Evidence(**kw)


def write_unit(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write a unit's arrays (meta included) atomically, with a `checksums` member covering every one."""
    atomic_save_npz(path, {**arrays, CHECKSUMS: np.array(json.dumps(digest_map(arrays)))})


def unit_layout(num_learners: int, num_test: int, num_classes: int, level: str, n_train: int) -> Layout:
    """{member: (dtype, shape)} of the evidence members a unit must hold (meta and checksums aside)."""
    arrays = allocate_unit(num_learners, num_test, num_classes, level, n_train)  # np.empty: no memory touched
    counts = tuple(dict.fromkeys((count_dtype(n_train), np.dtype(np.uint32))))  # as allocated, or widened
    return {name: (counts if a.dtype.kind == "u" else a.dtype, a.shape)  # flip counts: the only unsigned members
            for name, a in arrays.items()}


def check_unit(path: Path, *, cfg_hash: str, fingerprint: str, provenance: Provenance, layout: Layout) -> Check:
    """Every check a stored unit must pass before it is trusted: readable zip and .npy headers, this
    format, config and inputs, computed in an environment equal to `provenance`, exactly the members
    of `layout` with their dtypes and shapes, and every member's content equal to its checksum."""
    path = Path(path)
    if not path.exists():
        return Check(("not computed yet",))
    try:
        uf = UnitFile(path)
        meta = uf.meta()
        recorded = json.loads(str(uf.rows(CHECKSUMS)[()]))
    except (OSError, ValueError, KeyError, EOFError, struct.error, zipfile.BadZipFile) as exc:
        return Check((f"unreadable ({type(exc).__name__}: {exc})",))
    if not isinstance(meta, dict) or not isinstance(recorded, dict):
        return Check(("unreadable (meta or checksums is not a JSON object)",))
    if meta.get("format") != FORMAT_VERSION:
        return Check((f"written in unit format {meta.get('format')}, this kernelcert reads format {FORMAT_VERSION}",))
    problems = []
    if meta.get("config_hash") != cfg_hash:
        problems.append("computed for another config")
    if meta.get("fingerprint") != fingerprint:
        problems.append("computed from different inputs (data or partition code changed)")
    try:
        diff = provenance.differences(Provenance.from_dict(meta.get("provenance")))
        problems += [f"computed in another environment: {d}" for d in diff]
    except ValueError as exc:
        problems.append(f"no valid provenance ({exc})")
    found = {k: v for k, v in uf.layout().items() if k not in ("meta", CHECKSUMS)}
    checks = [Check(tuple(problems)), check_layout(found, layout),
              verify_digests(uf.rows, recorded, names=[k for k in uf.layout() if k != CHECKSUMS])]
    return Check.combine(checks)


# --------------------------------------------------------------------------- run directories
def prepare_run_dir(out_dir: PathLike, run_dir: Path, cfg_hash: str, config_json: dict[str, Any], lock: RunLock
                    ) -> Path:
    """Create (or reuse) `run_dir` under `out_dir` after checking it is writable; refuse a directory of
    another config or another format version; take `lock` (one writer per run directory: `RunLocked`
    naming the holder) before touching anything inside."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"config [output]: output directory {str(out)!r} is not writable ({exc})") from None
    hash_file = run_dir / "config.hash"
    old_format = (read_json(run_dir / "config.json", {}).get("hash_payload") or {}).get("format")
    if old_format is not None and old_format != FORMAT_VERSION:
        raise RunDirError(f"{run_dir} was written by run-directory format {old_format}; this kernelcert writes "
                          f"format {FORMAT_VERSION} and does not reuse it. Delete it or choose another "
                          "[output] dir / name")
    if hash_file.exists():
        old = hash_file.read_text().strip()
        if old != cfg_hash:
            raise RunDirError(f"{run_dir} holds results of another config (hash {old[:12]}, this one "
                              f"{cfg_hash[:12]}); refusing to mix them")
    (run_dir / "units").mkdir(parents=True, exist_ok=True)
    lock.acquire()
    for stale in list(run_dir.glob(".*.tmp")) + list((run_dir / "units").glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # leftovers of a killed run
    atomic_write_text(run_dir / "config.json", json.dumps(config_json, indent=2, sort_keys=True))
    atomic_write_text(hash_file, cfg_hash + "\n")
    return run_dir


def older_format_runs(out_dir: PathLike, name: str) -> list[Path]:
    """Run directories `<out_dir>/<name>-*` written by an older run-directory format (not reused)."""
    return sorted(p.parent for p in Path(out_dir).glob(f"{name}-*/config.json")
                  if (read_json(p, {}).get("hash_payload") or {}).get("format", FORMAT_VERSION) < FORMAT_VERSION)


def same_config_runs(out_dir: PathLike, run_dir: Path, cfg_hash: str) -> list[Path]:
    """Other run directories `<out_dir>/*-<hash12>` of this very config (e.g. before the config file
    was renamed): their units can be reused."""
    return sorted(p.parent for p in Path(out_dir).glob(f"*-{cfg_hash[:12]}/config.hash")
                  if p.parent != run_dir and p.read_text().strip() == cfg_hash)


def adopt_units(src_dir: Path, run_dir: Path) -> int:
    """Hard-link (or copy) the unit files of `src_dir` into `run_dir` (each is still verified by
    `check_unit` before use); returns how many were taken."""
    count = 0
    for src in sorted((Path(src_dir) / "units").glob("*.npz")):
        dst = Path(run_dir) / "units" / src.name
        if dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            atomic_write_bytes(dst, src.read_bytes())
        count += 1
    return count


def unit_path(run_dir: PathLike, key: str) -> Path:
    """`<run_dir>/units/<key>.npz`."""
    return Path(run_dir) / "units" / f"{key}.npz"


def read_json(path: PathLike, default: Any = None) -> Any:
    """JSON content of `path` (default when it does not exist)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


__all__ = ["FORMAT_VERSION", "COUNT_DTYPES", "count_dtype", "encode_counts", "RunDirError", "atomic_write_bytes", "atomic_write_text", "atomic_save_npz",
           "to_counts", "counts_to_float", "unit_key", "unit_path", "evidence_fields", "allocate_unit",
           "put_evidence", "UnitFile", "read_stored_block", "decode_block", "CHECKSUMS", "write_unit", "unit_layout",
           "check_unit", "prepare_run_dir", "older_format_runs", "same_config_runs", "adopt_units", "read_json"]
