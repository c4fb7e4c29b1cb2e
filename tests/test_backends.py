"""Execution backends: in-process, local Dask cluster and an existing scheduler give bit-identical results."""

import numpy as np
import pytest

from kernelcert import pipeline
from kernelcert.pipeline.backends import DaskBackend, InProcessBackend, make_backend

from test_pipeline import tiny_config


def _square(task, shared):
    return task * task + shared


def _fail(task, shared):
    if task == 2:
        raise RuntimeError(f"unit {task} failed")
    return task


def _unit_arrays(run_dir):
    out = {}
    for p in sorted((run_dir / "units").glob("*.npz")):
        with np.load(p) as z:
            out[p.name] = {k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files
                           if k not in ("meta", "checksums")}  # meta: timings and pids (and its checksum)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return pipeline.run(tiny_config(tmp_path_factory.mktemp("inprocess")))


def test_inprocess_backend():
    with InProcessBackend() as be:
        got = dict(be.map(_square, [1, 2, 3], 10))
    assert got == {1: 11, 2: 14, 3: 19}
    assert be.describe()["name"] == "inprocess"


def test_make_backend_choices_and_errors():
    ex = pipeline.ExecutionConfig()
    assert isinstance(make_backend(ex), InProcessBackend)
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend(kind="spark")
    with pytest.raises(ValueError, match="scheduler"):
        make_backend(kind="dask")
    with pytest.raises(ValueError, match="n_workers"):
        DaskBackend(n_workers=0)


def test_local_cluster_two_workers_is_bit_identical(tmp_path, reference):
    cfg = tiny_config(tmp_path, **{"execution.backend": "dask-local", "execution.workers": 2})
    res = pipeline.run(cfg)
    assert res.config_hash == reference.config_hash  # the backend is not part of the hash
    assert res.summary["execution"]["name"] == "dask-local"
    assert res.summary["execution"]["workers"] == 2
    assert res.computed_units == 9
    assert _unit_arrays(res.run_dir) == _unit_arrays(reference.run_dir)
    assert res.points_path.read_bytes() == reference.points_path.read_bytes()
    assert res.summary["results"] == reference.summary["results"]
    # the units ran in worker processes, whose peak memory is reported
    pids = set(res.summary["memory"]["unit_peak_rss_mb"])
    assert pids and all(v > 0 for v in res.summary["memory"]["unit_peak_rss_mb"].values())
    assert not any(p.endswith(f":{__import__('os').getpid()}") for p in pids)


def test_existing_scheduler_and_error_propagation(tmp_path, reference):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        cfg = pipeline.with_overrides(pipeline.config_from_dict(tiny_config(tmp_path)), scheduler=address)
        assert cfg.execution.backend == "dask"
        res = pipeline.run(cfg)
        assert res.summary["execution"]["name"] == "dask"
        assert _unit_arrays(res.run_dir) == _unit_arrays(reference.run_dir)
        assert res.points_path.read_bytes() == reference.points_path.read_bytes()
        with DaskBackend(address=address) as be:
            assert sorted(r for _, r in be.map(_square, [1, 2, 3], 1)) == [2, 5, 10]
            with pytest.raises(RuntimeError, match="unit 2 failed"):
                list(be.map(_fail, [1, 2, 3], None))
    with pytest.raises(ValueError, match="cannot connect"):
        DaskBackend(address="tcp://127.0.0.1:1", connect_timeout="1s")
