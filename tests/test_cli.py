"""The `kernelcert` command: --help, run (fresh and resumed), errors, the demo config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kernelcert
from kernelcert import cli, pipeline

from test_pipeline import tiny_config, to_toml

REPO = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_help_via_python_m():
    out = subprocess.run([sys.executable, "-m", "kernelcert", "--help"], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "demo" in out.stdout
    out = subprocess.run([sys.executable, "-m", "kernelcert", "run", "--help"], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert out.returncode == 0 and "--scheduler" in out.stdout and "--workers" in out.stdout


def test_run_and_resume(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "from_config", **{"partition.num_partitions": [1, 4]})
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(cfg))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress", "-q"]) == 0
    out = capsys.readouterr().out
    assert "EnsembleCert" in out and "DPA+ROE" in out and "white-box ROE" in out
    assert "5 work units computed, 0 reused" in out
    run_dir = pipeline.run_directory(pipeline.load_config(path, out_dir=tmp_path / "runs"))
    assert run_dir.parent == tmp_path / "runs"  # --out wins over [output] dir
    for name in ("points.csv", "summary.json", "report.md", "mcr_vs_partitions.png"):
        assert (run_dir / name).exists()
    assert not (tmp_path / "from_config").exists()
    assert cli.main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress", "-q"]) == 0
    assert "0 work units computed, 5 reused" in capsys.readouterr().out


def test_errors_exit_with_status_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tiny_config(tmp_path, **{"data.dataset": "imagenet"})
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(bad))
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    assert "unknown dataset 'imagenet'" in capsys.readouterr().err
    path.write_text(to_toml(tiny_config(tmp_path)))
    assert cli.main(["run", str(path), "--backend", "dask"]) == 2
    assert "scheduler" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run"])  # argparse: CONFIG is required
    assert cli.main([]) == 2  # no command: usage on stderr, non-zero status
    assert "usage: kernelcert" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kernelcert {kernelcert.__version__}"


def test_outputs_line_has_no_stray_comma(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_config(tmp_path / "runs", **{"partition.num_partitions": [1, 3]})))
    assert cli.main(["run", str(path), "--no-progress", "--no-plots", "-q"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.strip() == "points.csv, summary.json, report.md"


def test_renamed_config_reuses_the_finished_units(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "runs", **{"partition.num_partitions": [1, 3], "output.name": None})
    first, renamed = tmp_path / "first.toml", tmp_path / "renamed.toml"
    first.write_text(to_toml(cfg))
    assert cli.main(["run", str(first), "--no-progress", "--no-plots", "-q"]) == 0
    renamed.write_text(first.read_text())
    assert cli.main(["run", str(renamed), "--no-progress", "--no-plots", "-q"]) == 0
    assert "0 work units computed, 4 reused" in capsys.readouterr().out
    (a,) = (tmp_path / "runs").glob("first-*")
    (b,) = (tmp_path / "runs").glob("renamed-*")
    assert a.name.split("-")[-1] == b.name.split("-")[-1]
    assert (a / "points.csv").read_bytes() == (b / "points.csv").read_bytes()


def test_failed_run_leaves_no_empty_run_directory(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "runs")
    cfg["learners"] = [{"type": "svm", "C": 10.0}]  # fails in the C_max pre-pass, after the directory exists
    path = tmp_path / "bad_c.toml"
    path.write_text(to_toml(cfg))
    assert cli.main(["run", str(path), "--no-progress", "-q"]) == 2
    assert "exceeds C_max" in capsys.readouterr().err
    assert not list((tmp_path / "runs").iterdir())


def test_demo_config_file_matches_builtin():
    from_file = pipeline.load_config(REPO / "configs" / "demo.toml")
    builtin = pipeline.load_config_string(cli.demo_config_text(), name="demo")  # package data
    assert (REPO / "configs" / "demo.toml").read_text() == cli.demo_config_text()
    assert from_file.hash() == builtin.hash()
    assert {lc.type for lc in builtin.learners} == {"svm", "regression"}
    assert builtin.partition.num_partitions == (1, 10, 50)
    assert builtin.data.dataset == "mnist"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_validate(path):
    cfg = pipeline.load_config(path)
    assert cfg.hash() and cfg.learners


def test_tiny_demo_on_real_mnist(tmp_path, capsys):
    code = cli.main(["demo", "--n-train", "120", "--n-test", "30", "--partitions", "1", "4", "--out", str(tmp_path),
                     "--no-progress", "--no-plots", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "regression" in captured.out and "svm" in captured.out and "EnsembleCert" in captured.out
    (run_dir,) = tmp_path.glob("demo-*")
    header, table = pipeline.read_points(run_dir / "points.csv")
    assert table.shape[0] == 30 and set(table[:, 1]) <= set(range(10))
