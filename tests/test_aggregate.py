"""In-process aggregation on threads (`kernelcert.pipeline.aggregate`): the same results, bit for bit,
for 1 and 2 threads (and against the run's own points.csv); blocks really run, and read their stored
rows, on several threads; tasks that carry their rows (other backends) give the same results; the
stacked rows equal `np.stack` of each file's rows; a block's exception reaches the caller; progress
counts every finished block."""

import dataclasses
import logging
import threading

import numpy as np
import pytest

from kernelcert import pipeline
from kernelcert.pipeline import aggregate as agg, store
from kernelcert.pipeline.backends import InProcessBackend
from kernelcert.pipeline.plan import plan_run
from kernelcert.pipeline.store import UnitFile, unit_path


def _config(out_dir):
    """Every partition method and FA / FA+ROE, 3 classes, 4-row aggregation blocks (8 per target)."""
    return {
        "data": {"dataset": "synthetic", "num_classes": 3, "n_train": 90, "n_test": 30, "dim": 5, "seed": 3,
                 "separation": 2.5},
        "kernel": {"architecture": "fully_connected", "depth": 1, "W_std": 1.5, "b_std": 0.1},
        "learners": [{"type": "svm"}, {"type": "regression", "ridge": 0.01}],
        "partition": {"rule": "seeded_hash", "num_partitions": [1, 3, 5]},
        "fa": {"d": 2, "k": [3], "rule": "seeded_hash"},
        "output": {"dir": str(out_dir), "name": "threads", "plots": False},
        "execution": {"progress": False, "block_size": 4, "workers": 1},
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(config, plan, unit files, run result) of one finished run aggregated on one thread."""
    res = pipeline.run(_config(tmp_path_factory.mktemp("runs")))
    cfg = pipeline.config_from_dict(_config(res.run_dir.parent))
    plan = plan_run(cfg)
    files = {u.key: UnitFile(unit_path(res.run_dir, u.key)) for u in plan.units}
    return cfg, plan, files, res


def _with(cfg, **execution):
    return dataclasses.replace(cfg, execution=dataclasses.replace(cfg.execution, **execution))


def _flat(results):
    out = {}
    for r in results:
        for name in ("prediction", "radius", "exact", "radius_upper"):
            arr = getattr(r, name)
            if arr is not None:
                out[(r.learner, r.num_partitions, r.method, name)] = arr
    return out


def _threads_as_workers(monkeypatch):
    """Thread count = `workers` whatever the CPUs of the machine running the tests."""
    monkeypatch.setattr(agg, "aggregation_threads", lambda ex, backend: ex.workers if backend.in_process else 1)


def test_two_threads_give_the_same_results_bit_for_bit(stored, monkeypatch):
    cfg, plan, files, res = stored
    _threads_as_workers(monkeypatch)
    seen: set[int] = set()
    readers: set[int] = set()
    block, read = agg.aggregate_block, agg.StoredRows.read

    def recording(task, shared):
        seen.add(threading.get_ident())
        return block(task, shared)

    def recording_read(self):
        readers.add(threading.get_ident())
        return read(self)

    monkeypatch.setattr(agg, "aggregate_block", recording)
    monkeypatch.setattr(agg.StoredRows, "read", recording_read)
    one = agg.aggregate(_with(cfg, workers=1), plan, files, InProcessBackend())
    assert seen == readers == {threading.get_ident()}  # one thread: the blocks run in the caller's thread
    seen.clear()
    readers.clear()
    two = agg.aggregate(_with(cfg, workers=2), plan, files, InProcessBackend())
    assert len(seen) == 2 and threading.get_ident() not in seen
    assert readers == seen  # each block's rows are read by the thread that certifies it
    assert [(r.learner, r.num_partitions, r.method) for r in one] == [(r.learner, r.num_partitions, r.method)
                                                                     for r in two]
    assert {r.method for r in one} >= {"single", "dpa", "ensemblecert", "dpa_roe", "whitebox_roe", "fa", "fa_roe"}
    a, b = _flat(one), _flat(two)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == (30,), key
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    # and both equal what the run itself wrote
    header, table = pipeline.read_points(res.points_path)
    for (learner, n_p, method, name), arr in b.items():
        np.testing.assert_array_equal(table[:, header.index(f"{learner}/{n_p}/{method}/{name}")], arr.astype(np.int64))


def test_a_failing_block_raises_in_the_caller(stored, monkeypatch):
    cfg, plan, files, _ = stored
    _threads_as_workers(monkeypatch)
    block = agg.aggregate_block
    done = []

    def failing(task, shared):
        if task.start == 8 and task.kind == "partition" and task.num_partitions == 5 and task.learner == 1:
            raise RuntimeError("block 8 failed")
        done.append(task)
        return block(task, shared)

    monkeypatch.setattr(agg, "aggregate_block", failing)
    with pytest.raises(RuntimeError, match="block 8 failed"):
        agg.aggregate(_with(cfg, workers=2), plan, files, InProcessBackend())
    total = sum(-(-30 // 4) for _ in agg._groups(cfg, plan))
    assert len(done) < total - 1  # the blocks after the failure were not all run


def test_progress_counts_every_block(stored, monkeypatch, caplog):
    cfg, plan, files, _ = stored
    _threads_as_workers(monkeypatch)
    total = sum(-(-30 // 4) for _ in agg._groups(cfg, plan))
    with caplog.at_level(logging.INFO, logger="kernelcert.pipeline"):
        agg.aggregate(_with(cfg, workers=2, progress=True), plan, files, InProcessBackend())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("aggregation blocks")]
    assert lines and lines[-1].startswith(f"aggregation blocks: {total}/{total} blocks")


def test_thread_count_follows_workers_and_cpus(monkeypatch):
    ex = pipeline.ExecutionConfig(workers=4)
    monkeypatch.setattr(agg.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert agg.aggregation_threads(ex, InProcessBackend()) == 3
    assert agg.aggregation_threads(pipeline.ExecutionConfig(workers=1), InProcessBackend()) == 1
    assert agg.aggregation_threads(pipeline.ExecutionConfig(), InProcessBackend()) == 2  # the default workers

    class Remote(InProcessBackend):
        in_process = False

    assert agg.aggregation_threads(ex, Remote()) == 1


def test_map_threads_yields_every_task_once():
    tasks = [agg.AggTask(0, 1, "partition", s, s + 1, (), 2, 1, {}) for s in range(23)]
    out = list(agg.map_threads(lambda task, shared: task.start * 2, iter(tasks), 3))
    assert sorted((t.start, r) for t, r in out) == [(s, 2 * s) for s in range(23)]


def test_tasks_that_carry_their_rows_give_the_same_results(stored):
    """The tasks of a backend outside this process carry their stored rows (read when the task is built)."""
    cfg, plan, files, _ = stored
    groups = agg._groups(cfg, plan)
    eager = list(agg._tasks(cfg, plan, files, groups))
    deferred = list(agg._tasks(cfg, plan, files, groups, deferred=True))
    assert len(eager) == len(deferred) and all(t.source is None and t.arrays for t in eager)
    assert all(t.source is not None and not t.arrays for t in deferred)
    for a, b in zip(eager, deferred):
        ra, rb = agg.aggregate_block(a), agg.aggregate_block(b)
        assert ra.keys() == rb.keys()
        for method in ra:
            for name in ra[method]:
                assert ra[method][name].dtype == rb[method][name].dtype
                np.testing.assert_array_equal(ra[method][name], rb[method][name])


@pytest.mark.parametrize("seed, preadv", [(0, True), (1, True), (2, False)])
def test_stored_block_equals_stacked_rows(tmp_path, monkeypatch, seed, preadv):
    """`read_stored_block` = np.stack of every file's `rows` (widened flip counts where the files'
    count dtypes differ), for any row range, clipped ones included; with `os.preadv` or without."""
    monkeypatch.setattr(store, "_HAS_PREADV", preadv and store._HAS_PREADV)
    rng = np.random.default_rng(seed)
    t, K, M = 11, 3, 5
    files = []
    for m in range(M):
        counts = [np.uint8, np.uint16, np.uint32][rng.integers(0, 3)] if seed else np.uint8
        arrays = {"L0.votes": rng.integers(0, K, t).astype(np.int16), "L0.scores": rng.normal(size=(t, K)),
                  "L0.roe_fallback": rng.random(t) < 0.3,
                  "L0.cost_lower": rng.integers(0, np.iinfo(counts).max + 1, (t, K)).astype(counts),
                  "L0.pair": rng.integers(0, np.iinfo(counts).max + 1, (t, K, K)).astype(counts)}
        arrays["L0.pair"][rng.random((t, K, K)) < 0.2] = np.iinfo(counts).max
        store.atomic_save_npz(tmp_path / f"u{m}.npz", arrays)
        files.append(store.UnitFile(tmp_path / f"u{m}.npz"))
    fields = ["votes", "scores", "cost_lower", "pair_costs", "fallback"]
    for start, stop in [(0, t), (3, 7), (10, 11), (5, 5), (9, 40), (12, 15), (0, 1)]:
        got = store.read_stored_block(files, 0, start, stop, fields)
        for f in fields:
            parts = [uf.rows(f"L0.{store._STORED[f][0]}", start, stop) for uf in files]
            if f in ("cost_lower", "pair_costs"):
                wide = max((p.dtype for p in parts), key=lambda d: d.itemsize)
                parts = [store.counts_to_float(p) for p in parts]
                want = np.stack(parts, axis=1)
                assert got[f].dtype == wide
                np.testing.assert_array_equal(store.counts_to_float(got[f]), want)
            else:
                want = np.stack(parts, axis=1)
                assert got[f].dtype == want.dtype and got[f].flags.c_contiguous
                assert got[f].tobytes() == want.tobytes()


@pytest.mark.parametrize("preadv", [True, False])
def test_stored_block_of_a_truncated_file_raises(tmp_path, monkeypatch, preadv):
    """A unit file cut short after it was indexed: `read_stored_block` names the file and the member
    instead of returning rows it did not read (both the positioned-read and the per-member path)."""
    monkeypatch.setattr(store, "_HAS_PREADV", preadv and store._HAS_PREADV)
    rng = np.random.default_rng(7)
    files = []
    for m in range(3):
        arrays = {"L0.votes": rng.integers(0, 3, 40).astype(np.int16), "L0.scores": rng.normal(size=(40, 3))}
        store.atomic_save_npz(tmp_path / f"u{m}.npz", arrays)
        files.append(store.UnitFile(tmp_path / f"u{m}.npz"))
    np.testing.assert_array_equal(store.read_stored_block(files, 0, 0, 40, ["votes", "scores"])["votes"][:, 1],
                                  files[1].rows("L0.votes", 0, 40))
    offset = files[1]._index["L0.scores"][0]
    with open(files[1].path, "r+b") as fh:  # the file ends inside the scores' rows
        fh.truncate(offset + 8 * 3 * 20)
    with pytest.raises(ValueError, match=r"u1\.npz: truncated member L0\.scores"):
        store.read_stored_block(files, 0, 10, 30, ["votes", "scores"])
