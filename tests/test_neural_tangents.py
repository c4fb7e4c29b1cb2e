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


def nt_kernels(cases, workdir):
    """[(nngp, ntk)] from neural-tangents for [(spec, x1, x2)] (x2 None = symmetric), one subprocess."""
    exe = nt_python()
    inp, out = workdir / "in.npz", workdir / "out.npz"
    arrays = {}
    for i, (_, x1, x2) in enumerate(cases):
        arrays[f"x1_{i}"], arrays[f"x2_{i}"] = x1, np.zeros(0) if x2 is None else x2
    np.savez(inp, specs=json.dumps([spec for spec, _, _ in cases]), **arrays)
    proc = subprocess.run([exe, str(SCRIPT), str(inp), str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = np.load(out)
    return [(res[f"nngp_{i}"], res[f"ntk_{i}"]) for i in range(len(cases))]


def assert_close(ours, ref, diagonal):
    """Relative error <= 1e-6 off the diagonal; the diagonal (nt's own carries ~1e-8) also within 1e-6."""
    assert ours.shape == ref.shape
    rel = np.abs(ours - ref) / np.abs(ref)
    off = ~np.eye(*ref.shape, dtype=bool) if diagonal else np.ones(ref.shape, dtype=bool)
    assert rel[off].max() <= 1e-6, rel[off].max()
    if diagonal:
        assert np.diag(rel).max() <= 1e-6, np.diag(rel).max()


FC_CASES = [(0, 1.0, 0.3, "relu"), (1, 1.0, 0.0, "relu"), (2, 1.4, 0.1, "relu"), (3, 2.0, 0.5, "relu"),
            (1, 1.2, 0.3, "erf"), (3, 0.8, 0.05, "erf")]
CONV_CASES = [(1, (3, 3), 1.0, 0.0, "relu", "flatten"), (2, (3, 3), 1.5, 0.2, "relu", "flatten"),
              (2, (3, 3), 1.1, 0.1, "erf", "flatten"), (2, (2, 3), 1.3, 0.1, "relu", "flatten"),
              (1, (3, 3), 1.2, 0.1, "relu", "gap"), (2, (2, 2), 1.4, 0.3, "erf", "gap")]


def _fc_case(i):
    depth, W, b, act = FC_CASES[i]
    x = np.random.default_rng(depth + 100 * i).uniform(size=(8, 20))
    return FullyConnected(depth, W, b, act), dict(arch="fc", depth=depth, W_std=W, b_std=b, activation=act), x, None


def _cross_case():
    rng = np.random.default_rng(11)
    x1, x2 = rng.normal(size=(5, 3, 4)), rng.normal(size=(7, 3, 4))  # flattened to d = 12
    return FullyConnected(2, 1.3, 0.2), dict(arch="fc", depth=2, W_std=1.3, b_std=0.2, activation="relu"), x1, x2


def _conv_case(i):
    depth, fs, W, b, act, readout = CONV_CASES[i]
    x = np.random.default_rng(10 + i).normal(size=(4, 5, 6, 2))
    spec = dict(arch="conv", depth=depth, W_std=W, b_std=b, activation=act, filter_shape=list(fs), readout=readout)
    return Convolutional(depth, fs, W, b, act, readout=readout), spec, x, None


def _all_cases():
    return ([("fc", i, _fc_case(i)) for i in range(len(FC_CASES))] + [("cross", 0, _cross_case())]
            + [("conv", i, _conv_case(i)) for i in range(len(CONV_CASES))])


@pytest.fixture(scope="module")
def nt_results(tmp_path_factory):
    """neural-tangents outputs for every case, keyed by (group, index): one subprocess for the module."""
    cases = _all_cases()
    nt_python()  # skip / fail before building anything
    refs = nt_kernels([(spec, x1, x2) for _, _, (_, spec, x1, x2) in cases], tmp_path_factory.mktemp("nt"))
    return {(group, i): ref for (group, i, _), ref in zip(cases, refs)}


@pytest.mark.parametrize("i", range(len(FC_CASES)), ids=[f"depth{c[0]}-{c[3]}-W{c[1]}-b{c[2]}" for c in FC_CASES])
def test_fully_connected_matches_neural_tangents(i, nt_results):
    kernel, _, x, _ = _fc_case(i)
    nngp, ntk = nt_results[("fc", i)]
    assert_close(kernel.ntk(x), ntk, diagonal=True)
    assert_close(kernel.nngp(x), nngp, diagonal=True)


def test_fully_connected_cross_gram_matches_neural_tangents(nt_results):
    kernel, _, x1, x2 = _cross_case()
    nngp, ntk = nt_results[("cross", 0)]
    assert_close(kernel.ntk(x1, x2, block_size=3), ntk, diagonal=False)
    assert_close(kernel.nngp(x1, x2), nngp, diagonal=False)


@pytest.mark.parametrize("i", range(len(CONV_CASES)),
                         ids=[f"depth{c[0]}-{c[1][0]}x{c[1][1]}-{c[4]}-{c[5]}" for c in CONV_CASES])
def test_convolutional_matches_neural_tangents(i, nt_results):
    kernel, _, x, _ = _conv_case(i)
    nngp, ntk = nt_results[("conv", i)]
    assert_close(kernel.ntk(x, block_size=3), ntk, diagonal=True)
    assert_close(kernel.nngp(x), nngp, diagonal=True)
