"""Fault injection: a run survives lost workers, never trusts a corrupted or foreign unit, has one
writer per run directory, and ends every expected failure with one clear line (issue: reliability
on a cluster). Every cluster listens on 127.0.0.1 only; every wait is bounded.

The fault table of the issue, row by row, is re-run by benchmarks/faults.py (bigger, slower).
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kernelcert import cli, endings, pipeline, provenance
from kernelcert.cluster import resilient_map
from kernelcert.pipeline import store
from kernelcert.runlock import RunLock, RunLocked

from test_pipeline import tiny_config, to_toml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
MORE_UNITS = {"partition.num_partitions": [1, 3, 5, 8, 12]}  # 29 units


def unit_arrays(run_dir):
    """{file: {member: (dtype, shape, bytes)}} of every unit, without the members that record
    timings, process ids and their checksums (meta, checksums)."""
    out = {}
    for p in sorted((Path(run_dir) / "units").glob("*.npz")):
        with np.load(p) as z:
            out[p.name] = {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files
                           if k not in ("meta", store.CHECKSUMS)}
    return out


def assert_same_results(res, ref):
    assert unit_arrays(res.run_dir) == unit_arrays(ref.run_dir)
    assert res.points_path.read_bytes() == ref.points_path.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """In-process run of the 29-unit config: the results every faulty run must reproduce."""
    return pipeline.run(tiny_config(tmp_path_factory.mktemp("reference"), **MORE_UNITS))


def start_workers(address, n, *extra):
    """`n` `dask worker` processes without a nanny (a killed one stays dead) on the loopback."""
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
           "--host", "127.0.0.1", "--no-dashboard", *extra]
    return [subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


@pytest.fixture
def scheduler():
    """A scheduler on 127.0.0.1 with no workers of its own; yields (address, started worker processes)."""
    from dask.distributed import LocalCluster

    procs = []
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL) as c:
        yield c.scheduler_address, procs
        for p in procs:
            p.kill()
            p.wait(timeout=30)


def wait_for_workers(address, n):
    from dask.distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=90)
        return dict(client.run(os.getpid))


# --------------------------------------------------------------------------- lost workers
def test_a_worker_killed_mid_run_changes_nothing(tmp_path, reference, scheduler):
    address, procs = scheduler
    procs += start_workers(address, 2)
    wait_for_workers(address, 2)
    cfg = pipeline.with_overrides(pipeline.config_from_dict(tiny_config(tmp_path, **MORE_UNITS)), scheduler=address)
    units = pipeline.run_directory(cfg) / "units"
    killed = {}

    def kill_one_worker_midway():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            n = len(list(units.glob("*.npz"))) if units.exists() else 0
            if n >= 2:
                procs[0].send_signal(signal.SIGKILL)
                killed["at"] = n
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_one_worker_midway, daemon=True)
    watcher.start()
    res = pipeline.run(cfg)
    watcher.join(timeout=5)
    assert procs[0].wait(timeout=10) == -signal.SIGKILL
    assert 2 <= killed["at"] < 29, killed  # the worker died while units were left
    assert res.computed_units == 29
    assert_same_results(res, reference)


def test_a_unit_that_kills_its_worker_for_memory_is_named():
    import dask
    from dask.distributed import Client

    from kernelcert.cluster import local_cluster

    def hog(mib, shared):
        a = np.ones(int(mib) * 2**20 // 8)
        time.sleep(5)
        return float(a[0])

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with local_cluster(1, memory_limit="400MiB") as cluster, Client(cluster) as client:
            with pytest.raises(endings.WorkerKilled) as info:
                for _ in resilient_map(client, hog, [900], None, max_in_flight=1, unit_name=lambda t: f"unit-{t}MiB",
                                       unit_memory_mb=float):
                    pass
    msg = str(info.value)
    assert info.value.for_memory and info.value.unit == "unit-900MiB"
    assert "unit-900MiB was killed for memory" in msg and "400 MiB limit" in msg and "needs about 900 MiB" in msg
    assert endings.classify(info.value)[1] == endings.ExitStatus.MEMORY


def test_workers_too_small_to_load_kernelcert_end_as_killed_for_memory():
    """A 300 MB worker dies while loading kernelcert (about 330 MiB) for the environment check: the
    run ends as killed for memory (not as a foreign environment), naming the limit and what the
    largest unit needs."""
    from dask.distributed import Client

    from kernelcert.cluster import check_workers, local_cluster

    here = provenance.Provenance.current("cpu", "float64")
    with local_cluster(1, memory_limit="300MB") as cluster, Client(cluster) as client:
        with pytest.raises(endings.WorkerKilled) as info:
            check_workers(client, here, largest_unit_mb=2104.0)
    msg = str(info.value)
    assert info.value.for_memory and endings.classify(info.value)[1] == endings.ExitStatus.MEMORY
    assert "killed for memory while loading kernelcert, before any unit ran" in msg, msg
    assert "286 MiB limit" in msg and "the largest work unit needs about 2,104 MiB" in msg, msg


# --------------------------------------------------------------------------- foreign environments
PRELOAD_OTHER_VERSION = """
import kernelcert.provenance as p
p.__version__ = "0.0.0+other"
"""


def test_a_worker_with_another_kernelcert_is_refused(tmp_path, scheduler):
    address, procs = scheduler
    preload = tmp_path / "other_version.py"
    preload.write_text(PRELOAD_OTHER_VERSION)
    procs += start_workers(address, 1, "--preload", str(preload))
    wait_for_workers(address, 1)
    cfg = pipeline.with_overrides(pipeline.config_from_dict(tiny_config(tmp_path / "runs")), scheduler=address)
    with pytest.raises(provenance.EnvironmentMismatch, match=r"kernelcert \S+ here, 0\.0\.0\+other on the worker"):
        pipeline.run(cfg)
    assert not list((pipeline.run_directory(cfg) / "units").glob("*.npz"))  # nothing mixed in
    # a worker that joins after the start is refused by its first unit
    from dask.distributed import Client

    here = provenance.Provenance.current("cpu", "float64")
    with Client(address, timeout="30s") as client:
        fut = client.submit(provenance.check_environment, here, "late worker", pure=False)
        with pytest.raises(provenance.EnvironmentMismatch, match="late worker runs a different environment"):
            fut.result(timeout=60)


# --------------------------------------------------------------------------- corrupted or foreign units
def _rewrite(path, change):
    """Rewrite a unit through the store's own writer after `change(arrays)` (valid checksums)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != store.CHECKSUMS}
    change(arrays)
    store.write_unit(path, arrays)


