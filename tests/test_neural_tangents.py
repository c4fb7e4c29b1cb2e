"""Cross-check against neural-tangents' kernel_fn, run in its own environment (jax 0.5.3, nt 0.6.5).

`make test` builds that environment (.venv-nt) and sets KERNELCERT_NT_PYTHON. Under CI the
environment is mandatory: the test fails instead of skipping.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernelcert.kernels import Convolutional, FullyConnected

NT_PYTHON = os.environ.get("KERNELCERT_NT_PYTHON")
SCRIPT = Path(__file__).with_name("nt_reference.py")


def _nt(spec, x1, tmp_path):
    if not NT_PYTHON:
        if os.environ.get("CI"):
            pytest.fail("KERNELCERT_NT_PYTHON is not set under CI; run through `make test`")
        pytest.skip("neural-tangents environment not configured (run `make test`)")
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, x1=x1, x2=np.zeros(0), spec=json.dumps(spec))
    proc = subprocess.run([NT_PYTHON, str(SCRIPT), str(inp), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = np.load(out)
    return res["nngp"], res["ntk"]


def _compare(ours, ref):
    off = ~np.eye(len(ref), dtype=bool)
    assert np.max(np.abs(ours[off] - ref[off]) / np.abs(ref[off])) <= 1e-6
    assert np.max(np.abs(np.diag(ours) - np.diag(ref)) / np.abs(np.diag(ref))) <= 1e-6


@pytest.mark.parametrize("depth,W,b,act", [(1, 1.0, 0.0, "relu"), (2, 1.4, 0.1, "relu"), (3, 2.0, 0.5, "relu"),
                                           (1, 1.2, 0.3, "erf"), (3, 0.8, 0.05, "erf")])
def test_fully_connected_matches_neural_tangents(depth, W, b, act, tmp_path):
    x = np.random.default_rng(depth).uniform(size=(8, 20))
    nngp, ntk = _nt(dict(arch="fc", depth=depth, W_std=W, b_std=b, activation=act), x, tmp_path)
    k = FullyConnected(depth, W, b, act)
    _compare(k.ntk(x), ntk)
    _compare(k.nngp(x), nngp)


@pytest.mark.parametrize("depth,W,b,act", [(1, 1.0, 0.0, "relu"), (2, 1.5, 0.2, "relu"), (2, 1.1, 0.1, "erf")])
def test_convolutional_matches_neural_tangents(depth, W, b, act, tmp_path):
    x = np.random.default_rng(10 + depth).normal(size=(4, 6, 6, 2))
    nngp, ntk = _nt(dict(arch="conv", depth=depth, W_std=W, b_std=b, activation=act, filter_shape=[3, 3]), x, tmp_path)
    k = Convolutional(depth, (3, 3), W, b, act)
    _compare(k.ntk(x), ntk)
    _compare(k.nngp(x), nngp)
