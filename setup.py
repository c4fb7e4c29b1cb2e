"""Build of the optional C extension kernelcert._argmax_c (the DPA pass over float32 scores, see
kernelcert/_argmax_c.c); everything else is configured in pyproject.toml. optional=True: when it
cannot be compiled, the install goes on and kernelcert runs its numba kernel instead."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kernelcert._argmax_c", ["kernelcert/_argmax_c.c"], optional=True)])
