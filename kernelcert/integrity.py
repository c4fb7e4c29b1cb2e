"""Content checksums of stored arrays, and the checks a stored unit must pass before it is trusted.

`array_digest(a)` is a BLAKE2b-256 digest of an array's dtype (byte order included), shape and
C-ordered bytes, so a changed value, a changed dtype or a reshaped array all change it.
`digest_map(arrays)` digests every array of a mapping; the writer records it next to the arrays
at write time and the reader recomputes it (`verify_digests`) before it uses the arrays. The
zip CRC that `np.load` would check is not a substitute: fast row readers skip it.

`check_layout(found, expected)` compares the members a file holds (name -> (dtype, shape)) with
the members it must hold, and reports every missing, unexpected or wrongly typed/shaped member.

All checks return a `Check` (ok or the list of problems) instead of raising, so that the caller
can recompute a bad unit rather than stop on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

DIGEST = "blake2b-256"


@dataclass(frozen=True)
class Check:
    """Outcome of a check: `ok`, and one line per problem found (empty when ok)."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def summary(self, limit: int = 3) -> str:
        """The first `limit` problems on one line (with the number of further ones)."""
        head = "; ".join(self.problems[:limit])
        more = len(self.problems) - limit
        return head + (f"; and {more} more" if more > 0 else "")

    @staticmethod
    def combine(checks: Iterable["Check"]) -> "Check":
        return Check(tuple(p for c in checks for p in c.problems))


def array_digest(a: np.ndarray) -> str:
    """Hex BLAKE2b-256 of `a`'s dtype string, shape and C-ordered bytes (no copy when contiguous)."""
    a = np.asarray(a)
    h = hashlib.blake2b(digest_size=32)
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    if a.dtype.hasobject:
        raise TypeError("array_digest: object arrays have no stable byte content")
    h.update(np.ascontiguousarray(a).data.cast("B"))
    return h.hexdigest()


def digest_map(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """{name: array_digest(array)} for every array, names sorted."""
    return {name: array_digest(arrays[name]) for name in sorted(arrays)}


def verify_digests(read: Callable[[str], np.ndarray], recorded: Mapping[str, str], *,
                   names: Iterable[str] | None = None) -> Check:
    """Recompute the digest of each recorded array (`read(name)` returns it) and compare.

    `names`: the members the file holds; a member held but not recorded is a problem too (every
    stored array must be covered). A `read` that raises (truncated member, bad header) is reported
    as a problem, never raised.
    """
    problems = []
    if names is not None:
        extra = sorted(set(names) - set(recorded))
        problems += [f"member {n!r} has no recorded checksum" for n in extra]
    for name in sorted(recorded):
        try:
            got = array_digest(read(name))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"member {name!r} unreadable ({exc})")
            continue
        if got != recorded[name]:
            problems.append(f"member {name!r} fails its checksum (content changed since it was written)")
    return Check(tuple(problems))


def check_layout(found: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                 expected: Mapping[str, tuple[object, tuple[int, ...]]]) -> Check:
    """Compare members found (name -> (dtype, shape)) with those expected.

    An expected dtype may be one dtype or a tuple of allowed dtypes. Missing, unexpected and
    mistyped/misshaped members are each reported.
    """
    problems = []
    for name in sorted(expected):
        want_dtype, want_shape = expected[name]
        if name not in found:
            problems.append(f"member {name!r} is missing")
            continue
        dtype, shape = found[name]
        allowed = want_dtype if isinstance(want_dtype, tuple) else (want_dtype,)
        if np.dtype(dtype) not in {np.dtype(d) for d in allowed}:
            names = " or ".join(np.dtype(d).name for d in allowed)
            problems.append(f"member {name!r} has dtype {np.dtype(dtype).name}, expected {names}")
        if tuple(shape) != tuple(want_shape):
            problems.append(f"member {name!r} has shape {tuple(shape)}, expected {tuple(want_shape)}")
    problems += [f"unexpected member {name!r}" for name in sorted(set(found) - set(expected))]
    return Check(tuple(problems))


__all__ = ["Check", "DIGEST", "array_digest", "digest_map", "verify_digests", "check_layout"]
