"""Run inside the neural-tangents environment (.venv-nt, jax 0.5.3): kernelcert in the same process as nt.

Usage: python nt_pipeline.py OUT_DIR   (the repository root must be importable, e.g. via PYTHONPATH)

A neural-tangents `stax` CNN kernel_fn goes through `CustomKernel` -> `KernelRegression` -> `certify`;
the same architecture through our closed-form `Convolutional`; and the nt Grams saved to `.npy` through
`PrecomputedKernel`. Writes OUT_DIR/result.npz with the Grams, label weights, predictions and radii
of each path, and the JAX version, for tests/test_byo.py to compare.
"""
import json
import sys
from pathlib import Path

import jax
import numpy as np

import kernelcert
from kernelcert.certificates import certify
from kernelcert.kernels import Convolutional, CustomKernel, PrecomputedKernel
from kernelcert.learners import KernelRegression
from nt_reference import build

SPEC = dict(arch="conv", depth=2, W_std=1.4, b_std=0.1, activation="relu", filter_shape=[3, 3], readout="flatten")
K_CLASSES = 3


def images(n, t, seed=0):
    """n training and t test 6x6 images whose class c brightens rows 2c, 2c+1 (so radii are not all 0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K_CLASSES, n + t)
    x = rng.uniform(size=(n + t, 6, 6, 1)) * 0.5
    for c in range(K_CLASSES):
        x[y == c, 2 * c:2 * c + 2, :, 0] += 1.0
    return x[:n], y[:n], x[n:]


def certify_path(G, Kt, y):
    model = KernelRegression(1e-3).fit(G, y, K_CLASSES)
    W = model.label_weights(Kt)
    cert = certify(W, y, K_CLASSES)
    return W, cert.prediction, cert.radius


def main(out_dir):
    out_dir = Path(out_dir)
    x, y, xt = images(60, 10)
    kernel_fn = build(SPEC)
    nt_kernel = CustomKernel(kernel_fn, style="nt")
    ours = Convolutional(SPEC["depth"], tuple(SPEC["filter_shape"]), SPEC["W_std"], SPEC["b_std"],
                         SPEC["activation"], readout=SPEC["readout"])
    res = {"jax_version": np.array(jax.__version__), "kernelcert_file": np.array(kernelcert.__file__)}
    for name, k in (("nt", nt_kernel), ("ours", ours)):
        G, Kt = k.ntk(x), k.ntk(xt, x)
        W, pred, radius = certify_path(G, Kt, y)
        res.update({f"{name}_G": G, f"{name}_Kt": Kt, f"{name}_W": W, f"{name}_pred": pred, f"{name}_radius": radius})
    np.save(out_dir / "K_train.npy", res["nt_G"])
    np.save(out_dir / "K_test.npy", res["nt_Kt"])
    pk = PrecomputedKernel(out_dir / "K_train.npy", out_dir / "K_test.npy")
    G = pk.ntk(pk.train_points(np.arange(60)))
    Kt = pk.ntk(pk.test_points(np.arange(10)), pk.train_points(np.arange(60)))
    W, pred, radius = certify_path(G, Kt, y)
    res.update({"pre_W": W, "pre_pred": pred, "pre_radius": radius})
    # the user's global JAX setting is untouched by kernelcert's scoped float64
    res["global_x64_after"] = np.array(bool(jax.config.jax_enable_x64))
    np.savez(out_dir / "result.npz", **res)
    print(json.dumps({"jax": jax.__version__, "radius_nt": res["nt_radius"].tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
