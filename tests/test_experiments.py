"""Smoke test of benchmarks/experiments.py on a tiny synthetic run: the rows it extracts from the
pipeline agree with an independent recomputation from points.csv, and the findings and the Markdown
are computed from those rows."""

import re

import numpy as np
import pytest

from benchmarks import experiments as ex
from kernelcert import pipeline
from kernelcert.metrics import certified_accuracy, median_certified_robustness

SPEC = {"label": "synthetic (3 classes)", "data": {"dataset": "synthetic", "num_classes": 3, "dim": 5,
                                                   "separation": 2.0}}
KERNEL = {"architecture": "fully_connected", "depth": 1, "W_std": 1.0, "b_std": 0.0, "activation": "relu",
          "kind": "ntk"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    saved = []
    d = ex.run_dataset("synthetic", SPEC, [("main", 120, 40, (1, 3, 6, 50))], (0.5,), 2, out, kernel=KERNEL,
                       min_per_partition=20, log=lambda *a: None, on_run=saved.append)
    result = ex.base_result("cmd --quick", True, {"ridges": (0.5,), "fa_d": 2, "backend": "inprocess",
                                                  "runs": {"synthetic": [("main", 120, 40, (1, 3, 6, 50))]}},
                            ["synthetic"], {"cores": 2, "cpu": "test"})
    result["datasets"]["synthetic"] = d
    result["findings"] = ex.compute_findings(result)
    result["plots"] = ex.write_plots(result, "experiments_test", out)
    result["complete"] = True
    return result, d, saved


def test_feasible_partitions():
    assert ex.feasible_partitions(3000, ex.NP_GRID, 40) == (1, 10, 50)
    assert ex.feasible_partitions(60000, ex.NP_GRID, 40) == ex.NP_GRID
    assert ex.feasible_partitions(100, (1, 3, 10), 20) == (1, 3)


def test_trend():
    assert ex._trend([10, 10, 9]) == "flat"
    assert ex._trend([40, 20, 5]) == "decays"
    assert ex._trend([5, 20, 40]) == "grows"
    assert ex._trend([5, 40, 10]) == "non-monotone"
    assert ex._trend([None, 30, 30]) == "grows"  # undefined MCR ranks below every defined one


def test_rows_match_points_csv(tiny):
    result, d, saved = tiny
    assert len(saved) == 1 and saved[0]["rows"] == d["rows"]
    meta = d["runs"][0]
    assert list(meta["num_partitions"]) == [1, 3, 6] and meta["partitions_dropped"] == [50]
    rows = d["rows"]
    keys = {(r["learner"], r["num_partitions"], r["method"]) for r in rows}
    for learner in ("svm", "krr_ridge0.5"):
        assert (learner, 1, "single") in keys
        assert (learner, 3, "single") not in keys
        for n_p in (3, 6):
            for m in ex.ENSEMBLE_METHODS:
                assert (learner, n_p, m) in keys
    run_dir = ex.ROOT / meta["run_dir"] if not meta["run_dir"].startswith("/") else meta["run_dir"]
    header, table = pipeline.read_points(f"{run_dir}/points.csv")
    col = {h: i for i, h in enumerate(header)}
    y = table[:, col["label"]]
    for r in rows:
        base = f"{r['learner']}/{r['num_partitions']}/{r['method']}"
        pred, rad = table[:, col[f"{base}/prediction"]], table[:, col[f"{base}/radius"]]
        correct = pred == y
        assert r["clean_accuracy"] == pytest.approx(correct.mean())
        assert r["mcr"]["radius"] == median_certified_robustness(rad, correct, "radius")
        for b in ("0", "1", "5"):
            assert r["certified_accuracy"][b] == pytest.approx(certified_accuracy(rad, correct, int(b)))
        if r["method"] == "ensemblecert":
            up = table[:, col[f"{base}/radius_upper"]]
            assert np.all(up >= rad)
            assert r["bounds"]["agree_fraction"] == pytest.approx(np.mean(up == rad))
            assert r["bounds"]["gap_max"] == int((up - rad).max())
            cc = r["class_costs"]
            assert 0.0 <= cc["model_exact_fraction"] <= 1.0 and cc["class_cost_gap_max"] >= 0
        assert r["timings"]["units_seconds"]["total"] > 0
        assert r["timings"]["aggregation_ms_per_point"] >= 0


def test_findings_follow_the_numbers(tiny):
    result, d, _ = tiny
    rows = d["rows"]
    f = result["findings"]
    # the winner tally equals an independent count over (learner, N_p > 1)
    tally = {}
    for learner in ("svm", "krr_ridge0.5"):
        for n_p in (3, 6):
            cand = [r for r in rows if r["learner"] == learner and r["num_partitions"] == n_p
                    and r["method"] in ex.ENSEMBLE_METHODS]
            top = max(-1 if r["mcr"]["radius"] is None else r["mcr"]["radius"] for r in cand)
            for r in cand:
                if (-1 if r["mcr"]["radius"] is None else r["mcr"]["radius"]) == top:
                    tally[r["method"]] = tally.get(r["method"], 0) + 1
    last = f[-1]
    assert "over 4 (dataset, run, learner, N_p) settings" in last
    for m, c in tally.items():
        assert f"{m} {c}" in last
    # single-model sentences quote the single model's MCR and the right verdict
    for learner, label in (("svm", "SVM (C = C_max)"), ("krr_ridge0.5", "KRR (ridge 0.5)")):
        s_mcr = next(r["mcr"]["radius"] for r in rows if r["learner"] == learner and r["method"] == "single")
        best = max((-1 if r["mcr"]["radius"] is None else r["mcr"]["radius"]) for r in rows
                   if r["learner"] == learner and r["num_partitions"] > 1)
        sent = next(s for s in f if f"{label}: the single model" in s)
        assert f"has MCR {'n/a' if s_mcr is None else s_mcr}," in sent
        s_key = -1 if s_mcr is None else s_mcr
        want = ("more robust than every ensemble" if s_key > best else
                "as robust as the best ensemble" if s_key == best else "less robust than the best ensemble")
        assert want in sent


def test_markdown(tiny, tmp_path):
    result, d, _ = tiny
    md = ex.markdown({**result, "wall_seconds": 12.0})
    assert md.startswith("## ")
    assert "cmd --quick" in md
    for r in d["rows"]:
        if r["method"] == "ensemblecert" and r["num_partitions"] > 1:
            assert re.search(rf"\| main \(120\) \| {re.escape(r['learner'])} \| {r['num_partitions']} \| ensemblecert \| "
                             rf"{r['clean_accuracy']:.3f} \|", md)
    for p in result["plots"]:
        assert p in md
        with open(p, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for sentence in result["findings"]:
        assert sentence in md
