"""kernelcert: label-flip certificates for infinite-width networks and partition ensembles."""

__version__ = "0.1.0"