def _flip_byte(path, member, at=3):
    """Change one byte of `member`'s data in place (the zip CRC is left stale)."""
    off = pipeline.UnitFile(path).data_offset(member)
    raw = bytearray(path.read_bytes())
    raw[off + at] ^= 0x10
    path.write_bytes(bytes(raw))


def _set_meta(key, sub, value):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        if sub is None:
            meta[key] = value
        else:
            meta[key][sub] = value
        arrays["meta"] = np.array(json.dumps(meta))
    return change


def test_every_bad_unit_is_recomputed_never_trusted(tmp_path, caplog):
    cfg = tiny_config(tmp_path)
    first = pipeline.run(cfg)
    units = first.run_dir / "units"
    original = unit_arrays(first.run_dir)
    paths = sorted(units.glob("*.npz"))
    metas = {p.name: pipeline.UnitFile(p).meta() for p in paths}
    here = provenance.Provenance.current("cpu", "float64")

    def check(p):
        m = metas[p.name]
        layout = store.unit_layout(2, 30, 3, m["level"], m["n"])
        return store.check_unit(p, cfg_hash=first.config_hash, fingerprint=m["fingerprint"], provenance=here,
                                layout=layout)

    assert all(check(p).ok for p in paths)
    cases = [  # (corruption, what the check says)
        (lambda p: _flip_byte(p, "L0.scores"), "member 'L0.scores' fails its checksum"),  # zip CRC unchecked
        (lambda p: _flip_byte(p, "L1.votes", at=0), "member 'L1.votes' fails its checksum"),
        (lambda p: np.savez(p, **{k: v for k, v in np.load(p).items() if k != "L1.votes"}),
         "member 'L1.votes' is missing"),
        (lambda p: _rewrite(p, _set_meta("provenance", "kernelcert", "0.0.0+other")),
         "computed in another environment: kernelcert"),
        (lambda p: _rewrite(p, _set_meta("format", None, store.FORMAT_VERSION - 1)),
         f"written in unit format {store.FORMAT_VERSION - 1}"),
        (lambda p: _rewrite(p, lambda a: a.update({"L0.votes": a["L0.votes"].astype(np.int32)})),
         "member 'L0.votes' has dtype int32, expected int16"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "unreadable"),
    ]
    for (corrupt, words), p in zip(cases, paths):
        corrupt(p)
        got = check(p)
        assert not got.ok and words in got.summary(limit=9), (p.name, got.problems)
    with caplog.at_level(logging.WARNING, logger="kernelcert"):
        again = pipeline.run(cfg)
    assert (again.computed_units, again.skipped_units) == (len(cases), 9 - len(cases))
    assert f"{len(cases)} stored work units fail their checks and are recomputed" in caplog.text
    assert unit_arrays(again.run_dir) == original
    assert again.points_path.read_bytes() == first.points_path.read_bytes()
    assert pipeline.run(cfg).computed_units == 0  # never an endless error


