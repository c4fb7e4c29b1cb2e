"""One writer per run directory: a lock file naming its holder, with a stale-lock rule.

`RunLock(run_dir)` creates `<run_dir>/.lock` atomically (the holder record is written to a
private temporary file first and hard-linked into place, so the lock file is never seen
half-written) and removes it on release. The record is one line of JSON:
`{"host", "pid", "started", "token", "command"}`.

A second client finds the file and raises `RunLocked`, whose one-line message names the holder
(host, pid, start time). The stale-lock rule: a lock whose holder ran on *this* host and whose
process is gone (or whose pid now belongs to a process started after the lock was taken) is
stale; it is removed and taken over. Locks held on another host are never broken automatically
(the process cannot be checked from here); the message says which file to delete once that
client is known to be gone. Breaking a stale lock is serialised between the clients of one host
with `fcntl.flock` on `<run_dir>/.lock.guard`, and the file is re-read under the guard, so two
clients never both take over the same stale lock.

Temporary files of a lock holder are unique per writer (`unique_temp_path`: host, pid and a
random token in the name), so a starting client never touches another writer's file.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

if sys.platform != "win32":  # POSIX; elsewhere breaking a stale lock is not serialised (see `RunLock`)
    import fcntl

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.guard"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory: host name, process id, start time (ISO 8601, UTC), a random token."""

    host: str
    pid: int
    started: str
    token: str
    command: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started})"

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started, "token": self.token,
                           "command": self.command}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LockHolder":
        d = json.loads(text)
        return cls(host=str(d["host"]), pid=int(d["pid"]), started=str(d["started"]), token=str(d["token"]),
                   command=str(d.get("command", "")))

    @classmethod
    def current(cls) -> "LockHolder":
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(host=socket.gethostname(), pid=os.getpid(), started=now, token=uuid.uuid4().hex,
                   command=" ".join(sys.argv)[:200])


class RunLocked(RuntimeError):
    """Another client holds the run directory (`holder`), or the lock file cannot be read."""

    def __init__(self, run_dir: Path, holder: LockHolder | None, detail: str = ""):
        self.run_dir = Path(run_dir)
        self.holder = holder
        lock = self.run_dir / LOCK_NAME
        if holder is not None:
            msg = (f"run directory {self.run_dir} is in use by another kernelcert client: {holder.describe()}; "
                   f"wait for it to finish, or delete {lock} if that process is gone")
        else:
            msg = f"run directory {self.run_dir} is locked ({detail}); delete {lock} if no other client is running"
        super().__init__(msg)


def holder_is_stale(holder: LockHolder, *, host: str | None = None) -> bool:
    """The stale-lock rule: same host and the holder's process is gone (or its pid was reused by a
    process created after the lock was taken). A holder on another host is never stale here."""
    if holder.host != (host or socket.gethostname()):
        return False
    if holder.pid == os.getpid():
        return False  # this process: a lock it holds (or a leftover of it) is never broken behind its back
    try:
        proc = psutil.Process(holder.pid)
        created = proc.create_time()
        status = proc.status()
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False  # the process exists (another user's): not provably dead
    if status == psutil.STATUS_ZOMBIE:
        return True
    try:
        started = datetime.datetime.fromisoformat(holder.started).timestamp()
    except ValueError:
        return False
    return created > started + 1.0  # pid reused by a process born after the lock was taken


def unique_temp_path(path: Path) -> Path:
    """A temporary sibling of `path` unique to this writer: `.<name>.<host>.<pid>.<token>.tmp`."""
    path = Path(path)
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    return path.with_name(f".{path.name}.{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


class RunLock:
    """Exclusive lock of one run directory; a context manager (`with RunLock(run_dir) as lock:`).

    `acquire()` raises `RunLocked` at once (no waiting) when another live client holds the
    directory; it takes over a stale lock (see the module docstring) and logs nothing itself.
    `release()` removes the lock file only if it is still this holder's (idempotent).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.holder: LockHolder | None = None
        self.took_over: LockHolder | None = None  # the stale holder replaced by `acquire`, if any

    def _try_create(self, me: LockHolder) -> bool:
        tmp = unique_temp_path(self.path)
        try:
            with open(tmp, "w") as f:
                f.write(me.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:  # our temp file was swept by the holder's cleanup: the lock is taken
                return False
            except OSError as exc:  # a filesystem without hard links: exclusive create instead
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(me.to_json() + "\n")
                return True
        finally:
            tmp.unlink(missing_ok=True)

    def _read_holder(self) -> LockHolder | None:
        """The current holder, None if the lock file vanished meanwhile; RunLocked if unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return LockHolder.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise RunLocked(self.run_dir, None, f"unreadable lock file: {exc}") from None

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if sys.platform == "win32":  # pragma: no cover - no flock
            yield
            return
        fd = os.open(self.run_dir / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def acquire(self) -> LockHolder:
        """Take the lock (the directory must exist) or raise `RunLocked` naming the holder."""
        if self.holder is not None:
            return self.holder
        me = LockHolder.current()
        for _ in range(5):  # each round either succeeds, raises, or saw the file vanish meanwhile
            if self._try_create(me):
                self.holder = me
                return me
            holder = self._read_holder()
            if holder is None:
                continue
            if not holder_is_stale(holder, host=me.host):
                raise RunLocked(self.run_dir, holder)
            with self._guard():
                again = self._read_holder()
                if again is not None and again.token == holder.token:
                    self.path.unlink()
                    self.took_over = holder
                if self._try_create(me):
                    self.holder = me
                    return me
        holder = self._read_holder()
        raise RunLocked(self.run_dir, holder, "the lock file kept changing")

    def release(self) -> None:
        """Remove the lock file if this object holds it (never another client's lock)."""
        if self.holder is None:
            return
        try:
            current = self._read_holder()
        except RunLocked:
            current = None
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)
        self.holder = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["RunLock", "RunLocked", "LockHolder", "holder_is_stale", "unique_temp_path", "LOCK_NAME"]
