"""The end-to-end certification run: TOML config -> run directory with certificates, tables and plots.

Modules, each one concern (lower ones never import higher ones; see docs/architecture.md):

- `methods`: the registry of aggregation methods (`REGISTRY`, `METHODS`);
- `store`: the run directory, atomic writes, the unit-file encoding, resume checks;
- `schema`: the config sections as dataclasses whose fields carry their checks (`ConfigError`);
- `config`: validation of a whole config, overrides, the objects it builds and the config hash;
- `progress`: bars on a terminal, periodic log lines otherwise;
- `unit`: one work unit (Gram once, fit, stream test blocks, build `Evidence`);
- `plan`: data, aggregation targets and work units, size and C_max checks, built once;
- `aggregate`: every method on every target, in blocks of test points;
- `summary`: `summary.json`, `points.csv` and the long per-point table, and their readers;
- `report`: the results table, plots and the Markdown report;
- `backends`: in-process and Dask execution;
- `runner`: `run`, orchestration only.

Typical use::

    from kernelcert import pipeline
    result = pipeline.run("configs/synthetic_small.toml")
    header, table = pipeline.read_points(result.points_path)
    frame = pipeline.read_points_long(result.run_dir)  # tidy: one row per point/learner/N_p/method
"""

from ..evidence import Evidence, build_evidence, stack_evidence
from .aggregate import MethodResult
from .backends import Backend, DaskBackend, InProcessBackend, make_backend
from .config import (ConfigError, DataConfig, ExecutionConfig, FAConfig, KernelConfig, LearnerConfig, OutputConfig,
                     PartitionConfig, RunConfig, config_from_dict, load_config, load_config_string, make_kernel,
                     make_learner, with_overrides)
from .exactness import RefinedWhiteboxResult
from .methods import METHODS, REGISTRY, AggregationMethod, MethodOutput
from .plan import AggregationTarget, RunPlan, plan_run
from .report import markdown_report, results_table, write_plots
from .runner import RunResult, run, run_directory
from .store import FORMAT_VERSION, UnitFile
from .summary import read_points, read_points_long, read_summary
from .unit import unit_block_rows

__all__ = [
    "run", "RunResult", "run_directory", "RunConfig", "DataConfig", "KernelConfig", "LearnerConfig",
    "PartitionConfig", "FAConfig", "OutputConfig", "ExecutionConfig", "ConfigError", "load_config",
    "load_config_string", "config_from_dict", "with_overrides", "make_kernel", "make_learner", "plan_run", "RunPlan",
    "AggregationTarget", "MethodResult", "RefinedWhiteboxResult", "METHODS", "REGISTRY", "AggregationMethod", "MethodOutput", "Evidence",
    "build_evidence", "stack_evidence", "read_points", "read_points_long", "read_summary", "results_table", "write_plots",
    "markdown_report", "UnitFile", "FORMAT_VERSION", "unit_block_rows", "Backend", "InProcessBackend",
    "DaskBackend", "make_backend",
]