# --------------------------------------------------------------------------- one writer
def test_a_second_client_exits_at_once_with_the_lock_message(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "runs")
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kernelcert.runlock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
                               str(run_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        rc = cli.main(["run", str(path), "--no-progress", "-q"])
        took = time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait(timeout=30)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == endings.ExitStatus.LOCKED == 3
    assert len(err) == 1 and f"in use by another kernelcert client: pid {holder.pid} on host" in err[0], err
    assert took < 10, took  # at once: before any data is loaded
    assert not list((run_dir / "units").glob("*")) if (run_dir / "units").exists() else True
    # the holder is gone: its lock is stale and the next client takes over
    res = pipeline.run(cfg)
    assert res.computed_units == 9 and not (run_dir / ".lock").exists()


def test_python_callers_get_run_locked(tmp_path):
    cfg = tiny_config(tmp_path)
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        with pytest.raises(RunLocked, match="in use by another kernelcert client"):
            pipeline.run(cfg)


# --------------------------------------------------------------------------- clear endings
def test_disk_full_during_a_write_ends_cleanly_and_resumes(tmp_path, capsys, monkeypatch, reference):
    cfg = tiny_config(tmp_path, **MORE_UNITS)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    real_savez = np.savez
    calls = []

    def savez_then_disk_full(f, **arrays):
        calls.append(1)
        if len(calls) > 4:
            f.write(b"PK\x03\x04 half a unit")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez_then_disk_full)
    rc = cli.main(["run", str(path), "--no-progress", "-q"])
    monkeypatch.setattr(np, "savez", real_savez)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == endings.ExitStatus.DISK_FULL == 5
    assert len(err) == 1, err
    assert err[0].startswith("kernelcert: stopped: disk full") and "4 of 29 work units are saved" in err[0]
    assert "rerun the same command to resume" in err[0]
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    assert len(list((run_dir / "units").glob("*.npz"))) == 4
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()
    res = pipeline.run(cfg)
    assert (res.computed_units, res.skipped_units) == (25, 4)
    assert_same_results(res, reference)


