"""Small kernel problems shared by the tests (RBF Grams of clustered points)."""

import numpy as np


def rbf_gram(a: np.ndarray, b: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """exp(-gamma * ||a_i - b_j||^2), shape (len(a), len(b))."""
    return np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def rbf_problem(n, t, K, seed, gamma=0.5, spread=2.0):
    """RBF Gram (n, n) (positive definite for distinct points), test rows (t, n) and clustered labels."""
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(K, 3))
    y = rng.integers(0, K, n)
    x = centres[y] + rng.normal(size=(n, 3))
    xt = centres[rng.integers(0, K, t)] + rng.normal(size=(t, 3))
    return rbf_gram(x, x, gamma), rbf_gram(xt, x, gamma), y
