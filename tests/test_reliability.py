"""Building blocks of reliable runs: run-directory lock, checksums, provenance, clear endings, peak memory.

(The end-to-end fault-injection runs are in tests/test_faults.py.)
"""

import datetime
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert import endings, integrity, procmem, provenance, runlock

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --------------------------------------------------------------------------- run-directory lock
def _holder(**changes):
    h = runlock.LockHolder.current()
    return runlock.LockHolder(**{**h.__dict__, **changes})


def test_lock_excludes_a_second_client_and_names_the_holder(tmp_path):
    with runlock.RunLock(tmp_path) as first:
        assert (tmp_path / ".lock").exists()
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(runlock.RunLocked) as info:
            runlock.RunLock(tmp_path).acquire()
        msg = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and "since" in msg
        assert "\n" not in msg and str(tmp_path / ".lock") in msg
        assert info.value.holder.token == first.holder.token
    assert not (tmp_path / ".lock").exists()
    runlock.RunLock(tmp_path).acquire()  # free again


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_stale_lock_rule(tmp_path):
    proc = _sleeper()
    try:
        alive = _holder(pid=proc.pid)
        assert not runlock.holder_is_stale(alive)  # same host, process alive
        # the pid belongs to a process born after the lock was taken: the holder is gone (pid reused)
        old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat()
        assert runlock.holder_is_stale(_holder(pid=proc.pid, started=old))
        assert not runlock.holder_is_stale(_holder(pid=proc.pid, host="some-other-host"))
    finally:
        proc.kill()
        proc.wait()
    dead = _holder(pid=proc.pid)
    assert runlock.holder_is_stale(dead)
    assert not runlock.holder_is_stale(_holder(pid=proc.pid, host="some-other-host"))  # cannot check: kept

    (tmp_path / ".lock").write_text(dead.to_json())
    lock = runlock.RunLock(tmp_path)
    lock.acquire()
    assert lock.took_over == dead and lock.holder.pid == os.getpid()
    lock.release()

    (tmp_path / ".lock").write_text(_holder(pid=proc.pid, host="elsewhere").to_json())
    with pytest.raises(runlock.RunLocked, match="host elsewhere"):
        runlock.RunLock(tmp_path).acquire()


def test_unreadable_lock_file_is_reported_not_broken(tmp_path):
    (tmp_path / ".lock").write_text("{not json")
    with pytest.raises(runlock.RunLocked, match="unreadable lock file"):
        runlock.RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == "{not json"


def test_release_never_removes_another_clients_lock(tmp_path):
    lock = runlock.RunLock(tmp_path)
    lock.acquire()
    other = _holder(pid=os.getpid() + 1)
    (tmp_path / ".lock").write_text(other.to_json())  # replaced behind our back
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text())["token"] == other.token


TAKE_OVER = """
import sys, time
from kernelcert.runlock import RunLock, RunLocked
run_dir, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
try:
    RunLock(run_dir).acquire()
    print("took", flush=True)
    time.sleep(3)
except RunLocked:
    print("refused", flush=True)
"""


def test_only_one_client_takes_over_a_stale_lock(tmp_path):
    proc = _sleeper()
    proc.kill()
    proc.wait()
    (tmp_path / ".lock").write_text(_holder(pid=proc.pid).to_json())
    start = time.time() + 4.0  # every client is past its imports by then
    procs = [subprocess.Popen([sys.executable, "-c", TAKE_OVER, str(tmp_path), str(start)], env=ENV,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["refused", "refused", "took"]


def test_temp_names_are_unique_per_writer(tmp_path):
    names = {runlock.unique_temp_path(tmp_path / "a.npz") for _ in range(100)}
    assert len(names) == 100
    n = next(iter(names)).name
    assert n.startswith(".a.npz.") and n.endswith(".tmp") and f".{os.getpid()}." in n


# --------------------------------------------------------------------------- checksums
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["int16", "uint32", "float64", "bool", "uint16"]),
       shape=st.sampled_from([(7,), (3, 4), (2, 3, 3), ()]))
