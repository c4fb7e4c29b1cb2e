import numpy as np
import pytest

from kernelcert.kernels import FullyConnected


@pytest.fixture(scope="session")
def gram_problem():
    """Factory: NTK Gram (n, n), test rows (t, n) and random labels for tiny problems."""

    def make(n, t, K, seed):
        rng = np.random.default_rng(seed)
        x, xt = rng.normal(size=(n, 4)), rng.normal(size=(t, 4))
        k = FullyConnected(1, 1.0, 0.5)
        return k.ntk(x), k.ntk(xt, x), rng.integers(0, K, n)

    return make