def test_sigint_always_stops_the_run_with_one_line(tmp_path):
    cfg = tiny_config(tmp_path / "runs", **{"data.n_train": 400, "data.n_test": 200,
                                            "partition.num_partitions": [2, 4, 8, 16, 20]})
    cfg["output"]["plots"] = False
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "kernelcert", "run", str(path), "--no-progress", "-q"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "units").exists() and len(list((run_dir / "units").glob("*.npz"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = err.strip().splitlines()
    assert proc.returncode == endings.ExitStatus.INTERRUPTED == 130, err
    assert "Traceback" not in err and len(lines) == 1, err
    saved = len(list((run_dir / "units").glob("*.npz")))
    assert lines[0].startswith("kernelcert: stopped: interrupted by SIGINT (Ctrl-C)")
    assert f"{saved} of 50 work units are saved" in lines[0]
    assert not (run_dir / ".lock").exists()


def test_losing_the_scheduler_ends_with_one_line_and_resumes(tmp_path):
    """Scheduler killed mid-run: exit status 8 and exactly one line on stderr (Dask's own log of its
    failed or cancelled reconnection is dropped), then a rerun resumes."""
    cfg = tiny_config(tmp_path / "runs", **{"data.n_train": 400, "data.n_test": 200,
                                            "partition.num_partitions": [2, 4, 8, 16, 20]})
    cfg["output"]["plots"] = False
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    sched_file = tmp_path / "scheduler.json"
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                              "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [sched]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (sched_file.exists() and sched_file.stat().st_size):
            time.sleep(0.05)
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs += start_workers(address, 2)
        wait_for_workers(address, 2)
        client = subprocess.Popen([sys.executable, "-m", "kernelcert", "run", str(path), "--scheduler", address,
                                   "--no-progress", "-q"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        procs.append(client)
        deadline = time.time() + 180
        while time.time() < deadline and client.poll() is None:
            if (run_dir / "units").exists() and len(list((run_dir / "units").glob("*.npz"))) >= 2:
                break
            time.sleep(0.01)
        assert client.poll() is None, "the run ended before the scheduler could be killed"
        sched.send_signal(signal.SIGKILL)
        _, err = client.communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    lines = err.strip().splitlines()
    assert client.returncode == endings.ExitStatus.CLUSTER == 8, err
    assert len(lines) == 1, err  # no traceback of Dask's reconnection attempt
    saved = len(list((run_dir / "units").glob("*.npz")))
    assert lines[0].startswith("kernelcert: stopped: lost the Dask cluster (the connection to the scheduler "
                               f"{address} was lost); {saved} of 50 work units are saved"), lines[0]
    assert not (run_dir / ".lock").exists()
    res = pipeline.run(cfg)  # in-process, resuming
    assert (res.computed_units, res.skipped_units) == (50 - saved, saved)


def test_only_the_reconnection_noise_of_a_lost_scheduler_is_dropped():
    """`quiet_reconnection` drops exactly Dask's 'Failed to reconnect' line and the traceback of the
    cancelled reconnection from 'distributed.client', lets every other record through, and removes
    its filter on exit."""
    import asyncio

    from kernelcert.cluster import quiet_reconnection

    log = logging.getLogger("distributed.client")
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append

    def cancelled_reconnection():
        try:
            raise asyncio.CancelledError()
        except asyncio.CancelledError as exc:
            log.exception(exc)  # what distributed.utils.log_errors logs

    def log_all():
        log.error("Failed to reconnect to scheduler after %.2f seconds, closing client", 20.0)
        cancelled_reconnection()
        log.error("another error")
        try:
            raise ValueError("boom")
        except ValueError as exc:
            log.exception(exc)

    filters_before = list(log.filters)
    log.addHandler(handler)
    try:
        with quiet_reconnection():
            log_all()
        inside = [r.getMessage() for r in records]
        records.clear()
        log_all()
    finally:
        log.removeHandler(handler)
    assert inside == ["another error", "boom"]
    assert len(records) == 4 and log.filters == filters_before
