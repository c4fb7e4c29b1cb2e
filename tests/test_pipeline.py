"""End-to-end certification runs: config validation, outputs, consistency with direct computation,
resume, config-hash separation and kill-and-resume (kernelcert.pipeline)."""

import copy
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernelcert import pipeline
from kernelcert.pipeline import store
from kernelcert.arrayfiles import read_npy_header
from kernelcert.certificates import certify
from kernelcert.data import synthetic
from kernelcert.evidence import Evidence
from kernelcert.ensemble import dpa, ensemblecert
from kernelcert.kernels import FullyConnected
from kernelcert.learners import KernelRegression, KernelSVM
from kernelcert.metrics import median_certified_robustness
from kernelcert.partition import ss_dpa_partition
from kernelcert.roe import dpa_roe

REPO = Path(__file__).resolve().parents[1]


def tiny_config(out_dir, **changes):
    """A small synthetic run: 3 classes, N_p in {1, 3, 5}, both learners (a dict, as parsed TOML)."""
    cfg = {
        "data": {"dataset": "synthetic", "num_classes": 3, "n_train": 90, "n_test": 30, "dim": 5, "seed": 3,
                 "separation": 2.5},
        "kernel": {"architecture": "fully_connected", "depth": 1, "W_std": 1.5, "b_std": 0.1},
        "learners": [{"type": "svm"}, {"type": "regression", "ridge": 0.01}],
        "partition": {"rule": "ss_dpa", "num_partitions": [1, 3, 5]},
        "output": {"dir": str(out_dir), "name": "tiny"},
        "execution": {"progress": False},
    }
    for path, value in changes.items():
        sec, key = path.split(".")
        if value is None:
            cfg[sec].pop(key, None)
        else:
            cfg.setdefault(sec, {})[key] = value
    return cfg


