"""The run's long per-point table (points_long.parquet / points_long.csv) and its reader, and the
plots a run writes (kernelcert.pipeline.summary, kernelcert.pipeline.report)."""

import numpy as np
import pandas as pd
import pytest

import kernelcert
from kernelcert import cli, pipeline
from kernelcert.ensemble import dpa
from kernelcert.partition import FA_DEFAULT_SEED, fa_spread
from kernelcert.pipeline.aggregate import MethodResult
from kernelcert.pipeline.exactness import RefinedWhiteboxResult
from kernelcert.roe import dpa_roe, fa
from kernelcert.pipeline.summary import (POINTS_LONG_COLUMNS, method_summary, points_long_frame, read_points_long,
                                         write_points, write_points_long)

from test_pipeline import tiny_config


@pytest.fixture(scope="module")
def fa_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("runs"), **{"partition.num_partitions": [1, 3]})
    cfg["fa"] = {"d": 2}
    cfg["methods"] = {"aggregations": ["single", "dpa", "ensemblecert", "dpa_roe", "whitebox_roe", "fa", "fa_roe"]}
    return pipeline.run(cfg)


def test_long_table_agrees_with_points_csv_row_by_row(fa_run):
    header, table = pipeline.read_points(fa_run.points_path)
    long = kernelcert.read_points_long(fa_run.run_dir)
    assert tuple(long.columns) == POINTS_LONG_COLUMNS
    index, label = table[:, header.index("index")], table[:, header.index("label")]
    groups = list(dict.fromkeys(c.rsplit("/", 1)[0] for c in header[2:]))
    assert len(long) == len(groups) * len(index)
    assert {m for m in long["method"]} >= {"single", "fa", "fa_roe", "ensemblecert"}
    seen = 0
    for g in groups:
        learner, n_p, method = g.split("/")
        part = long[(long["learner"] == learner) & (long["num_partitions"] == int(n_p)) & (long["method"] == method)]
        part = part.sort_values("point")
        seen += len(part)
        np.testing.assert_array_equal(part["point"].to_numpy(), index)
        np.testing.assert_array_equal(part["label"].to_numpy(), label)
        for field in ("prediction", "radius"):
            np.testing.assert_array_equal(part[field].to_numpy(), table[:, header.index(f"{g}/{field}")])
        np.testing.assert_array_equal(part["exact"].to_numpy(), table[:, header.index(f"{g}/exact")] == 1)
        np.testing.assert_array_equal(part["correct"].to_numpy(), part["prediction"].to_numpy() == label)
        if f"{g}/radius_upper" in header:
            np.testing.assert_array_equal(part["radius_upper"].to_numpy(np.int64),
                                          table[:, header.index(f"{g}/radius_upper")])
        else:
            assert part["radius_upper"].isna().all()
        for flag in ("exact_before_refinement", "resolved", "resolved_before_refinement"):
            if f"{g}/{flag}" in header:
                np.testing.assert_array_equal(part[flag].to_numpy(bool), table[:, header.index(f"{g}/{flag}")] == 1)
            else:
                assert part[flag].isna().all()
    assert seen == len(long)
    # the accuracies of summary.json follow from the long table
    for r in fa_run.summary["results"]:
        part = long[(long["learner"] == r["learner"]) & (long["num_partitions"] == r["num_partitions"])
                    & (long["method"] == r["method"])]
        assert part["correct"].mean() == pytest.approx(r["clean_accuracy"])


def _results(rng, t):
    up = rng.integers(0, 9, t)
    return [MethodResult("svm", 3, "ensemblecert", rng.integers(0, 3, t), up - rng.integers(0, 2, t).clip(max=up),
                         rng.random(t) < 0.5, up, rng.random(t) < 0.3),
            MethodResult("ntk regression", 1, "single", rng.integers(0, 3, t), rng.integers(0, 5, t), np.ones(t, bool)),
            RefinedWhiteboxResult("svm", 3, "whitebox_roe", rng.integers(0, 3, t), rng.integers(0, 5, t),
                                  np.zeros(t, bool), resolved=rng.random(t) < 0.7, resolved_before=rng.random(t) < 0.2)]


def _long_table_format(monkeypatch, parquet):
    """Make the long table's writer take the Parquet path (skip without pyarrow) or the CSV path
    (pyarrow hidden from imports, if installed)."""
    if parquet:
        pytest.importorskip("pyarrow")
        return
    import builtins
    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)


@pytest.mark.parametrize("parquet", [False, True])
def test_long_table_round_trips_with_missing_fields(tmp_path, monkeypatch, parquet):
    _long_table_format(monkeypatch, parquet)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 17)
    res = _results(rng, 17)
    (tmp_path / ("points_long.csv" if parquet else "points_long.parquet")).write_text("stale")
    path = write_points_long(tmp_path, y, res)
    assert path.name == ("points_long.parquet" if parquet else "points_long.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the stale other-format table is gone
    monkeypatch.undo()
    back = read_points_long(tmp_path)
    pd.testing.assert_frame_equal(back, points_long_frame(y, res))
    assert back["radius_upper"].iloc[:17].tolist() == res[0].radius_upper.tolist()
    assert back["radius_upper"].iloc[17:].isna().all() and back["exact_before_refinement"].iloc[17:].isna().all()
    assert back["learner"].iloc[17] == "ntk regression"
    for flag, field in (("resolved", "resolved"), ("resolved_before_refinement", "resolved_before")):
        assert back[flag].iloc[:34].isna().all()
        assert back[flag].iloc[34:].tolist() == getattr(res[2], field).tolist()
    np.testing.assert_array_equal(back["correct"].to_numpy(),
                                  np.concatenate([r.prediction for r in res]) == np.tile(y, 3))


def test_long_table_written_before_the_resolved_columns_reads_them_as_missing(tmp_path):
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 9)
    frame = points_long_frame(y, _results(rng, 9)[:2])
    frame.drop(columns=["resolved", "resolved_before_refinement"]).to_csv(tmp_path / "points_long.csv", index=False)
    back = read_points_long(tmp_path)
    assert tuple(back.columns) == POINTS_LONG_COLUMNS
    assert back["resolved"].isna().all() and back["resolved_before_refinement"].isna().all()
    pd.testing.assert_frame_equal(back, frame)


