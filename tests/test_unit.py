"""One work unit (kernelcert.pipeline.unit) against a sequential recomputation, block by block."""
import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kernelcert import pipeline
from kernelcert.data import synthetic
from kernelcert.evidence import build_evidence
from kernelcert.pipeline.config import make_kernel, make_learner
from kernelcert.pipeline.store import allocate_unit, put_evidence
from kernelcert.pipeline.unit import UNIT_STAGES, SharedInputs, UnitTask, compute_unit
from kernelcert.provenance import Provenance, resolved_device


@pytest.mark.parametrize("block_size,level", [(7, "pairs"), (30, "pairs"), (4, "certificate"), (11, "votes")])
def test_unit_equals_sequential_recomputation_bit_for_bit(block_size, level):
    """Every stored array of a unit (shared fits, stage clock, blocks of the memory budget) equals the plain
    loop (separate fits; kernel rows, label weights, evidence per block and learner) byte for byte."""
    x_tr, y_tr, x_te, _ = synthetic(num_classes=3, n_train=53, n_test=30, dim=6, seed=4, separation=2.0)
    cfg = pipeline.config_from_dict({
        "data": {"dataset": "synthetic", "num_classes": 3, "n_train": 53, "n_test": 30, "dim": 6},
        "kernel": {"architecture": "fully_connected", "depth": 2, "W_std": 1.4, "b_std": 0.1},
        "learners": [{"type": "regression", "name": "r", "ridge": 0.01}, {"type": "svm", "name": "s"},
                     {"type": "regression", "name": "rt", "ridge": 0.01, "train_time": 3.0}],
        "partition": {"num_partitions": [1]}, "methods": {"aggregations": ["dpa"]},
        "execution": {"block_size": block_size, "progress": False, "device": "cpu"}})
    shared = SharedInputs(x_test=x_te, num_classes=3, kernel=cfg.kernel, learners=cfg.learners,
                          execution=cfg.execution, config_hash="test", levels={"partition": level},
                          provenance=Provenance.current(resolved_device("cpu"), cfg.kernel.dtype))
    got = compute_unit(UnitTask("u", "partition", 1, 0, x_tr, y_tr), shared)

    kernel = make_kernel(cfg.kernel)
    want = allocate_unit(len(cfg.learners), len(x_te), 3, level, len(y_tr))
    with threadpool_limits(limits=cfg.execution.blas_threads, user_api="blas"):  # as the unit does
        models = [make_learner(lc).fit(kernel.ntk(x_tr), y_tr, 3) for lc in cfg.learners]
        for s0 in range(0, len(x_te), block_size):
            sl = slice(s0, s0 + block_size)
            Kt = kernel.ntk(x_te[sl], x_tr)
            for j, m in enumerate(models):
                W, err = m.label_weights(Kt, return_error=True)
                put_evidence(want, j, sl, build_evidence(W, y_tr, 3, level=level, block_size=block_size,
                                                         sort_device="numpy", atol=err))
    assert set(got) == set(want) | {"meta"}
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    meta = json.loads(str(got["meta"]))
    assert set(meta["seconds"]) == set(meta["cpu_seconds"]) == {*UNIT_STAGES, "total"}
    assert all(v >= 0 for v in meta["seconds"].values())
