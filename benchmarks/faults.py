"""The fault table of the reliability issue, re-run: each row injects one fault into a real run.

    .venv/bin/python -m benchmarks.faults [--quick] [--only ROW ...]

Every row runs the `kernelcert` command in its own process (in-process backend, a LocalCluster, or
an external `dask scheduler` with `dask worker` processes, all on 127.0.0.1) on one synthetic
config, injects its fault, and records the outcome:

- "survived": exit status 0 and the unit arrays and points.csv byte-identical to an undisturbed
  in-process run;
- "clear message": the documented exit status, exactly one line on stderr naming the problem (and,
  where units were being computed, how many are saved), no unit from a foreign environment on
  disk, and a rerun without the fault that finishes byte-identical to the undisturbed run.

Anything else is "FAILED". The last row measures the worker tuning (malloc trim threshold) as the
workers' user and system CPU seconds for the same run. Writes benchmarks/results/faults.json
(faults_quick.json with --quick), with `identical_results` (per row that compares them: results
byte-identical to the undisturbed in-process run, on the external cluster, the LocalCluster and after
every interruption) and `all_rows_ok`; the command exits with status 1 unless every row survived or
ended with a clear message and every comparison was identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks._common import provenance as provenance_line
from benchmarks._common import stamp, write_result
from kernelcert.pipeline import UnitFile, load_config, run, run_directory

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
PY = sys.executable


CONFIG = """\
[data]
dataset = "synthetic"
num_classes = 3
n_train = {n_train}
n_test = {n_test}
dim = 20
seed = 5
separation = 2.0

[kernel]
architecture = "fully_connected"
depth = 2
W_std = 1.5
b_std = 0.1

[[learners]]
type = "svm"

[[learners]]
type = "regression"
ridge = 0.01

[partition]
rule = "ss_dpa"
num_partitions = {num_partitions}

[output]
dir = "{out_dir}"
name = "faults"
plots = false

[execution]
progress = false
"""


def config_text(out_dir: Path, quick: bool, n_train: int | None = None, n_test: int | None = None,
                num_partitions=(1, 4, 8, 16)) -> str:
    """The rows' config: synthetic, 3 classes, both learners, 29 work units (N_p in 1, 4, 8, 16)."""
    return CONFIG.format(out_dir=out_dir, n_train=n_train or (600 if quick else 1500),
                         n_test=n_test or (150 if quick else 400), num_partitions=list(num_partitions))


