"""kernelcert: label-flip certificates for infinite-width networks and partition ensembles."""

from .certificates import Certificate, certify, certify_model, pairwise_costs
from .ensemble import AggregateResult, dpa, ensemblecert, ensemblecert_bounds
from .kernels import Convolutional, CustomKernel, FullyConnected, Kernel, max_abs_row_sum, row_abs_sums
from .learners import KernelRegression, KernelSVM
from .roe import dpa_roe, dpa_star_roe, fa, fa_roe, whitebox_roe

__version__ = "0.1.0"  # the single version source (pyproject.toml reads it)

__all__ = [
    "Certificate", "certify", "certify_model", "pairwise_costs", "AggregateResult", "dpa", "ensemblecert",
    "ensemblecert_bounds", "Convolutional", "CustomKernel", "FullyConnected", "Kernel", "max_abs_row_sum",
    "row_abs_sums", "KernelRegression", "KernelSVM", "dpa_roe", "dpa_star_roe", "fa", "fa_roe", "whitebox_roe",
]