def test_digest_sees_every_byte_dtype_and_shape(seed, dtype, shape):
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 2, size=shape) if dtype == "bool" else rng.integers(0, 200, size=shape)).astype(dtype)
    d = integrity.array_digest(a)
    assert d == integrity.array_digest(a.copy())
    raw = bytearray(a.tobytes())
    pos, bit = int(rng.integers(len(raw))), int(rng.integers(8))
    raw[pos] ^= 1 << bit
    b = np.frombuffer(bytes(raw), dtype=a.dtype).reshape(a.shape)
    assert integrity.array_digest(b) != d
    if a.ndim > 1:
        assert integrity.array_digest(a.reshape(-1)) != d  # same bytes, other shape
    if a.ndim == 1:
        assert integrity.array_digest(a.reshape(a.size, 1)) != d
    if a.dtype.itemsize == 2:
        assert integrity.array_digest(a.view(np.float16)) != d  # same bytes, other dtype


def test_verify_digests_reports_each_problem():
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.ones((2, 2)), "meta": np.array("{}")}
    rec = integrity.digest_map(arrays)
    assert integrity.verify_digests(arrays.__getitem__, rec, names=arrays).ok
    changed = dict(arrays, a=np.array([0, 1, 2, 3, 5]))
    check = integrity.verify_digests(changed.__getitem__, rec, names=changed)
    assert not check and "'a' fails its checksum" in check.summary()

    def broken(name):
        raise ValueError("truncated member")

    check = integrity.verify_digests(broken, rec, names=list(arrays) + ["extra"])
    assert len(check.problems) == 4 and "no recorded checksum" in check.problems[0]
    assert "unreadable (truncated member)" in check.summary(limit=4)


def test_check_layout():
    found = {"v": (np.dtype(np.int16), (5,)), "p": (np.dtype(np.uint32), (5, 3, 3)), "x": (np.dtype(bool), (5,))}
    want = {"v": (np.int16, (5,)), "p": ((np.uint16, np.uint32), (5, 3, 3)), "r": (np.int64, (5,))}
    check = integrity.check_layout(found, want)
    assert check.problems == ("member 'r' is missing", "unexpected member 'x'")
    check = integrity.check_layout({"v": (np.dtype(np.int32), (4,))}, {"v": (np.int16, (5,))})
    assert check.problems == ("member 'v' has dtype int32, expected int16", "member 'v' has shape (4,), expected (5,)")
    assert integrity.check_layout(found, {k: (v[0], v[1]) for k, v in found.items()}).ok


# --------------------------------------------------------------------------- provenance
def test_provenance_round_trip_and_differences():
    here = provenance.Provenance.current("cpu", "float64")
    assert here.device == "cpu" and here.kernelcert and here.numpy == np.__version__ and here.blas
    assert provenance.Provenance.from_dict(json.loads(here.to_json())) == here
    assert here.differences(here) == []
    other = provenance.Provenance(**{**here.__dict__, "kernelcert": "9.9.9", "python": "2.7.0"})
    assert here.differences(other) == [f"kernelcert {here.kernelcert} here, 9.9.9 there"]  # python: informational
    with pytest.raises(provenance.EnvironmentMismatch, match="worker tcp://w1 runs a different environment.*9.9.9"):
        here.require_same(other, "worker tcp://w1")
    f32 = provenance.Provenance.current("cpu", "float32")
    assert here.differences(f32) == ["dtype float64 here, float32 there"]
    with pytest.raises(ValueError, match="resolved"):
        provenance.Provenance.current("auto")
    with pytest.raises(ValueError, match="missing keys \\['numpy'\\]"):
        d = here.to_dict()
        del d["numpy"]
        provenance.Provenance.from_dict(d)
    assert provenance.resolved_device("cpu") == "cpu"
    assert provenance.resolved_device("auto") in provenance.DEVICES