def to_toml(cfg: dict) -> str:
    """Minimal TOML writer for the config dicts used in these tests."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    lines = []
    for sec, body in cfg.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{sec}]]")
                lines += [f"{k} = {val(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{sec}]")
            lines += [f"{k} = {val(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def column(points, name):
    header, table = points
    return table[:, header.index(name)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return pipeline.run(tiny_config(out))


# --------------------------------------------------------------------------- config validation
BAD_CONFIGS = [
    ({"data.colour": 1}, "unknown key"),
    ({"data.dataset": "imagenet"}, "unknown dataset"),
    ({"data.n_train": -5}, "n_train must be >= 1"),
    ({"data.n_train": "many"}, "n_train must be an integer"),
    ({"data.classes": [0, 7]}, "out of range"),
    ({"kernel.depth": -1}, "depth"),
    ({"kernel.architecture": "transformer"}, "architecture"),
    ({"kernel.activation": "tanh"}, "activation"),
    ({"partition.num_partitions": [1, 500]}, "exceeds the training set size"),
    ({"partition.rule": "random"}, "rule"),
    ({"partition.rule": "dpa_hash"}, "integer"),  # synthetic features are not integer pixels
    ({"methods.aggregations": ["dpa", "magic"]}, "unknown aggregation"),
    ({"methods.aggregations": ["fa"]}, "needs an [fa] section"),
    ({"partition.num_partitions": [3, 5], "methods.aggregations": ["single"]}, "needs 1 in"),
    ({"execution.backend": "spark"}, "backend"),
    ({"execution.backend": "dask"}, "scheduler"),
    ({"execution.memory_cap_mb": 1}, "memory_cap_mb"),
    ({"output.budgets": [-1]}, "budgets"),
    ({"fa.k": [3]}, "missing required key 'd'"),
    ({"fa.d": 40, "fa.k": [5]}, "exceed n_train"),
]


@pytest.mark.parametrize("changes,message", BAD_CONFIGS)
def test_bad_configs_fail_before_any_work(tmp_path, changes, message):
    cfg = tiny_config(tmp_path / "runs", **changes)
    with pytest.raises(ValueError, match="(?i)" + message.replace("[", r"\[").replace("]", r"\]")):
        pipeline.run(cfg)
    # nothing was computed: no unit files anywhere
    assert not list(tmp_path.rglob("*.npz"))


def test_bad_config_sections_and_learners(tmp_path):
    base = tiny_config(tmp_path)
    cases = []
    c = copy.deepcopy(base)
    c["extras"] = {"x": 1}
    cases.append((c, "unknown section"))
    c = copy.deepcopy(base)
    del c["learners"]
    cases.append((c, "learners"))
    c = copy.deepcopy(base)
    c["learners"] = [{"type": "svm"}, {"type": "svm"}]
    cases.append((c, "duplicate learner names"))
    c = copy.deepcopy(base)
    c["learners"] = [{"type": "regression", "ridge": -1.0}]
    cases.append((c, "ridge must be >= 0"))
    c = copy.deepcopy(base)
    c["learners"] = [{"type": "svm", "ridge": 1.0}]
    cases.append((c, "unknown key"))
    c = copy.deepcopy(base)
    c["learners"] = [{"type": "forest"}]
    cases.append((c, "type must be one of"))
    c = copy.deepcopy(base)
    c["kernel"]["architecture"] = "convolutional"
    cases.append((c, "image data"))
    c = copy.deepcopy(base)
    c["data"]["path"] = "somewhere"  # synthetic data has no path: the loader's own options decide
    cases.append((c, "unknown key"))
    for cfg, msg in cases:
        with pytest.raises(ValueError, match="(?i)" + msg):
            pipeline.config_from_dict(cfg)


def test_one_error_lists_every_problem():
    cfg = tiny_config("runs", **{"data.n_train": 0, "kernel.depth": -1, "execution.workers": "two"})
    cfg["learners"] = [{"type": "regression", "ridge": -1.0, "colour": 1}]
    with pytest.raises(pipeline.ConfigError) as exc:
        pipeline.config_from_dict(cfg)
    where = {(sec, key) for sec, key, _ in exc.value.problems}
    assert {("data", "n_train"), ("kernel", "depth"), ("execution", "workers"), ("learners #1", "ridge"),
            ("learners #1", "colour")} <= where
    text = str(exc.value)
    assert "5 problems" in text and "[data]: n_train must be >= 1" in text and "[kernel]: depth must be >= 0" in text


def test_config_values_use_the_shared_checks():
    """The config's number checks are `kernelcert._validation`'s (same bounds, same messages), except
    that an integer key takes TOML integers only."""
    from kernelcert._validation import check_range, check_real

    assert check_range("x", 3, 1, 3) == 3 and check_range("x", 0.5, above=0, below=1) == 0.5
    for kw, value, message in [({"minimum": 1}, 0, "x must be >= 1, got 0"),
                               ({"maximum": 2}, 3, "x must be <= 2, got 3"),
                               ({"above": 0}, 0.0, "x must be > 0, got 0.0"),
                               ({"below": 1}, 1.5, "x must be < 1, got 1.5")]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            check_range("x", value, **kw)
    assert check_real("x", np.float32(2.5)) == 2.5 and check_real("x", np.inf, allow_inf=True) == np.inf
    with pytest.raises(ValueError, match="x must be finite"):
        check_real("x", -np.inf, allow_inf=True)
    with pytest.raises(TypeError, match="x must be a real number"):
        check_real("x", True)
    cases = [("kernel", "W_std", 0, "W_std must be > 0, got 0.0"),
             ("kernel", "b_std", -0.5, "b_std must be >= 0, got -0.5"),
             ("kernel", "W_std", float("nan"), "W_std must be finite, got nan"),
             ("kernel", "W_std", "big", "W_std must be a real number, got 'big'"),
             ("exactness", "time_limit", float("inf"), "time_limit must be finite, got inf"),
             ("kernel", "depth", 2.0, "depth must be an integer, got 2.0"),
             ("execution", "workers", 0, "workers must be >= 1, got 0")]
    for section, key, value, message in cases:
        cfg = tiny_config("runs")
        cfg.setdefault(section, {})[key] = value
        with pytest.raises(pipeline.ConfigError) as exc:
            pipeline.config_from_dict(cfg)
        assert exc.value.problems == ((section, key, message),)


def test_keys_follow_the_loader_and_the_architecture():
    """Dataset-specific keys are the loader's arguments; architecture-specific ones the kernel class's."""
    cfg = pipeline.config_from_dict(tiny_config("runs"))
    assert cfg.data.dim == 5 and cfg.num_classes == 3
    for changes, message in (({"data.test_fraction": 0.5}, "unknown key.*'test_fraction'"),
                             ({"kernel.readout": "gap"}, "unknown key.*'readout'")):
        with pytest.raises(pipeline.ConfigError, match=message):
            pipeline.config_from_dict(tiny_config("runs", **changes))
    digits = pipeline.config_from_dict({"data": {"dataset": "digits", "test_fraction": 0.5},
                                        "kernel": {"architecture": "convolutional", "readout": "gap", "depth": 1},
                                        "learners": [{"type": "svm"}]})
    assert digits.data.test_fraction == 0.5 and digits.kernel.readout == "gap"
    assert pipeline.make_kernel(digits.kernel).readout == "gap"


def test_a_registered_method_flows_through_the_run(tmp_path, monkeypatch):
    """Adding an aggregation method is one registry record: config, units, aggregation, points and report."""
    from kernelcert.pipeline.methods import REGISTRY, AggregationMethod, MethodOutput

    def majority_of_scores(ev, num_classes, shifts):  # plurality of the argmax of the scores, radius 0
        votes = np.argmax(ev.scores, axis=2)
        counts = np.stack([(votes == c).sum(axis=1) for c in range(num_classes)], axis=1)
        return MethodOutput(np.argmax(counts, axis=1), np.zeros(len(votes), np.int64), np.zeros(len(votes), bool))

    monkeypatch.setitem(REGISTRY, "score_majority", AggregationMethod(
        "score_majority", "score majority", ("C7", "-", "x"), "partition", ("scores",), majority_of_scores))
    res = pipeline.run(tiny_config(tmp_path, **{"methods.aggregations": ["dpa", "score_majority"],
                                                "partition.num_partitions": [3]}))
    points = pipeline.read_points(res.points_path)
    np.testing.assert_array_equal(column(points, "svm/3/score_majority/radius"), 0)
    assert "score majority" in res.report_path.read_text()
    meta = pipeline.UnitFile(res.run_dir / "units" / "np00003-p00000.npz").meta()
    assert meta["level"] == "votes"  # neither method needs certificates: none were computed


def test_n_train_above_the_dataset_is_capped_with_a_warning(tmp_path, caplog):
    cfg = {"data": {"dataset": "digits", "n_train": 5000, "n_test": 10}, "kernel": {"depth": 1},
           "learners": [{"type": "regression", "ridge": 0.1}], "partition": {"num_partitions": [2]},
           "methods": {"aggregations": ["dpa"]}, "output": {"dir": str(tmp_path), "plots": False},
           "execution": {"progress": False}}
    with caplog.at_level("WARNING", logger="kernelcert.pipeline"):
        res = pipeline.run(cfg)
    assert "n_train = 5000 exceeds the 1348 training samples available" in caplog.text
    assert res.summary["data"]["n_train"] == 1348


def test_svm_c_above_c_max_fails_in_the_prepass(tmp_path):
    cfg = tiny_config(tmp_path / "runs")
    cfg["learners"] = [{"type": "svm", "C": 10.0}]
    with pytest.raises(ValueError, match="exceeds C_max"):
        pipeline.run(cfg)
    assert not list(tmp_path.rglob("*.npz"))  # no work unit ran
    # a C below every partition's C_max is accepted and equals the C_max run's certificates (argmax does not
    # depend on C in the small-C regime, docs/math.md §2)
    cfg["learners"] = [{"type": "svm", "C": 1e-6}]
    res = pipeline.run(cfg)
    assert res.summary["c_max"]["svm_C1e-06"]["1"]["min"] > 1e-6
    ref = pipeline.run(tiny_config(tmp_path / "runs", **{}))
    a = pipeline.read_points(res.points_path)
    b = pipeline.read_points(ref.points_path)
    for m in ("single", "ensemblecert", "dpa"):
        np.testing.assert_array_equal(column(a, f"svm_C1e-06/5/{m}/radius" if m != "single" else
                                             "svm_C1e-06/1/single/radius"),
                                      column(b, f"svm/5/{m}/radius" if m != "single" else "svm/1/single/radius"))


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not writable"):
        pipeline.run(tiny_config(blocker / "runs"))


def test_data_dependent_size_checks(tmp_path):
    # digits: no n_train given, so N_p is only checked after loading (still before any unit runs)
    cfg = {"data": {"dataset": "digits", "n_test": 10}, "learners": [{"type": "svm"}],
           "partition": {"num_partitions": [5000]}, "output": {"dir": str(tmp_path)},
           "execution": {"progress": False}}
    with pytest.raises(ValueError, match="exceeds the training set size"):
        pipeline.run(cfg)
    assert not list(tmp_path.rglob("*.npz"))


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "my_run.toml"
    path.write_text(to_toml(tiny_config(tmp_path / "runs")))
    cfg = pipeline.load_config(path)
    assert cfg.output.name == "tiny"
    assert cfg.partition.num_partitions == (1, 3, 5)
    assert [lc.name for lc in cfg.learners] == ["svm", "regression_ridge0.01"]
    assert cfg.methods == ("single", "dpa", "ensemblecert", "dpa_roe", "whitebox_roe")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\ndataset = 'mnist'")
    with pytest.raises(ValueError, match="invalid TOML"):
        pipeline.load_config(bad)
    with pytest.raises(ValueError, match="not found"):
        pipeline.load_config(tmp_path / "missing.toml")


# --------------------------------------------------------------------------- end to end
def test_outputs_exist_and_are_consistent(tiny_run):
    res = tiny_run
    for p in [res.points_path, res.summary_path, res.report_path, *res.plots]:
        assert p.exists() and p.stat().st_size > 0
    assert (res.run_dir / "config.hash").read_text().strip() == res.config_hash
    assert len(res.plots) == 3
    points = pipeline.read_points(res.points_path)
    header, table = points
    assert table.shape[0] == 30
    np.testing.assert_array_equal(column(points, "index"), np.arange(30))
    summary = json.loads(res.summary_path.read_text())
    assert summary["units"] == {**summary["units"], "total": 9, "computed": 9, "skipped": 0}
    y = column(points, "label")
    for learner in ("svm", "regression_ridge0.01"):
        for n_p in (1, 3, 5):
            col = lambda m, f: column(points, f"{learner}/{n_p}/{m}/{f}")  # noqa: E731
            # EnsembleCert and DPA aggregate the same plurality vote; white-box costs only help (docs/math.md §4)
            np.testing.assert_array_equal(col("ensemblecert", "prediction"), col("dpa", "prediction"))
            assert np.all(col("ensemblecert", "radius") >= col("dpa", "radius"))
            assert np.all(col("ensemblecert", "radius_upper") >= col("ensemblecert", "radius"))
            np.testing.assert_array_equal(col("ensemblecert", "exact"),
                                          col("ensemblecert", "radius_upper") == col("ensemblecert", "radius"))
            np.testing.assert_array_equal(col("whitebox_roe", "prediction"), col("dpa_roe", "prediction"))
            assert np.all(col("whitebox_roe", "radius") >= col("dpa_roe", "radius"))
            assert np.all(col("dpa", "radius") <= n_p // 2)  # DPA can never certify more than N_p / 2
        single = column(points, f"{learner}/1/single/radius")
        np.testing.assert_array_equal(column(points, f"{learner}/1/ensemblecert/radius"), single)
        # summary numbers are those of the points table
        for r in summary["results"]:
            if r["learner"] != learner:
                continue
            base = f"{learner}/{r['num_partitions']}/{r['method']}"
            correct = column(points, base + "/prediction") == y
            rad = column(points, base + "/radius")
            assert r["clean_accuracy"] == pytest.approx(np.mean(correct))
            assert r["mcr"]["radius"] == median_certified_robustness(rad, correct, "radius")
            assert r["mcr"]["anchor"] == median_certified_robustness(rad, correct, "anchor")
            assert r["certified_accuracy"]["2"] == pytest.approx(np.mean(correct & (rad >= 2)))
    assert summary["c_max"]["svm"]["5"]["min"] > 0
    assert summary["memory"]["main_peak_rss_mb"] > 0
    assert "EnsembleCert" in res.report_path.read_text()


# Stored sha256 of points.csv of two small synthetic runs (results must not move with refactors).
# A legitimate change of the numbers (e.g. a partition rule's sample order, a tie rule) changes them:
# then regenerate with
#   python -c "import hashlib,sys,tempfile; sys.path[:0]=['.','tests']; from kernelcert import pipeline; \
#   from test_pipeline import tiny_config, _fa_config; d=tempfile.mkdtemp(); \
#   [print(hashlib.sha256(pipeline.run(c).points_path.read_bytes()).hexdigest()) \
#    for c in (tiny_config(d+'/a'), _fa_config(d+'/b', d=2))]"
# and say in the commit why the results moved.
GOLDEN_POINTS_SHA256 = {
    "tiny": "5f9622afe63de0e30843fa99a341c35dd59260bec071fe6eab99cfd8fb309c3e",  # SS-DPA in the published order
    "fa_d2": "55f9b604c608974453f1d0449762d9f1a38dbf9f108a90a08d4b3554e3e5b267",
}


def test_points_csv_matches_the_stored_hash(tiny_run):
    assert hashlib.sha256(tiny_run.points_path.read_bytes()).hexdigest() == GOLDEN_POINTS_SHA256["tiny"]


def test_matches_direct_computation(tiny_run):
    """Independent recomputation through the public API: data, partition, Gram, fit, certify, aggregate."""
    x_tr, y_tr, x_te, y_te = synthetic(num_classes=3, n_train=90, n_test=30, dim=5, seed=3, separation=2.5)
    kernel = FullyConnected(1, W_std=1.5, b_std=0.1)
    points = pipeline.read_points(tiny_run.points_path)
    np.testing.assert_array_equal(column(points, "label"), y_te)
    for name, make in (("svm", lambda: KernelSVM()), ("regression_ridge0.01", lambda: KernelRegression(0.01))):
        model = make().fit(kernel.ntk(x_tr), y_tr, 3)
        cert = certify(model.label_weights(kernel.ntk(x_te, x_tr)), y_tr, 3)
        np.testing.assert_array_equal(column(points, f"{name}/1/single/radius"), cert.radius)
        np.testing.assert_array_equal(column(points, f"{name}/1/single/prediction"), cert.prediction)
        assign = ss_dpa_partition(x_tr, 5)
        votes, lower, upper, scores = [], [], [], []
        for i in range(5):
            idx = np.flatnonzero(assign == i)
            m = make().fit(kernel.ntk(x_tr[idx]), y_tr[idx], 3)
            W = m.label_weights(kernel.ntk(x_te, x_tr[idx]))
            c = certify(W, y_tr[idx], 3)
            votes.append(c.prediction)
            lower.append(c.cost_lower)
            upper.append(c.cost_upper)
            scores.append(W @ np.eye(3)[y_tr[idx]])
        votes = np.stack(votes, 1)
        np.testing.assert_array_equal(column(points, f"{name}/5/dpa/radius"), dpa(votes, 3).radius)
        np.testing.assert_array_equal(column(points, f"{name}/5/ensemblecert/radius"),
                                      np.minimum(ensemblecert(votes, np.stack(lower, 1), 3).radius, 90))
        np.testing.assert_array_equal(column(points, f"{name}/5/ensemblecert/radius_upper"),
                                      np.minimum(ensemblecert(votes, np.stack(upper, 1), 3).radius, 90))
        np.testing.assert_array_equal(column(points, f"{name}/5/dpa_roe/radius"),
                                      dpa_roe(np.stack(scores, 1)).radius)


def test_each_method_reads_only_its_declared_evidence(tiny_run):
    """Every registered partition method, run alone on exactly the evidence fields it declares,
    reproduces its points.csv columns (so `needs` in the registry is complete)."""
    from kernelcert.pipeline.aggregate import AggTask, aggregate_block
    from kernelcert.pipeline.methods import REGISTRY

    points = pipeline.read_points(tiny_run.points_path)
    for name, m in REGISTRY.items():
        if m.target != "partition":
            continue
        n_p = 1 if m.single_model else 5
        files = [store.UnitFile(store.unit_path(tiny_run.run_dir, store.unit_key("partition", n_p, i)))
                 for i in range(n_p)]
        arrays = store.read_stored_block(files, 0, 0, 30, m.needs)
        res = aggregate_block(AggTask(0, n_p, "partition", 0, 30, (name,), 3, 90, arrays))[name]
        for f in ("prediction", "radius"):
            np.testing.assert_array_equal(res[f], column(points, f"svm/{n_p}/{name}/{f}"), err_msg=f"{name} {f}")


def test_methods_refuse_missing_inputs():
    """A method never certifies from evidence it lacks: FA methods without the shift table and
    methods reading a field the evidence level does not have raise ValueError."""
    from kernelcert.evidence import Evidence
    from kernelcert.pipeline.methods import REGISTRY

    ev = Evidence(votes=np.zeros((4, 6), np.int64), scores=np.zeros((4, 6, 3)))
    for name in ("fa", "fa_roe"):
        with pytest.raises(ValueError, match="shift table"):
            REGISTRY[name].certify(ev, 3, None)
    for name in ("single", "ensemblecert"):
        with pytest.raises(ValueError, match="evidence of level 'votes' has no"):
            REGISTRY[name].certify(ev, 3, None)


def test_single_model_radius_is_sound_by_retraining(tiny_run):
    """Oracle: the witness attack of size radius + 1 flips the retrained single model; radius flips never do
    for the attack found (spot check on a few points)."""
    x_tr, y_tr, x_te, _ = synthetic(num_classes=3, n_train=90, n_test=30, dim=5, seed=3, separation=2.5)
    kernel = FullyConnected(1, W_std=1.5, b_std=0.1)
    K_tr, K_te = kernel.ntk(x_tr), kernel.ntk(x_te, x_tr)
    points = pipeline.read_points(tiny_run.points_path)
    rad = column(points, "regression_ridge0.01/1/single/radius")
    pred = column(points, "regression_ridge0.01/1/single/prediction")
    cert = KernelRegression(0.01).fit(K_tr, y_tr, 3).certify(K_te)
    for i in range(0, 30, 6):
        attack = cert.witness(i)
        assert len(attack) == rad[i] + 1
        y2 = y_tr.copy()
        for j, lab in attack:
            y2[j] = lab
        assert KernelRegression(0.01).fit(K_tr, y2, 3).predict(K_te[i:i + 1])[0] != pred[i]


# --------------------------------------------------------------------------- unit files
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 40), st.sampled_from(["<f8", "<u4", "<u2", "<i2", "|b1", "<i8"]),
       st.lists(st.integers(1, 4), max_size=2), st.data())
def test_unit_file_rows_match_np_load(tmp_path_factory, seed, t, dtype, tail, data):
    rng = np.random.default_rng(seed)
    shape = (t, *tail)
    arrays = {"a": (rng.random(shape) * 1000).astype(dtype), "b.c": rng.integers(0, 5, t).astype(np.int16),
              "meta": np.array(json.dumps({"x": seed}))}
    path = tmp_path_factory.mktemp("uf") / "u.npz"
    store.atomic_save_npz(path, arrays)
    uf = pipeline.UnitFile(path)
    start = data.draw(st.integers(0, t))
    stop = data.draw(st.integers(start, t + 3))
    with np.load(path) as z:
        np.testing.assert_array_equal(uf.rows("a", start, stop), z["a"][start:stop])
        assert uf.rows("a", start, stop).dtype == z["a"].dtype
        np.testing.assert_array_equal(uf.rows("b.c"), z["b.c"])
    assert uf.meta() == {"x": seed}
    assert uf.shape("a") == shape and "a" in uf and "zz" not in uf


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 65534), st.just(np.inf)), min_size=1, max_size=30))
def test_flip_count_encoding_round_trips(values):
    a = np.array(values, dtype=np.float64)
    for dtype in (np.uint16, np.uint32):
        enc = store.to_counts(a, dtype, "x")
        assert enc.dtype == dtype
        np.testing.assert_array_equal(store.counts_to_float(enc), a)
    with pytest.raises(ValueError, match="integer flip counts"):
        store.to_counts(np.array([0.5]), np.uint32, "x")
    with pytest.raises(ValueError, match="does not fit"):
        store.to_counts(np.array([70000.0]), np.uint16, "x")
    for bad in (np.nan, -1.0, -np.inf):
        with pytest.raises(ValueError, match="integer flip counts"):
            store.to_counts(np.array([1.0, bad]), np.uint8, "x")


def test_count_dtype_is_the_narrowest_above_n_and_a_unit_widens_when_a_count_does_not_fit():
    assert [store.count_dtype(n) for n in (0, 60, 254, 255, 65534, 65535)] == [
        np.uint8, np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]
    arrays = store.allocate_unit(1, 5, 3, "pairs", 60)
    assert arrays["L0.pair"].dtype == arrays["L0.cost_lower"].dtype == np.uint8
    layout = store.unit_layout(1, 5, 3, "pairs", 60)
    assert layout["L0.pair"][0] == (np.uint8, np.uint32) and layout["L0.scores"][0] == np.float64
    rng = np.random.default_rng(0)

    def ev(top):
        pair = rng.integers(0, 50, size=(2, 3, 3)).astype(float)
        pair[0, 1, 2], pair[1, 0, 0] = top, np.inf
        lower = np.array([[0.0, 3.0, np.inf], [1.0, 0.0, 7.0]])
        return Evidence(votes=np.array([0, 1]), scores=rng.normal(size=(2, 3)), radius=np.array([2, 0]),
                        cost_lower=lower, cost_upper=lower, costs_exact=np.ones(2, bool), pair_costs=pair,
                        fallback=np.zeros(2, bool))

    first, second = ev(40.0), ev(300.0)  # 300 > 254: the pair member is widened to uint32 on the way
    store.put_evidence(arrays, 0, slice(0, 2), first)
    store.put_evidence(arrays, 0, slice(2, 4), second)
    assert arrays["L0.pair"].dtype == np.uint32 and arrays["L0.cost_lower"].dtype == np.uint8
    decoded = store.counts_to_float(arrays["L0.pair"][:4])
    np.testing.assert_array_equal(decoded, np.concatenate([first.pair_costs, second.pair_costs]))
    np.testing.assert_array_equal(store.counts_to_float(arrays["L0.cost_lower"][:2]), first.cost_lower)


def test_stored_blocks_of_units_with_different_count_dtypes_stack_widened(tmp_path):
    a = {"L0.pair": np.array([[[0, 255]], [[3, 4]]], np.uint8), "L0.scores": np.zeros((2, 1))}
    b = {"L0.pair": np.array([[[70000, 2**32 - 1]], [[1, 2]]], np.uint32), "L0.scores": np.ones((2, 1))}
    files = []
    for name, arrays in (("a", a), ("b", b)):
        store.atomic_save_npz(tmp_path / f"{name}.npz", arrays)
        files.append(store.UnitFile(tmp_path / f"{name}.npz"))
    block = store.read_stored_block(files, 0, 0, 2, ["scores", "pair_costs"])
    assert block["pair_costs"].dtype == np.uint32 and block["pair_costs"].shape == (2, 2, 1, 2)
    ev = store.decode_block(block)
    np.testing.assert_array_equal(ev.pair_costs[0, :, 0], [[0, np.inf], [70000, np.inf]])
    compact = store.decode_block(block, compact_pairs=True).pair_costs
    np.testing.assert_array_equal(compact.decode(), ev.pair_costs)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["<f8", "<i2", "|u1", "<u4", "|b1", "<i8", ">f8", "<U7", "<f4"]),
       st.lists(st.integers(0, 4), max_size=3), st.booleans())
def test_npy_headers_are_read_as_numpy_reads_them(descr, shape, fortran):
    import io
    a = np.zeros(tuple(shape), np.dtype(descr), order="F" if fortran else "C")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    buf.seek(0)
    got = read_npy_header(buf)
    at = buf.tell()
    buf.seek(0)
    version = np.lib.format.read_magic(buf)
    want = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(buf)
    assert got == want and at == buf.tell()


# --------------------------------------------------------------------------- resume and hashing
def test_resume_skips_finished_units(tmp_path, caplog):
    cfg = tiny_config(tmp_path)
    first = pipeline.run(cfg)
    units = sorted((first.run_dir / "units").glob("*.npz"))
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in units}
    points = first.points_path.read_bytes()
    with caplog.at_level("INFO", logger="kernelcert.pipeline"):
        again = pipeline.run(cfg)
    assert again.skipped_units == 9 and again.computed_units == 0
    assert "9 already done (skipped), 0 to compute" in caplog.text
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in units} == stamps
    assert again.points_path.read_bytes() == points
    # a lost unit, a corrupt unit and a stale temporary file: only the two damaged units are recomputed
    units[0].unlink()
    units[1].write_bytes(b"garbage")
    (first.run_dir / "units" / ".np00005-p00000.npz.123.abc.tmp").write_bytes(b"partial")
    third = pipeline.run(cfg)
    assert (third.computed_units, third.skipped_units) == (2, 7)
    assert third.points_path.read_bytes() == points
    assert not list(first.run_dir.rglob("*.tmp"))


def test_changed_inputs_are_recomputed_on_resume(tmp_path, monkeypatch):
    """The config hash cannot see code changes (e.g. a data loader returning other data); unit
    fingerprints can: only the units whose training data changed are recomputed."""
    from kernelcert import data

    cfg = tiny_config(tmp_path / "a")
    first = pipeline.run(cfg)
    original = data.LOADERS["synthetic"]

    @functools.wraps(original)  # same signature: the config reads the loader's options from it
    def flipped(**kw):
        x_tr, y_tr, x_te, y_te = original(**kw)
        y_tr = y_tr.copy()
        y_tr[0] = (y_tr[0] + 1) % 3
        return x_tr, y_tr, x_te, y_te

    monkeypatch.setitem(data.LOADERS, "synthetic", flipped)
    again = pipeline.run(cfg)
    assert again.config_hash == first.config_hash
    assert (again.computed_units, again.skipped_units) == (3, 6)  # the unit holding sample 0, per N_p
    fresh = pipeline.run(tiny_config(tmp_path / "b"))
    assert fresh.points_path.read_bytes() == again.points_path.read_bytes()


def test_config_hash_separates_runs(tmp_path):
    a = pipeline.config_from_dict(tiny_config(tmp_path))
    same = pipeline.with_overrides(a, out_dir=tmp_path / "elsewhere", workers=3, progress=True, plots=False)
    assert same.hash() == a.hash()
    b = pipeline.config_from_dict(tiny_config(tmp_path, **{"data.seed": 4}))
    c = pipeline.config_from_dict(tiny_config(tmp_path, **{"partition.num_partitions": [1, 3]}))
    d = pipeline.config_from_dict(tiny_config(tmp_path, **{"execution.block_size": 7}))
    assert len({a.hash(), b.hash(), c.hash(), d.hash()}) == 4
    ra = pipeline.run(a)
    rc = pipeline.run(c)
    assert ra.run_dir != rc.run_dir and ra.run_dir.parent == rc.run_dir.parent
    assert rc.computed_units == 4 and rc.skipped_units == 0  # nothing borrowed from the other config
    assert len(list((ra.run_dir / "units").glob("*.npz"))) == 9
    # a run directory that claims another hash is refused
    (ra.run_dir / "config.hash").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="another config"):
        pipeline.run(a)


def test_older_run_directory_formats_are_never_reused(tmp_path, caplog):
    cfg = pipeline.config_from_dict(tiny_config(tmp_path, **{"partition.num_partitions": [3]}))
    payload = cfg.hash_payload()
    assert payload["format"] == store.FORMAT_VERSION
    assert "path" not in payload["data"] and payload["data"]["dim"] == 5  # unset options are not hashed
    old_config = json.dumps({"hash": "0" * 64, "hash_payload": {"format": store.FORMAT_VERSION - 1}})
    run_dir = pipeline.run_directory(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(old_config)
    with pytest.raises(ValueError, match=f"format {store.FORMAT_VERSION - 1}.*does not reuse it"):
        pipeline.run(cfg)
    shutil.rmtree(run_dir)
    older = tmp_path / "tiny-0123456789ab"  # the same run under an older format's hash
    older.mkdir()
    (older / "config.json").write_text(old_config)
    with caplog.at_level("WARNING", logger="kernelcert.pipeline"):
        res = pipeline.run(cfg)
    assert "older kernelcert format" in caplog.text and str(older) in caplog.text
    assert res.computed_units == 3


def test_block_size_streaming_gives_the_same_certificates(tmp_path):
    small = pipeline.run(tiny_config(tmp_path, **{"execution.block_size": 4, "partition.num_partitions": [1, 5]}))
    meta = pipeline.UnitFile(small.run_dir / "units" / "np00001-p00000.npz").meta()
    assert meta["block_rows"] == 4
    big = pipeline.run(tiny_config(tmp_path, **{"partition.num_partitions": [1, 5]}))
    a, b = pipeline.read_points(small.points_path), pipeline.read_points(big.points_path)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def test_unit_block_rows_respect_the_memory_cap():
    ex = pipeline.ExecutionConfig(memory_cap_mb=64)
    rows = pipeline.unit_block_rows(5000, 10, 2, ex)
    assert rows >= 1 and rows * 5000 * 8 <= 64 * 2**20
    assert pipeline.unit_block_rows(50, 10, 2, ex) > rows
    assert pipeline.unit_block_rows(5000, 10, 2, pipeline.ExecutionConfig(block_size=17)) == 17


def test_kill_and_resume(tmp_path):
    """Kill a run in a subprocess after some units finished; the rerun recomputes only the rest and
    produces the same outputs as an uninterrupted run."""
    cfg = tiny_config(tmp_path / "killed", **{"data.n_train": 400, "data.n_test": 200,
                                              "partition.num_partitions": [2, 4, 8, 16, 20]})
    cfg["output"]["plots"] = False
    path = tmp_path / "kill.toml"
    path.write_text(to_toml(cfg))
    total = 2 + 4 + 8 + 16 + 20
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "kernelcert", "run", str(path), "--no-progress", "-q"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = pipeline.run_directory(pipeline.config_from_dict(cfg))
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if len(list((run_dir / "units").glob("*.npz"))) >= 3 or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "units").glob("*.npz")}
    err = proc.stderr.read().decode(errors="replace")[-2000:]
    assert 3 <= len(finished) < total, f"kill did not land midway ({len(finished)} of {total} units done): {err}"
    resumed = pipeline.run(cfg)
    assert resumed.skipped_units == len(finished)
    assert resumed.computed_units == total - len(finished)
    for p in (run_dir / "units").glob("*.npz"):
        if p.name in finished:
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == finished[p.name], f"{p.name} was recomputed"
    assert not list(run_dir.rglob("*.tmp"))
    clean = pipeline.run(tiny_config(tmp_path / "clean", **{"data.n_train": 400, "data.n_test": 200,
                                                            "partition.num_partitions": [2, 4, 8, 16, 20]}))
    assert clean.points_path.read_bytes() == resumed.points_path.read_bytes()
    for p in (clean.run_dir / "units").glob("*.npz"):
        a, b = np.load(p), np.load(run_dir / "units" / p.name)
        for key in a.files:
            if key not in ("meta", "checksums"):  # timings, pids and their checksums
                assert a[key].tobytes() == b[key].tobytes(), (p.name, key)
    s1 = json.loads(clean.summary_path.read_text())
    s2 = json.loads(resumed.summary_path.read_text())
    assert s1["results"] == s2["results"]


# --------------------------------------------------------------------------- finite aggregation
@pytest.fixture
def fa_partition(monkeypatch):
    """kernelcert.partition with the FA helpers (docs/math.md §7.2). Where the module does not provide them yet,
    a stand-in with the documented interface is patched in for these tests only."""
    import random
    from dataclasses import dataclass

    from kernelcert import partition

    if hasattr(partition, "fa_spread") and hasattr(partition, "fa_groups"):
        return partition

    @dataclass(frozen=True)
    class Spread:
        groups: np.ndarray
        k: int
        d: int
        shifts: np.ndarray

        def learner_indices(self, learner):
            kd = self.k * self.d
            return np.flatnonzero(np.isin((learner - self.shifts) % kd, self.groups))

    def fa_groups(x, k, d, rule="dpa_hash", **kw):
        return partition.partition(x, k * d, rule, **kw)

    def fa_spread(group_ids, k, d, seed=999999999 + 208):
        return Spread(np.asarray(group_ids), k, d, np.array(random.Random(seed).sample(range(k * d), d)))

    monkeypatch.setattr(partition, "fa_groups", fa_groups, raising=False)
    monkeypatch.setattr(partition, "fa_spread", fa_spread, raising=False)
    return partition


def _fa_config(out, d):
    cfg = tiny_config(out, **{"partition.rule": "seeded_hash", "partition.num_partitions": [3, 5]})
    cfg["fa"] = {"d": d, "k": [3, 5], "rule": "seeded_hash"}
    return cfg


def test_fa_with_one_shift_is_dpa(tmp_path, fa_partition):
    """d = 1 with the same hash as the partitions: FA = DPA and FA+ROE = DPA+ROE on identical learners."""
    res = pipeline.run(_fa_config(tmp_path, d=1))
    assert res.computed_units == 2 * (3 + 5)
    points = pipeline.read_points(res.points_path)
    for learner in ("svm", "regression_ridge0.01"):
        for n_p in (3, 5):
            for fa_m, dpa_m in (("fa", "dpa"), ("fa_roe", "dpa_roe")):
                for f in ("prediction", "radius"):
                    np.testing.assert_array_equal(column(points, f"{learner}/{n_p}/{fa_m}/{f}"),
                                                  column(points, f"{learner}/{n_p}/{dpa_m}/{f}"))


def test_fa_learners_match_direct_training(tmp_path, fa_partition):
    from kernelcert.roe import fa, fa_roe

    res = pipeline.run(_fa_config(tmp_path, d=2))
    assert hashlib.sha256(res.points_path.read_bytes()).hexdigest() == GOLDEN_POINTS_SHA256["fa_d2"]
    shifts = np.array(res.summary["fa"]["shifts"]["3"])
    assert len(shifts) == 2 and res.summary["fa"]["d"] == 2
    x_tr, y_tr, x_te, y_te = synthetic(num_classes=3, n_train=90, n_test=30, dim=5, seed=3, separation=2.5)
    kernel = FullyConnected(1, W_std=1.5, b_std=0.1)
    spread = fa_partition.fa_spread(fa_partition.fa_groups(x_tr, 3, 2, rule="seeded_hash", seed=0), 3, 2)
    votes, scores = [], []
    for learner in range(6):
        idx = np.sort(spread.learner_indices(learner))
        m = KernelRegression(0.01).fit(kernel.ntk(x_tr[idx]), y_tr[idx], 3)
        s = m.label_weights(kernel.ntk(x_te, x_tr[idx])) @ np.eye(3)[y_tr[idx]]
        votes.append(np.argmax(s, 1))
        scores.append(s)
    points = pipeline.read_points(res.points_path)
    ref = fa(np.stack(votes, 1), shifts, 3)
    np.testing.assert_array_equal(column(points, "regression_ridge0.01/3/fa/prediction"), ref.prediction)
    np.testing.assert_array_equal(column(points, "regression_ridge0.01/3/fa/radius"), ref.radius)
    np.testing.assert_array_equal(column(points, "regression_ridge0.01/3/fa_roe/radius"),
                                  fa_roe(np.stack(scores, 1), shifts).radius)


def test_dpa_hash_rule_uses_integer_pixels(tmp_path):
    """digits are scaled to [0, 1] for the kernel; the DPA hash partitions by the raw integer pixel sums."""
    from kernelcert.data import digits
    from kernelcert.partition import dpa_hash_partition

    cfg = {"data": {"dataset": "digits", "n_train": 200, "n_test": 20, "seed": 1},
           "kernel": {"depth": 1}, "learners": [{"type": "svm"}],
           "partition": {"rule": "dpa_hash", "num_partitions": [4]},
           "output": {"dir": str(tmp_path), "plots": False}, "execution": {"progress": False}}
    res = pipeline.run(cfg)
    x_raw, y, _, _ = digits(n_train=200, n_test=20, seed=1, scale=False)
    sizes = np.bincount(dpa_hash_partition(x_raw, 4), minlength=4)
    got = [pipeline.UnitFile(res.run_dir / "units" / f"np00004-p{i:05d}.npz").meta()["n"] for i in range(4)]
    assert got == sizes.tolist()


def test_progress_is_plain_lines_when_not_a_terminal(caplog, capsys):
    """Redirected output (Slurm, nohup): periodic log lines, no carriage returns, nothing nested."""
    from kernelcert.pipeline.progress import Progress, progress

    with caplog.at_level("INFO", logger="kernelcert.pipeline"):
        with Progress(3, True, desc="work units", unit="unit", interval=0.0) as bar:
            for _ in range(3):
                bar.update()
        assert list(progress(range(5), True, desc="inner blocks", unit="block", nested=True)) == list(range(5))
        assert list(progress(range(2), False, desc="disabled", unit="block")) == [0, 1]
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert "work units: 3/3 units" in caplog.text
    assert "inner blocks" not in caplog.text and "disabled" not in caplog.text
