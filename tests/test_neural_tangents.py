"""Cross-check against neural-tangents' kernel_fn, run in its own environment (jax 0.5.3, nt 0.6.5).

`make test` builds that environment (.venv-nt, pinned by requirements-nt.lock) and sets
KERNELCERT_NT_PYTHON. Without it the tests skip locally, but fail under CI (env var CI set), so CI
can never silently skip the cross-check.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kernelcert.kernels import Convolutional, FullyConnected

SCRIPT = Path(__file__).with_name("nt_reference.py")


def nt_python():
    """The neural-tangents interpreter, or skip (locally) / fail (CI) when it is not configured."""
    exe = os.environ.get("KERNELCERT_NT_PYTHON")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("KERNELCERT_NT_PYTHON is not set under CI: the neural-tangents cross-check must run "
                        "(use `make test`, which builds .venv-nt)")
        pytest.skip("neural-tangents environment not configured (KERNELCERT_NT_PYTHON unset; `make test` sets it)")
    return exe


def nt_kernels(spec, x1, x2, tmp_path):
    """(nngp, ntk) from neural-tangents for `spec` on x1 (and x2, None = symmetric)."""
    exe = nt_python()
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, x1=x1, x2=np.zeros(0) if x2 is None else x2, spec=json.dumps(spec))
    proc = subprocess.run([exe, str(SCRIPT), str(inp), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = np.load(out)
    return res["nngp"], res["ntk"]


def assert_close(ours, ref, diagonal):
    """Relative error <= 1e-6 off the diagonal; the diagonal (nt's own carries ~1e-8) also within 1e-6."""
    assert ours.shape == ref.shape
    rel = np.abs(ours - ref) / np.abs(ref)
    off = ~np.eye(*ref.shape, dtype=bool) if diagonal else np.ones(ref.shape, dtype=bool)
    assert rel[off].max() <= 1e-6, rel[off].max()
    if diagonal:
        assert np.diag(rel).max() <= 1e-6, np.diag(rel).max()


@pytest.mark.parametrize("depth,W,b,act", [(0, 1.0, 0.3, "relu"), (1, 1.0, 0.0, "relu"), (2, 1.4, 0.1, "relu"),
                                           (3, 2.0, 0.5, "relu"), (1, 1.2, 0.3, "erf"), (3, 0.8, 0.05, "erf")])
def test_fully_connected_matches_neural_tangents(depth, W, b, act, tmp_path):
    rng = np.random.default_rng(depth)
    x = rng.uniform(size=(8, 20))
    spec = dict(arch="fc", depth=depth, W_std=W, b_std=b, activation=act)
    nngp, ntk = nt_kernels(spec, x, None, tmp_path)
    k = FullyConnected(depth, W, b, act)
    assert_close(k.ntk(x), ntk, diagonal=True)
    assert_close(k.nngp(x), nngp, diagonal=True)


def test_fully_connected_cross_gram_matches_neural_tangents(tmp_path):
    rng = np.random.default_rng(11)
    x1, x2 = rng.normal(size=(5, 3, 4)), rng.normal(size=(7, 3, 4))  # flattened to d = 12
    spec = dict(arch="fc", depth=2, W_std=1.3, b_std=0.2, activation="relu")
    nngp, ntk = nt_kernels(spec, x1, x2, tmp_path)
    k = FullyConnected(2, 1.3, 0.2)
    assert_close(k.ntk(x1, x2, block_size=3), ntk, diagonal=False)
    assert_close(k.nngp(x1, x2), nngp, diagonal=False)


@pytest.mark.parametrize("depth,fs,W,b,act,readout", [
    (1, (3, 3), 1.0, 0.0, "relu", "flatten"),
    (2, (3, 3), 1.5, 0.2, "relu", "flatten"),
    (2, (3, 3), 1.1, 0.1, "erf", "flatten"),
    (2, (2, 3), 1.3, 0.1, "relu", "flatten"),
    (1, (3, 3), 1.2, 0.1, "relu", "gap"),
    (2, (2, 2), 1.4, 0.3, "erf", "gap"),
])
def test_convolutional_matches_neural_tangents(depth, fs, W, b, act, readout, tmp_path):
    x = np.random.default_rng(10 + depth).normal(size=(4, 5, 6, 2))
    spec = dict(arch="conv", depth=depth, W_std=W, b_std=b, activation=act, filter_shape=list(fs), readout=readout)
    nngp, ntk = nt_kernels(spec, x, None, tmp_path)
    k = Convolutional(depth, fs, W, b, act, readout=readout)
    assert_close(k.ntk(x, block_size=3), ntk, diagonal=True)
    assert_close(k.nngp(x), nngp, diagonal=True)