class Case:
    """One row's working directory: its config file, its run directory, the command line."""

    def __init__(self, base: Path, row: str, quick: bool, out: Path | None = None, **sizes):
        self.dir = base / row
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "config.toml"
        self.path.write_text(config_text(out or self.dir / "runs", quick, **sizes))
        self.run_dir = run_directory(load_config(self.path))

    def start(self, *args) -> subprocess.Popen:
        return subprocess.Popen([PY, "-m", "kernelcert", "run", str(self.path), "--no-progress", "-q", *args],
                                cwd=self.dir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def run(self, *args, timeout=1800) -> tuple[int, list[str]]:
        p = self.start(*args)
        _, err = p.communicate(timeout=timeout)
        return p.returncode, [line for line in err.strip().splitlines() if line]

    def units(self) -> list[Path]:
        return sorted((self.run_dir / "units").glob("*.npz")) if (self.run_dir / "units").exists() else []

    def wait_units(self, n: int, proc: subprocess.Popen, timeout=600) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            k = len(self.units())
            if k >= n:
                return k
            time.sleep(0.01)
        return len(self.units())


def unit_arrays(run_dir: Path) -> dict:
    out = {}
    for p in sorted((run_dir / "units").glob("*.npz")):
        with np.load(p) as z:
            out[p.name] = {k: z[k].tobytes() for k in z.files if k not in ("meta", "checksums")}
    return out


def identical(case: Case, ref: Case) -> bool:
    return (unit_arrays(case.run_dir) == unit_arrays(ref.run_dir)
            and (case.run_dir / "points.csv").read_bytes() == (ref.run_dir / "points.csv").read_bytes())


def outcome(survived: bool, detail: str, **extra) -> dict:
    return {"outcome": "survived" if survived else "FAILED", "detail": detail, **extra}


def clear(rc: int, want_rc: int, err: list[str], words: str, resumed: bool | None, **extra) -> dict:
    ok = rc == want_rc and len(err) == 1 and words in err[0] and resumed is not False
    return {"outcome": "clear message" if ok else "FAILED", "exit_status": rc, "message": err[-1] if err else "",
            "stderr_lines": len(err), "stderr": err[-5:], "rerun_identical": resumed, **extra}


# --------------------------------------------------------------------------- external clusters
class Scheduler:
    """`dask scheduler` + `dask worker` processes on 127.0.0.1 (killed on exit)."""

    def __init__(self, base: Path):
        self.file = base / f"scheduler-{time.time_ns()}.json"
        self.scheduler = subprocess.Popen([PY, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                           "--port", "0", "--no-dashboard", "--scheduler-file", str(self.file)],
                                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers: list[subprocess.Popen] = []
        deadline = time.time() + 120
        while not self.file.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]

    def add_workers(self, n: int, *extra) -> None:
        for _ in range(n):
            self.workers.append(subprocess.Popen(
                [PY, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", *extra],
                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        code = ("import sys; from dask.distributed import Client; c = Client(sys.argv[1], timeout='60s'); "
                "c.wait_for_workers(int(sys.argv[2]), timeout=180); c.close()")
        subprocess.run([PY, "-c", code, self.address, str(len(self.workers))], env=ENV, check=True, timeout=300)

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


# --------------------------------------------------------------------------- rows
def row_kill_external_worker(base, ref, quick):
    case = Case(base, "kill_external_worker", quick)
    s = Scheduler(base)
    try:
        s.add_workers(2, "--no-nanny")
        p = case.start("--scheduler", s.address)
        at = case.wait_units(3, p)
        s.workers[0].send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=1800)
        same = p.returncode == 0 and identical(case, ref)
        return outcome(same, f"worker killed (no nanny: it stays dead) after {at} units; rc {p.returncode}; "
                             f"results identical to the in-process run: {same}",
                       identical=same, stderr_tail=err.strip().splitlines()[-3:] if err.strip() else [])
    finally:
        s.close()


def row_kill_local_worker(base, ref, quick):
    case = Case(base, "kill_localcluster_worker", quick)
    p = case.start("--workers", "2")
    at = case.wait_units(3, p)
    me = psutil.Process(p.pid)
    workers = [c for c in me.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    if workers:
        workers[0].send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=1800)
    same = p.returncode == 0 and identical(case, ref)
    return outcome(bool(workers) and same,
                   f"{len(workers)} worker processes seen, one killed after {at} units (its nanny restarts it); "
                   f"rc {p.returncode}; results identical to the in-process run: {same}", identical=same,
                   stderr_tail=err.strip().splitlines()[-3:] if err.strip() else [])


def _memory_limited(base: Path, quick: bool, limit: str, row: str) -> tuple[int, list[str], float]:
    """One unit of 6,000 training points (about 2 GiB) on one `dask worker` (with its nanny) limited to `limit`."""
    case = Case(base, row, quick, n_train=6000, n_test=50, num_partitions=[1])
    s = Scheduler(base)
    try:
        s.add_workers(1, "--memory-limit", limit)
        t0 = time.perf_counter()
        rc, err = case.run("--scheduler", s.address)
        return rc, err, time.perf_counter() - t0
    finally:
        s.close()


def row_memory_limited_worker(base, ref, quick):
    """300 MB: less than a worker needs to load kernelcert (about 330 MiB), so it dies before any unit."""
    rc, err, wall = _memory_limited(base, quick, "300MB", "memory_limited_worker")
    res = clear(rc, 7, err, "killed for memory", None, run_seconds=round(wall, 1))
    if res["outcome"] != "FAILED" and "the largest work unit needs about" not in err[0]:
        res["outcome"] = "FAILED"  # the memory the run needs must be named
    return res


def row_memory_limited_worker_1gb(base, ref, quick):
    """1 GB: the worker starts, the unit (about 2 GiB) is killed for memory on every try."""
    rc, err, wall = _memory_limited(base, quick, "1GB", "memory_limited_worker_1gb")
    res = clear(rc, 7, err, "work unit np00001-p00000 was killed for memory", None, run_seconds=round(wall, 1))
    if res["outcome"] != "FAILED" and "needs about" not in err[0]:
        res["outcome"] = "FAILED"
    return res


def _flip(path: Path, member: str, at: int = 3) -> None:
    """Change one byte of `member`'s data in place (the zip CRC is left stale)."""
    off = UnitFile(path).data_offset(member) + at
    raw = bytearray(path.read_bytes())
    raw[off] ^= 0x10
    path.write_bytes(bytes(raw))


def _copy_reference(base, ref, row, quick) -> Case:
    case = Case(base, row, quick)
    shutil.copytree(ref.run_dir, case.run_dir)
    (case.run_dir / "config.json").unlink()  # rewritten by the run (it names the output dir)
    return case


def row_changed_value(base, ref, quick):
    case = _copy_reference(base, ref, "changed_value_in_unit", quick)
    u = case.units()
    _flip(u[0], "L0.scores")
    _flip(u[1], "L1.cost_lower")
    rc, err = case.run()
    same = rc == 0 and identical(case, ref)
    again, _ = case.run()
    return outcome(same and again == 0,
                   f"one score and one cost changed in place; rerun rc {rc}, identical {same}; "
                   f"the 2 units were recomputed (log: {'; '.join(e for e in err if 'recomputed' in e)[:200]})",
                   identical=same)


def row_changed_vote_missing_array(base, ref, quick):
    case = _copy_reference(base, ref, "changed_vote_or_missing_array", quick)
    u = case.units()
    _flip(u[2], "L0.votes", at=0)
    with np.load(u[3]) as z:
        arrays = {k: z[k] for k in z.files if k != "L1.votes"}
    np.savez(u[3], **arrays)
    rc, err = case.run()
    rc2, err2 = case.run()
    same = rc == 0 and rc2 == 0 and identical(case, ref)
    return outcome(same, f"rerun rc {rc} (recomputed), second rerun rc {rc2} (nothing recomputed: no endless "
                         f"error); identical {same} (log: {'; '.join(e for e in err if 'recomputed' in e)[:200]})",
                   identical=same)


PRELOAD = "import kernelcert.provenance as p\np.__version__ = '0.0.0+other'\n"


def row_other_version_worker(base, ref, quick):
    case = Case(base, "other_version_worker", quick)
    pre = case.dir / "other_version.py"
    pre.write_text(PRELOAD)
    s = Scheduler(base)
    try:
        s.add_workers(1, "--no-nanny", "--preload", str(pre))
        rc, err = case.run("--scheduler", s.address)
    finally:
        s.close()
    mixed = len(case.units())
    res = clear(rc, 4, err, "0.0.0+other on the worker", None, units_on_disk=mixed)
    if mixed:
        res["outcome"] = "FAILED"
    return res


# the `kernelcert` command, already imported, started on a line of stdin: the second client then starts
# within milliseconds while the first holds the lock (a cold start takes seconds, as long as a quick run)
READY_CLIENT = "import sys\nfrom kernelcert import cli\nsys.stdin.readline()\nsys.exit(cli.main(sys.argv[1:]))\n"


def row_two_clients(base, ref, quick):
    case = Case(base, "two_clients", quick)
    second = subprocess.Popen([PY, "-c", READY_CLIENT, "run", str(case.path), "--no-progress", "-q"], cwd=case.dir,
                              env=ENV, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    first = case.start()
    try:
        at = case.wait_units(1, first)
        lock_held = first.poll() is None and (case.run_dir / ".lock").exists()
        t0 = time.perf_counter()
        _, err = second.communicate("go\n", timeout=300)
        wall2 = time.perf_counter() - t0
        first_still_running = first.poll() is None
        _, err1 = first.communicate(timeout=1800)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
    lines = [line for line in err.strip().splitlines() if line]
    first_ok = first.returncode == 0 and identical(case, ref)
    res = clear(second.returncode, 3, lines, f"in use by another kernelcert client: pid {first.pid} on host", first_ok,
                second_client_seconds=round(wall2, 2), first_client_units_when_second_started=at,
                lock_held_when_second_started=lock_held, first_running_when_second_exited=first_still_running,
                first_client_rc=first.returncode, first_client_identical=first_ok)
    if not (lock_held and first_still_running):
        res["outcome"] = "FAILED"  # the lock was not exercised
    return res


def row_disk_full(base, ref, quick):
    case = Case(base, "disk_full", quick, out=base / "disk_full" / "tmpfs")
    mnt = base / "disk_full" / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True).returncode:
        return {"outcome": "not run", "detail": "cannot mount a 5 MB tmpfs here (needs root); "
                                                "tests/test_faults.py simulates ENOSPC instead"}
    try:
        # fill the disk so that about 200 KB stay free: the first units fit, a later one does not
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 200_000))
        rc, err = case.run()
        saved = len(case.units())
        tmp_left = len(list(case.run_dir.rglob("*.tmp")))
        subprocess.run(["mount", "-o", "remount,size=500m", str(mnt)], check=True)
        rc2, _ = case.run()
        return clear(rc, 5, err, "disk full", rc2 == 0 and identical(case, ref), units_saved=saved,
                     temp_files_left=tmp_left)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def row_sigint(base, ref, quick, tries=4):
    rows = []
    for i in range(tries):
        case = Case(base, f"sigint_{i}", quick)
        p = case.start()
        at = case.wait_units(2 + 3 * i, p)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
        lines = [line for line in err.strip().splitlines() if line]
        rc2, _ = case.run()
        rows.append(clear(p.returncode, 130, lines, "interrupted by SIGINT", rc2 == 0 and identical(case, ref),
                          after_units=at))
    ok = all(r["outcome"] == "clear message" for r in rows)
    return {"outcome": "clear message" if ok else "FAILED", "tries": rows,
            "rerun_identical": all(r["rerun_identical"] for r in rows),
            "detail": f"{sum(r['outcome'] == 'clear message' for r in rows)} of {tries} tries stopped with one line "
                      "and exit status 130; every rerun identical"}


def row_scheduler_loss(base, ref, quick):
    case = Case(base, "scheduler_loss", quick)
    s = Scheduler(base)
    try:
        s.add_workers(2, "--no-nanny")
        p = case.start("--scheduler", s.address)
        at = case.wait_units(3, p)
        s.scheduler.send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=600)
    finally:
        s.close()
    lines = [line for line in err.strip().splitlines() if line]
    rc2, _ = case.run()
    return clear(p.returncode, 8, lines, "lost the Dask cluster", rc2 == 0 and identical(case, ref), after_units=at)