def test_points_csv_and_summary_carry_the_resolved_flags(tmp_path):
    """points.csv writes a refined white-box ROE result's flags as 0/1 columns after its exact
    column; summary fractions are their means; other results get no such columns."""
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 11)
    res = _results(rng, 11)
    write_points(tmp_path / "points.csv", y, res)
    header, table = pipeline.read_points(tmp_path / "points.csv")
    assert [h for h in header if h.endswith("resolved") or h.endswith("resolved_before_refinement")] == [
        "svm/3/whitebox_roe/resolved", "svm/3/whitebox_roe/resolved_before_refinement"]
    np.testing.assert_array_equal(table[:, header.index("svm/3/whitebox_roe/resolved")], res[2].resolved.astype(int))
    np.testing.assert_array_equal(table[:, header.index("svm/3/whitebox_roe/resolved_before_refinement")],
                                  res[2].resolved_before.astype(int))
    d = method_summary(res[2], y, [0, 1])
    assert d["resolved_fraction"] == res[2].resolved.mean()
    assert d["resolved_fraction_before_refinement"] == res[2].resolved_before.mean()
    assert "resolved_fraction" not in method_summary(res[0], y, [0, 1])


@pytest.mark.parametrize("parquet", [False, True])
def test_aggregate_command_writes_the_long_table(tmp_path, monkeypatch, parquet):
    """`kernelcert aggregate` writes the run's long table (same writer, same reader): one row per
    (method, test point) with the certificates of the library functions, radii capped at the number of
    groups; a table of the other format left in --out by an earlier call is removed."""
    rng = np.random.default_rng(11)
    t, k, d, K = 23, 3, 2, 3
    M = k * d
    y = rng.integers(0, K, t)
    s = rng.normal(size=(t, M, K))
    s[np.arange(t), :, y] += 0.7
    np.savez(tmp_path / "s.npz", scores=s, labels=y)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ("points_long.csv" if parquet else "points_long.parquet")
    stale.write_text("stale")
    _long_table_format(monkeypatch, parquet)
    assert cli.main(["aggregate", str(tmp_path / "s.npz"), "--method", "dpa", "dpa_roe", "fa", "--d", str(d),
                     "--out", str(out), "--no-plots", "-q"]) == 0
    monkeypatch.undo()
    assert not stale.exists()
    assert (out / ("points_long.parquet" if parquet else "points_long.csv")).is_file()
    long = kernelcert.read_points_long(out)
    assert tuple(long.columns) == POINTS_LONG_COLUMNS
    assert long["method"].tolist() == ["dpa"] * t + ["dpa_roe"] * t + ["fa"] * t
    votes = s.argmax(axis=2)
    shifts = fa_spread(np.arange(M), k, d, seed=FA_DEFAULT_SEED).shifts
    expect = {("dpa", M): dpa(votes, K), ("dpa_roe", M): dpa_roe(s), ("fa", k): fa(votes, shifts, K)}
    for (method, size), res in expect.items():
        part = long[long["method"] == method]
        assert (part["learner"] == "ensemble").all() and (part["num_partitions"] == size).all()
        assert part["point"].tolist() == list(range(t)) and part["label"].tolist() == y.tolist()
        assert part["prediction"].tolist() == res.prediction.tolist()
        assert part["radius"].tolist() == np.minimum(res.radius, M).tolist()
        assert part["correct"].tolist() == (res.prediction == y).tolist()
        assert part["radius_upper"].isna().all() and not part["exact"].any()


def test_reader_names_the_directory_without_a_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="points_long"):
        read_points_long(tmp_path)


def test_plots_are_written_and_labelled(fa_run):
    names = sorted(p.name for p in fa_run.plots)
    assert "mcr_vs_partitions.png" in names and sum(n.startswith("certified_accuracy_") for n in names) == 2
    for p in fa_run.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fa_is_labelled_with_k_and_d(fa_run):
    from kernelcert.pipeline.report import _plot_label

    assert _plot_label("fa", fa_run.summary) == "FA (k = N_p, d = 2)"
    assert _plot_label("single", fa_run.summary) == "single model (ScaLabelCert)"


def test_curve_at_budgets_matches_certified_accuracy():
    """The plotted curve (from summary.json's compact curve) is the certified accuracy at every integer
    budget, computed independently from the radii (`kernelcert.metrics.certified_accuracy`)."""
    from kernelcert.metrics import certified_accuracy
    from kernelcert.pipeline.report import curve_at_budgets
    from kernelcert.pipeline.summary import method_summary

    rng = np.random.default_rng(9)
    for t in (1, 7, 40):
        y = rng.integers(0, 3, t)
        res = MethodResult("svm", 5, "dpa", rng.integers(0, 3, t), rng.integers(0, 12, t), np.zeros(t, bool))
        curve = method_summary(res, y, [0])["curve"]
        budgets, acc = curve_at_budgets(curve, 15)
        assert budgets.tolist() == list(range(16))
        expect = [certified_accuracy(res.radius, res.prediction == y, int(b)) for b in budgets]
        np.testing.assert_allclose(acc, expect, rtol=0, atol=1e-12)
