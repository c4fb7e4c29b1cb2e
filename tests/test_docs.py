"""The documented examples run as written (docs/usage.md and the README's Python block)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["docs/usage.md", "README.md"])
def test_documented_python_runs_as_written(doc, tmp_path, monkeypatch):
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python example"
    monkeypatch.chdir(tmp_path)  # run directories of the example land in a temporary folder
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{doc}[python block {i}]", "exec"), namespace)


def test_usage_toml_example_is_a_valid_config():
    from kernelcert import pipeline

    (toml,) = re.findall(r"```toml\n(.*?)```", (ROOT / "docs/usage.md").read_text(), flags=re.S)
    cfg = pipeline.load_config_string(toml)
    assert [lc.type for lc in cfg.learners] == ["regression", "svm"]
    assert cfg.partition.num_partitions == (1, 10, 50)
    assert not cfg.exactness.refine and cfg.exactness.time_limit == 10.0