def row_device(base, ref, quick):
    metas = []
    for p in sorted((base / "kill_external_worker").rglob("units/*.npz"))[:50]:
        with np.load(p) as z:
            metas.append(json.loads(str(z["meta"])))
    devices = sorted({m["provenance"]["device"] for m in metas})
    return {"outcome": "survived" if devices == ["cpu"] else "FAILED",
            "detail": f"device resolved once by the client ('auto' -> {devices}); {len(metas)} units computed by "
                      "external workers record it; a worker resolving to another device would be refused by the "
                      "provenance check (not tried: no GPU here)"}


def _worker_cpu(environ: dict | None, base: Path, quick: bool, label: str, ref: Case) -> dict:
    import dask
    from dask.distributed import Client, LocalCluster

    from kernelcert.pipeline.backends import DaskBackend

    env = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
           if k != "MALLOC_TRIM_THRESHOLD_"}
    env.update(environ or {})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                               silence_logs=logging.CRITICAL)
    try:
        with Client(cluster) as client, DaskBackend(address=cluster.scheduler_address) as be:
            def cpu():
                t = psutil.Process().cpu_times()
                return t.user, t.system

            before = client.run(cpu)
            path = base / "malloc" / f"{label}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config_text(base / "malloc" / label, quick))
            res = run(load_config(path), backend=be)
            after = client.run(cpu)
    finally:
        cluster.close()
    same = (unit_arrays(res.run_dir) == unit_arrays(ref.run_dir)
            and res.points_path.read_bytes() == (ref.run_dir / "points.csv").read_bytes())
    return {"user_s": round(sum(after[k][0] - before[k][0] for k in after), 2),
            "system_s": round(sum(after[k][1] - before[k][1] for k in after), 2), "identical": same}


