"""In-process aggregation on threads (`kernelcert.pipeline.aggregate`): the same results, bit for bit,
for 1 and 2 threads (and against the run's own points.csv); blocks really run on several threads;
a block's exception reaches the caller; progress counts every finished block."""

import dataclasses
import logging
import threading

import numpy as np
import pytest

from kernelcert import pipeline
from kernelcert.pipeline import aggregate as agg
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
    block = agg.aggregate_block

    def recording(task, shared):
        seen.add(threading.get_ident())
        return block(task, shared)

    monkeypatch.setattr(agg, "aggregate_block", recording)
    one = agg.aggregate(_with(cfg, workers=1), plan, files, InProcessBackend())
    assert seen == {threading.get_ident()}  # one thread: the blocks run in the caller's thread
    seen.clear()
    two = agg.aggregate(_with(cfg, workers=2), plan, files, InProcessBackend())
    assert len(seen) == 2 and threading.get_ident() not in seen
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
