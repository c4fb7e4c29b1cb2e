"""Run inside the neural-tangents environment (.venv-nt): reference kernels for tests and benchmarks.

Usage: python nt_reference.py IN.npz OUT.npz
IN holds a JSON list `specs` and, for case i, `x1_i` and `x2_i` (an empty array means x2=None, the
symmetric Gram). A spec is {"arch": "fc" | "conv", "depth", "W_std", "b_std", "activation":
"relu" | "erf", "filter_shape": [fh, fw] (conv), "readout": "flatten" | "gap" (conv),
"dtype": "float64" | "float32", "get": ["nngp", "ntk"] (default both), "time": bool, "repeats": int,
"store": bool (default true; false skips writing the kernels, for large timing runs)}.
OUT gets `{kind}_i` (float64) per requested kind (when stored) and `seconds_i`: the best of `repeats` warm calls
(after a jit warm-up call) when "time" is true, else NaN. All cases share one process, so the
dtype (jax_enable_x64) must be the same for all of them.
"""
import json
import sys
import time

import jax

import numpy as np
from neural_tangents import stax


def build(spec):
    """neural-tangents kernel_fn of the architecture in `spec` (parameterization 'ntk')."""
    act = {"relu": stax.Relu, "erf": stax.Erf}[spec["activation"]]
    W, b = spec["W_std"], spec["b_std"]
    if spec["arch"] == "fc":
        layers = [stax.Flatten()] + [stax.Dense(512, W, b), act()] * spec["depth"] + [stax.Dense(1, W, b)]
    else:
        fs = tuple(spec["filter_shape"])
        layers = [stax.Conv(64, fs, padding="SAME", W_std=W, b_std=b), act()] * spec["depth"]
        readout = stax.GlobalAvgPool() if spec.get("readout", "flatten") == "gap" else stax.Flatten()
        layers += [readout, stax.Dense(1, W, b)]
    return stax.serial(*layers)[2]


def run_case(spec, x1, x2):
    """({kind: array}, seconds) for one case."""
    get = tuple(spec.get("get", ["nngp", "ntk"]))
    kernel_fn = jax.jit(build(spec), static_argnames=("get",))
    res = jax.block_until_ready(kernel_fn(x1, x2, get=get))
    seconds = np.nan
    if spec.get("time"):
        times = []
        for _ in range(int(spec.get("repeats", 1))):
            t0 = time.perf_counter()
            jax.block_until_ready(kernel_fn(x1, x2, get=get))
            times.append(time.perf_counter() - t0)
        seconds = min(times)
    if not spec.get("store", True):
        return {}, seconds
    return {name: np.asarray(r, np.float64) for name, r in zip(get, res)}, seconds


def main(inp, out):
    data = np.load(inp)
    specs = json.loads(str(data["specs"]))
    dtypes = {s.get("dtype", "float64") for s in specs}
    if len(dtypes) > 1:
        raise SystemExit(f"all cases must share one dtype, got {sorted(dtypes)}")
    x64 = dtypes == {"float64"} or not specs
    # this process only exists to produce references: float64 is set for it alone
    jax.config.update("jax_enable_x64", x64)
    dtype = np.float64 if x64 else np.float32
    arrays = {}
    for i, spec in enumerate(specs):
        x1 = data[f"x1_{i}"].astype(dtype)
        x2 = data[f"x2_{i}"].astype(dtype) if data[f"x2_{i}"].size else None
        res, seconds = run_case(spec, x1, x2)
        arrays.update({f"{name}_{i}": r for name, r in res.items()})
        arrays[f"seconds_{i}"] = np.float64(seconds)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
