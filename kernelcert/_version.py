"""The package version (one source: kernelcert.__version__ and the run hash read it from here)."""

__version__ = "0.1.0"