# --------------------------------------------------------------------------- clear endings
@pytest.mark.parametrize("exc,status,words", [
    (OSError(errno.ENOSPC, "No space left on device", "/runs/u.npz"), endings.ExitStatus.DISK_FULL,
     "disk full while writing /runs/u.npz (No space left on device)"),
    (OSError(errno.EACCES, "Permission denied"), endings.ExitStatus.PERMISSION, "permission denied (Permission"),
    (MemoryError(), endings.ExitStatus.MEMORY, "out of memory in the client process"),
    (KeyboardInterrupt(), endings.ExitStatus.INTERRUPTED, "interrupted (Ctrl-C)"),
    (endings.Interrupted(signal.SIGTERM), endings.ExitStatus.INTERRUPTED, "interrupted by SIGTERM"),
    (endings.WorkerKilled("unit u killed for memory", unit="u", for_memory=True), endings.ExitStatus.MEMORY,
     "unit u killed for memory"),
    (endings.WorkerKilled("unit u crashed", unit="u", for_memory=False), endings.ExitStatus.CLUSTER, "crashed"),
    (endings.ClusterLost("lost the Dask cluster (scheduler gone)"), endings.ExitStatus.CLUSTER, "scheduler gone"),
    (endings.ClusterLost("lost the Dask cluster (Client lost the connection.\n  Please re-run.)"),
     endings.ExitStatus.CLUSTER, "(Client lost the connection. Please re-run.)"),
])
def test_expected_stops_become_one_line(exc, status, words):
    with pytest.raises((endings.RunStopped, endings.RunInterrupted)) as info:
        with endings.clear_ending(total=9, saved=lambda: 4, run_dir="runs/x"):
            raise exc
    ending = info.value.ending
    assert ending.status == status and words in ending.problem
    msg = str(info.value)
    assert "\n" not in msg and "4 of 9 work units are saved in runs/x" in msg and "rerun" in msg
    assert f"exit status {int(status)}" in msg
    assert isinstance(info.value, KeyboardInterrupt) == (status == endings.ExitStatus.INTERRUPTED)
    assert info.value.__cause__ is exc


def test_unexpected_errors_pass_through():
    with pytest.raises(ZeroDivisionError):
        with endings.clear_ending(1, lambda: 0, "r"):
            1 / 0
    with pytest.raises(OSError, match="Input/output"):
        with endings.clear_ending(1, lambda: 0, "r"):
            raise OSError(errno.EIO, "Input/output error")


def test_interrupt_guard_stops_even_when_the_first_interrupt_is_swallowed():
    before = signal.getsignal(signal.SIGINT)
    with endings.InterruptGuard() as guard:
        guard.check()  # nothing yet
        try:  # e.g. a garbage-collector callback that catches and prints the KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException as exc:  # noqa: BLE001
            swallowed = exc
        assert isinstance(swallowed, endings.Interrupted)
        with pytest.raises(endings.Interrupted):
            guard.check()
    assert signal.getsignal(signal.SIGINT) is before


def test_an_interrupt_inside_a_finalizer_is_deferred_to_the_next_check(monkeypatch):
    """Python prints and discards an exception raised in a gc callback or __del__ ('Exception ignored
    in ...'): the guard records the signal there and raises at the next check instead."""
    import gc

    seen, lost = [], []
    monkeypatch.setattr(sys, "unraisablehook", lost.append)  # where Python sends what it discards

    def callback(phase, info):
        if phase == "start" and not seen:
            seen.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside the gc callback

    with endings.InterruptGuard() as guard:
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        assert seen and guard.signum == signal.SIGINT
        assert not lost  # nothing was raised (and discarded) inside the callback
        with pytest.raises(endings.Interrupted):
            guard.check()


# --------------------------------------------------------------------------- peak memory
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux")
def test_peak_rss_can_be_reset_per_run():
    # in a fresh process: a long-lived test worker's memory state (earlier tests' peaks, cached pages)
    # says nothing about the per-run reset
    code = """
import numpy as np
from kernelcert import procmem
assert procmem.reset_peak_rss()
base = procmem.peak_rss_mb()
a = np.ones(40 * 2**20 // 8)  # 40 MiB touched
high = procmem.peak_rss_mb()
assert high >= base + 30, (base, high)
del a
assert procmem.reset_peak_rss()
after = procmem.peak_rss_mb()
assert after <= high - 30, (high, after)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