def row_worker_tuning(base, ref, quick):
    from kernelcert.cluster import WORKER_ENVIRON

    variants = {"dask default (MALLOC_TRIM_THRESHOLD_=65536)": {"MALLOC_TRIM_THRESHOLD_": "65536"},
                f"kernelcert LocalCluster ({WORKER_ENVIRON or 'glibc adaptive defaults'})": WORKER_ENVIRON}
    out = {}
    for rep in range(2):
        for i, (label, env) in enumerate(variants.items()):
            r = _worker_cpu(env, base, quick, f"{rep}-{i}", ref)  # a fresh run directory each time
            out.setdefault(label, []).append(r)
    same = all(r["identical"] for v in out.values() for r in v)
    return {"outcome": "measured", "cpu_seconds": out, "identical": same,
            "detail": f"results of the 4 LocalCluster runs identical to the in-process run: {same}; " + "; ".join(f"{k}: system {min(r['system_s'] for r in v)} s, user {min(r['user_s'] for r in v)} s "
                                "(min of 2)" for k, v in out.items())}


OK_OUTCOMES = ("survived", "clear message", "measured")
ROWS = {
    "kill_external_worker": ("`kill -9` of one worker mid-run (external cluster, no nanny)", row_kill_external_worker),
    "kill_localcluster_worker": ("`kill -9` of one worker mid-run (LocalCluster)", row_kill_local_worker),
    "memory_limited_worker": ("a worker limited to 300 MB", row_memory_limited_worker),
    "memory_limited_worker_1gb": ("a worker limited to 1 GB", row_memory_limited_worker_1gb),
    "changed_value": ("one cost or score value changed inside a finished unit file", row_changed_value),
    "changed_vote_missing_array": ("a changed vote or a missing array in a unit file", row_changed_vote_missing_array),
    "other_version_worker": ("a worker running another kernelcert version", row_other_version_worker),
    "two_clients": ("two clients on the same run directory", row_two_clients),
    "disk_full": ("full disk (5 MB tmpfs)", row_disk_full),
    "sigint": ("SIGINT in-process (4 tries)", row_sigint),
    "scheduler_loss": ("the scheduler killed mid-run", row_scheduler_loss),
    "device": ("each worker resolving device = 'auto' itself", row_device),
    "worker_tuning": ("Dask workers' MALLOC_TRIM_THRESHOLD_ (workers' CPU seconds, same run)", row_worker_tuning),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller config (a few minutes)")
    ap.add_argument("--only", nargs="+", choices=list(ROWS), help="run only these rows")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="kernelcert-faults-"))
    rows = {}
    try:
        ref = Case(base, "reference", args.quick)
        t0 = time.perf_counter()
        rc, err = ref.run()
        if rc != 0:
            raise RuntimeError(f"the undisturbed reference run failed (rc {rc}): {err[-3:]}")
        ref_seconds = time.perf_counter() - t0
        print(f"reference: {len(ref.units())} units, {ref_seconds:.0f} s", flush=True)
        for key, (fault, fn) in ROWS.items():
            if args.only and key not in args.only:
                continue
            t0 = time.perf_counter()
            try:
                r = fn(base, ref, args.quick)
            except Exception as exc:  # noqa: BLE001 - one row's failure is that row's outcome
                r = {"outcome": "FAILED", "detail": f"{type(exc).__name__}: {exc}"}
            r = {"fault": fault, **r, "seconds": round(time.perf_counter() - t0, 1)}
            rows[key] = r
            print(f"{fault}: {r['outcome']} - {r.get('message') or r.get('detail', '')}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    compared = {k: r.get("identical", r.get("rerun_identical")) for k, r in rows.items()}
    compared = {k: v for k, v in compared.items() if v is not None}
    result = {"units": 29, "reference_seconds": round(ref_seconds, 1), "rows": rows,
              "identical_results": compared,
              "all_rows_ok": all(r["outcome"] in OK_OUTCOMES for r in rows.values()) and all(compared.values())}
    stamp(result, "faults", args.quick, argv)
    path = write_result("faults", result, args.quick)
    print(f"wrote {path}")
    print(f"results byte-identical to the undisturbed in-process run in {sum(compared.values())} of {len(compared)} "
          f"rows that compare them; every row survived or ended clearly: {result['all_rows_ok']}")
    return result


def markdown(result: dict) -> str:
    lines = ["## Fault injection (reliability on a cluster)", "",
             "Each row injects one fault into a real run of a 29-unit synthetic config (benchmarks/faults.py; "
             "the memory rows: one unit of 6,000 training points, about 2 GiB). *survived*: exit status 0 and "
             "results byte-identical to an undisturbed in-process run; *clear message*: the documented exit "
             "status, exactly one line on stderr, nothing from a foreign environment on disk, and (where units "
             "were computed) a rerun byte-identical to the undisturbed run.", "",
             "| fault | outcome | exit status | detail |", "|---|---|---|---|"]
    for r in result["rows"].values():
        detail = r.get("message") or r.get("detail", "")
        tries = {t.get("exit_status") for t in r.get("tries", [])}
        status = r.get("exit_status", 0 if r["outcome"] == "survived" else
                       ", ".join(str(s) for s in sorted(tries)) if tries else "")
        lines.append(f"| {r['fault']} | {r['outcome']} | {status} | {str(detail).replace('|', '/')} |")
    compared = result.get("identical_results")
    if compared is not None:
        lines += ["", f"Results byte-identical to the undisturbed in-process run: {sum(compared.values())} of "
                      f"{len(compared)} rows that compare them ({', '.join(compared)}). Every row survived or ended "
                      f"with a clear message: {'yes' if result.get('all_rows_ok') else 'NO'}."]
    lines += ["", provenance_line(result)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(0 if main()["all_rows_ok"] else 1)  # the benchmark asserts its table
