"""kernelcert: label-flip certificates for infinite-width networks and partition ensembles.

The mathematical core (certificates, learners, kernels, ensembles) is importable from here; the
certification run (TOML config -> run directory) is `kernelcert.pipeline` (`run`, `load_config`,
`read_points`, ... are re-exported here).
"""

from ._version import __version__
from .certificates import Certificate, certify, certify_model, pairwise_costs
from .ensemble import AggregateResult, dpa, ensemblecert, ensemblecert_bounds
from .evidence import Evidence, build_evidence, stack_evidence
from .kernels import Convolutional, CustomKernel, FullyConnected, Kernel, max_abs_row_sum, row_abs_sums
from .learners import KernelRegression, KernelSVM
from .pipeline import (ConfigError, RunConfig, RunResult, config_from_dict, load_config, load_config_string,
                       read_points, read_points_long, read_summary, run)
from .roe import dpa_roe, dpa_star_roe, fa, fa_roe, whitebox_roe

__all__ = [
    "__version__", "Certificate", "certify", "certify_model", "pairwise_costs", "AggregateResult", "dpa",
    "ensemblecert", "ensemblecert_bounds", "Evidence", "build_evidence", "stack_evidence", "Convolutional",
    "CustomKernel", "FullyConnected", "Kernel", "max_abs_row_sum", "row_abs_sums", "KernelRegression", "KernelSVM",
    "dpa_roe", "dpa_star_roe", "fa", "fa_roe", "whitebox_roe", "run", "RunConfig", "RunResult", "ConfigError",
    "load_config", "load_config_string", "config_from_dict", "read_points", "read_points_long", "read_summary",
]
