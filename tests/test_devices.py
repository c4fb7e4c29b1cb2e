"""Device choice (CPU/GPU) and the explicit kernel precision of a run (kernelcert._jax, pipeline)."""

import jax
import numpy as np
import pytest

from kernelcert import pipeline
from kernelcert._jax import default_device, device_scope, gpu_devices, resolve_device
from kernelcert.kernels import FullyConnected

from test_pipeline import tiny_config


def test_auto_device_is_a_gpu_when_visible_else_cpu():
    dev = resolve_device("auto")
    assert dev.platform == ("gpu" if gpu_devices() else "cpu")
    assert resolve_device("cpu").platform == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu-please")


@pytest.mark.skipif(bool(gpu_devices()), reason="checks the error raised on a machine without a GPU")
def test_gpu_requested_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no GPU"):
        resolve_device("gpu")
    with pytest.raises(pipeline.ConfigError, match="no GPU"):
        pipeline.config_from_dict(tiny_config(tmp_path, **{"execution.device": "gpu"}))


def test_device_scope_routes_kernel_tiles_and_restores():
    before = jax.config.jax_default_device
    cpu = jax.devices("cpu")[0]
    with device_scope("cpu"):
        assert default_device() == cpu
        k = FullyConnected(2, W_std=1.3, b_std=0.1).ntk(np.random.default_rng(0).normal(size=(7, 3)))
    assert jax.config.jax_default_device == before
    assert k.dtype == np.float64 and np.allclose(k, k.T)


def test_float32_kernels_are_explicit_and_hashed_separately(tmp_path):
    base = pipeline.config_from_dict(tiny_config(tmp_path))
    f32 = pipeline.config_from_dict(tiny_config(tmp_path, **{"kernel.dtype": "float32"}))
    assert base.kernel.dtype == "float64" and f32.kernel.dtype == "float32"
    assert base.hash() != f32.hash()
    with pytest.raises(pipeline.ConfigError, match="dtype"):
        pipeline.config_from_dict(tiny_config(tmp_path, **{"kernel.dtype": "float16"}))
    r64 = pipeline.run(pipeline.config_from_dict(tiny_config(tmp_path, **{"partition.num_partitions": [3]})))
    r32 = pipeline.run(pipeline.config_from_dict(
        tiny_config(tmp_path, **{"partition.num_partitions": [3], "kernel.dtype": "float32"})))
    assert r64.run_dir != r32.run_dir
    acc = {(r["learner"], r["method"]): r["clean_accuracy"] for r in r64.summary["results"]}
    acc32 = {(r["learner"], r["method"]): r["clean_accuracy"] for r in r32.summary["results"]}
    assert acc.keys() == acc32.keys()
    # float32 kernels change the models only by rounding: accuracies agree up to a few points
    assert all(abs(acc[k] - acc32[k]) <= 0.1 for k in acc)


@pytest.mark.parametrize("seed", range(4))
def test_certificates_sorted_by_jax_are_identical(seed):
    """The JAX sort path (used on a GPU) gives bit-identical certificates; here JAX runs on the CPU."""
    from kernelcert.certificates import certify, pairwise_costs

    rng = np.random.default_rng(seed)
    t, n, K = 40, int(rng.integers(1, 300)), int(rng.integers(2, 6))
    W = rng.normal(size=(t, n))
    if seed % 2:  # integer weights: many exact ties, signed zeros
        W = np.round(W * 2) * (1 - 2 * (rng.random((t, n)) < 0.5))
    y = rng.integers(0, K, n)
    a = certify(W, y, K, sort_device="numpy")
    b = certify(W, y, K, sort_device="jax", block_size=7)
    for f in ("prediction", "radius", "cost_lower", "cost_upper", "class_exact"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    for tie in ("index", "attacker"):
        assert np.array_equal(pairwise_costs(W, y, K, tie=tie, sort_device="numpy"),
                              pairwise_costs(W, y, K, tie=tie, sort_device="jax"))
    assert not jax.config.jax_enable_x64  # the float64 scope did not leak
    with pytest.raises(ValueError, match="sort_device"):
        certify(W, y, K, sort_device="tpu")
