"""Run inside the neural-tangents environment: compute reference kernels for tests/benchmarks.

Usage: python nt_reference.py IN.npz OUT.npz, where IN holds `x1`, `x2` and a JSON `spec`
({"arch": "fc"|"conv", "depth", "W_std", "b_std", "activation", "filter_shape"}).
With `"time": true` it also reports seconds of a warm call (benchmarks/kernels.py uses it).
"""
import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # this process only exists to produce references
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402


def build(spec):
    act = {"relu": stax.Relu, "erf": stax.Erf}[spec["activation"]]
    W, b = spec["W_std"], spec["b_std"]
    if spec["arch"] == "fc":
        layers = [stax.Flatten()] + [stax.Dense(512, W, b), act()] * spec["depth"] + [stax.Dense(1, W, b)]
    else:
        fs = tuple(spec["filter_shape"])
        layers = [stax.Conv(64, fs, padding="SAME", W_std=W, b_std=b), act()] * spec["depth"]
        layers += [stax.Flatten(), stax.Dense(1, W, b)]
    return stax.serial(*layers)[2]


def main(inp, out):
    data = np.load(inp)
    spec = json.loads(str(data["spec"]))
    dtype = np.float32 if spec.get("dtype") == "float32" else np.float64
    x1 = data["x1"].astype(dtype)
    x2 = data["x2"].astype(dtype) if "x2" in data and data["x2"].size else None
    kernel_fn = jax.jit(build(spec), static_argnames=("get",))
    res = kernel_fn(x1, x2, get=("nngp", "ntk"))
    res = jax.block_until_ready(res)
    seconds = None
    if spec.get("time"):
        t0 = time.perf_counter()
        jax.block_until_ready(kernel_fn(x1, x2, get=("nngp", "ntk")))
        seconds = time.perf_counter() - t0
    np.savez(out, nngp=np.asarray(res[0], np.float64), ntk=np.asarray(res[1], np.float64),
             seconds=np.nan if seconds is None else seconds)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
