"""Label-linear kernel learners: infinite-width networks trained to convergence (docs/math.md §2).

Both learners take precomputed kernel matrices (NTK or NNGP): `K_train` (n, n) for fitting and
`K_test_train` (t, n) = Θ(x_test, X_train) for prediction. Their class scores are
`s_k(x) = sum_j W[x, j] [y_j == k]` (+ terms that do not depend on k) with label weights
`W = label_weights(K_test_train)`, which is what ScaLabelCert certifies (docs/math.md §3).
Predictions are `certificates.label_linear_prediction(W, y, K)`: the exact argmax over classes of
`W @ onehot(y)`, ties to the smaller index, the same prediction the certificate is about.

They follow the scikit-learn estimator conventions for precomputed kernels: parameters are stored
by `__init__` as given and validated by `fit`; `get_params` / `set_params` / `sklearn.base.clone`
work; fitted state has a trailing underscore; using an unfitted model raises
`sklearn.exceptions.NotFittedError`. `fit` takes the task's number of classes (required: a training
set may lack a class the attacker can relabel to).
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, Callable, Iterator, Literal, Sequence, TypeVar, cast, overload

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._validation import (
    as_float_array,
    check_columns,
    check_gram,
    check_labels,
    check_positive,
    check_same_length,
)
from .certificates import Certificate, certify, label_linear_prediction
from .voting import row_blocks

_EPS = float(np.finfo(np.float64).eps)
_T = TypeVar("_T")
_BLOCK_BYTES = 64 * 2**20
_WARN_RELATIVE_ERROR = 1e-4  # fits whose weight error bound exceeds this (relative) are warned about
_SAFE_RELATIVE_ERROR = 1e-6  # the suggested ridge brings the bound below this


def onehot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) float64 one-hot encoding of integer labels."""
    return (y[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)


def _gamma(m: int) -> float:
    """gamma_m = m eps / (1 - m eps), the usual bound on the relative error of m roundings."""
    return m * _EPS / (1.0 - m * _EPS)


def _blocks(t: int, n: int, block_size: int | None) -> Iterator[slice]:
    """`voting.row_blocks` over t test rows of n float64 weights; default: blocks near 64 MiB
    (`_BLOCK_BYTES`). The block boundaries change the last bits of the solves (the BLAS kernels
    treat column counts differently), so this default is kept as it is."""
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // (8 * max(n, 1)))
    return row_blocks(t, 8 * max(n, 1), block_size)


def _psd_tolerance(K: np.ndarray) -> float:
    """Absolute eigenvalue tolerance below zero that still counts as positive semidefinite."""
    n = K.shape[0]
    scale = max(float(np.max(np.abs(np.diag(K)))), float(np.max(np.abs(K))), 1e-300)
    return max(100.0 * n * _EPS, 1e-12) * scale


def _check_psd(K: np.ndarray, name: str) -> None:
    """ValueError unless K + tol I has a Cholesky factor (K PSD up to rounding)."""
    tol = _psd_tolerance(K)
    try:
        scipy.linalg.cho_factor(K + tol * np.eye(K.shape[0]), lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        lam = float(scipy.linalg.eigvalsh(K, subset_by_index=[0, 0], check_finite=False)[0])
        raise ValueError(
            f"{name} is not positive semidefinite (smallest eigenvalue {lam:.3g}); kernel Gram matrices must be PSD"
        ) from None


def _safe_c_max(row_abs_sums: np.ndarray) -> float:
    """1 / max_i sum_j |K_ij|, rounded down so that C_max * (exact row sum) <= 1 holds rigorously.

    The float row sums of n non-negative terms are within a relative (n+2)·eps of the exact sums,
    so inflating by that factor and rounding the reciprocal down keeps the small-C condition of
    docs/math.md §2 true in exact arithmetic (the margin is ~n·1e-16 relative).
    """
    n = row_abs_sums.shape[0]
    m = float(np.max(row_abs_sums))
    if m <= 0.0:
        return float("inf")
    m_up = m * (1.0 + (n + 2) * _EPS)
    return float(np.nextafter(1.0 / m_up, 0.0))


def _smallest_eigenvalue_lower_bound(A: np.ndarray, cho: tuple[np.ndarray, bool]) -> float:
    """A rigorous lower bound on the smallest eigenvalue of the symmetric matrix A (<= 0: none found).

    Inverse iteration with the Cholesky factor `cho` of A estimates lambda_min from above; then
    A - sigma I is factorised for sigma = a fraction of the estimate. When that Cholesky runs to
    completion, L L' = A - sigma I + E with |E| <= gamma_{n+1} |L||L'| (Higham, Accuracy and
    Stability of Numerical Algorithms, Thm 10.3), so lambda_min(A) >= sigma - gamma_{n+1} ||L||_F^2
    - eps max |A_ii - sigma| (the rounding of the shifted diagonal). Cost: one more Cholesky.
    """
    n = A.shape[0]
    v: np.ndarray = np.random.default_rng(0).normal(size=(n,))
    v /= np.linalg.norm(v)
    for _ in range(12):
        v = scipy.linalg.cho_solve(cho, v, check_finite=False)
        norm = np.linalg.norm(v)
        if not np.isfinite(norm) or norm == 0:
            return 0.0
        v /= norm
    estimate = float(v @ (A @ v))  # Rayleigh quotient: >= lambda_min
    diag = np.diag(A)
    for frac in (0.5, 0.0625, 0.002):
        sigma = frac * estimate
        if not sigma > 0:
            return 0.0
        try:
            L = scipy.linalg.cholesky(A - sigma * np.eye(n), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            continue
        lf2 = float(np.sum(L * L)) * (1.0 + (n * n + 2) * _EPS)  # rounded up
        bound = sigma - _gamma(n + 1) * lf2 * (1.0 + 4 * _EPS) - _EPS * float(np.max(np.abs(diag - sigma)))
        return bound if bound > 0 else 0.0
    return 0.0


class _SharedGram:
    """A training Gram validated once (`check_gram`) and made exactly symmetric, with the factorisations
    computed from it so far (`once`), for every learner fitted on it (`fit_learners`)."""

    def __init__(self, K_train: ArrayLike) -> None:
        K = check_gram(K_train, name="K_train")
        self.K = 0.5 * (K + K.T)  # exact symmetry (check_gram allowed a 1e-8 relative asymmetry)
        self._memo: dict[tuple, object] = {}

    def once(self, key: tuple, compute: Callable[[], _T]) -> _T:
        """`compute()` the first time `key` is asked for, its stored result afterwards (errors are not stored)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(_T, self._memo[key])  # every caller asks for a key with the same kind of `compute`


class _KernelLearner(BaseEstimator, abc.ABC):
    """Shared bookkeeping: fitted-state checks, test-matrix validation, prediction and certificates."""

    def __sklearn_is_fitted__(self) -> bool:
        return bool(getattr(self, "_fitted", False))

    def _require_fit(self) -> None:
        check_is_fitted(self, msg=f"this {type(self).__name__} is not fitted yet; call fit(K_train, y, num_classes) "
                                  "first")

    def _check_test(self, K_test_train: ArrayLike) -> np.ndarray:
        self._require_fit()
        Kt = as_float_array("K_test_train", K_test_train, ndim=2)
        check_columns("K_test_train", Kt, self.n_train_)
        return Kt

    def _fit_inputs(self, K_train: ArrayLike, y: ArrayLike, num_classes: int, shared: _SharedGram | None
                    ) -> tuple[_SharedGram, np.ndarray, int]:
        self._fitted = False  # a failed re-fit must not leave a half-updated model usable
        if num_classes is None:
            raise ValueError("num_classes is required: pass the task's number of classes (a training set may lack "
                             "some of them, and the attacker may relabel to any)")
        gram = _SharedGram(K_train) if shared is None else shared
        y, num_classes = check_labels(y, num_classes, name="y")
        check_same_length(K_train=gram.K, y=y)
        return gram, y, num_classes

    @abc.abstractmethod
    def fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int) -> "_KernelLearner":
        """Fit on the (n, n) training Gram and integer labels (n,) in 0..num_classes-1; returns self."""

    @abc.abstractmethod
    def _fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int, shared: _SharedGram | None) -> "_KernelLearner":
        """`fit`, on `shared` (already validated and symmetrised) instead of K_train when given."""

    def _finish_fit(self, y: np.ndarray, num_classes: int, n: int) -> None:
        self.labels_ = y
        self.num_classes_ = num_classes
        self.n_train_ = n
        self._Y = onehot(y, num_classes)
        self._fitted = True

    @overload
    def label_weights(self, K_test_train: ArrayLike, *, block_size: int | None = ...,
                      return_error: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def label_weights(self, K_test_train: ArrayLike, *, block_size: int | None = ...,
                      return_error: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def label_weights(self, K_test_train: ArrayLike, *, block_size: int | None = ...,
                      return_error: bool = ...) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...

    def label_weights(self, K_test_train: ArrayLike, *, block_size: int | None = None, return_error: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label weights W (t, n) float64 of the test rows K_test_train (t, n): class scores are exactly
        `W @ onehot(y)` (computed in row blocks of `block_size` rows). With return_error=True also err
        (t,): a bound on sum_j |W_ij - W*_ij| against the model's exact label weights W* (`certify` takes
        it as `atol`). KernelRegression: the weights and bound of its class doc; KernelSVM: W =
        K_test_train and err = 0 (label-linear regime only, ValueError otherwise)."""
        Kt = self._check_test(K_test_train)
        W = self._weights(Kt, block_size)
        return (W, self._weight_error(Kt, W)) if return_error else W

    @abc.abstractmethod
    def _weights(self, Kt: np.ndarray, block_size: int | None) -> np.ndarray:
        """`label_weights` W (t, n) float64 of the checked test rows Kt (t, n)."""

    @abc.abstractmethod
    def _weight_error(self, Kt: np.ndarray, W: np.ndarray) -> np.ndarray:
        """err (t,): the bound of `label_weights` on sum_j |W_ij - W*_ij| for W = `_weights(Kt, ...)`."""

    def certify(self, K_test_train: ArrayLike, **kw: Any) -> Certificate:
        """ScaLabelCert certificate (`certificates.certify`) of the label weights on K_test_train, with
        the weights' error bound added to the tolerance (`atol`), so that it holds for the exact model."""
        W, err = self.label_weights(K_test_train, return_error=True)
        if kw.get("atol") is not None:
            err = err + np.asarray(kw["atol"], dtype=np.float64)
        kw["atol"] = err
        return certify(W, self.labels_, self.num_classes_, **kw)


_KernelLearnerT = TypeVar("_KernelLearnerT", bound=_KernelLearner)


def _ridge_cholesky(K: np.ndarray, ridge: float, hint: str) -> tuple[tuple[np.ndarray, bool], float, float]:
    """(Cholesky factor of A = K + ridge I as `cho_factor` gives it, a rigorous lower bound on the smallest
    eigenvalue of A (`_smallest_eigenvalue_lower_bound`, <= 0: none), a bound on ||dA||_2 for the backward
    error of solves with the factor); ValueError (with `hint`) when A has no Cholesky factor."""
    n = K.shape[0]
    A = K + ridge * np.eye(n)
    try:
        cho = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        safe = ridge + np.sqrt(n) * _gamma(3 * n + 1) * float(np.trace(np.abs(A))) / _SAFE_RELATIVE_ERROR
        raise ValueError(
            f"K_train + ridge*I (ridge={ridge}) is singular or not positive definite, "
            f"so converged kernel regression is not defined; {hint} (for a PSD K_train, ridge >= {safe:.3g} "
            f"keeps the label weights accurate to {_SAFE_RELATIVE_ERROR:g})"
        ) from None
    lam = _smallest_eigenvalue_lower_bound(A, cho)
    L = np.tril(cho[0])
    # backward error of the Cholesky solve (A + dA) w = k: |dA| <= gamma_{3n+1} |L||L'| (Higham,
    # Thm 10.4), ||dA||_2 <= gamma_{3n+1} ||L||_F^2; plus the rounding of the diagonal of A
    back = _gamma(3 * n + 1) * float(np.sum(L * L)) * (1.0 + (n * n + 2) * _EPS)
    back += _EPS * float(np.max(np.abs(np.diag(A))))
    return cho, lam, back


class KernelRegression(_KernelLearner):
    """Kernel (ridge) regression on one-hot targets: an infinite-width network trained with squared loss.

    Converged (`train_time=None`): `S(x) = Θ(x, X) (Θ + λI)^-1 Y`. Finite time t with learning rate η
    (gradient flow, docs/math.md §2): `S_t(x) = Θ(x, X) A^-1 (I - exp(-η t A)) Y` with `A = Θ + λI`.
    Label weights `W = Θ(x, X) A^-1` (converged) or `Θ(x, X) A^-1 (I - exp(-η t A))`, shape (t, n);
    class scores are exactly `W @ onehot(y)`.

    Parameters (validated by fit): ridge λ >= 0; train_time t > 0 or None/inf (converged);
    learning_rate η > 0. With λ = 0 and no finite time the training Gram must be numerically
    positive definite: fit computes a rigorous lower bound on the smallest eigenvalue of Θ + λI and
    refuses the fit (ValueError naming a safe ridge) when none is positive; it warns (RuntimeWarning)
    when the float weights are only guaranteed to a relative accuracy worse than 1e-4, naming the
    ridge that brings the guarantee to 1e-6. Certificates stay sound either way (`certify` adds the
    weights' error bound to its tolerance).

    Fitted attributes: labels_, num_classes_, n_train_, eig_lower_ (converged: the lower bound on
    the smallest eigenvalue of Θ + λI), weight_error_factor_: the bound on sum_j |W_ij - W*_ij| that
    `label_weights(..., return_error=True)` returns is this factor times ||W_i||_2 (converged: the
    backward error of the Cholesky solve over the proven lower bound on the smallest eigenvalue) or
    times ||K_test_train_i||_2 (finite time: a first-order bound).
    """

    eig_lower_: float | None
    _cho: tuple[np.ndarray, bool] | None  # converged: the Cholesky factor of K + ridge I (`cho_factor`)
    _M: np.ndarray | None  # finite time: the (n, n) matrix A^-1 (I - exp(-η t A)), W = K_test_train @ _M
    _dM: float  # finite time: the bound on ||dM||_2 behind weight_error_factor_

    def __init__(self, ridge: float = 0.0, train_time: float | None = None, learning_rate: float = 1.0) -> None:
        self.ridge = ridge
        self.train_time = train_time
        self.learning_rate = learning_rate

    def fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int) -> "KernelRegression":
        """Fit on the (n, n) training Gram and integer labels (n,) in 0..num_classes-1; returns self.

        num_classes: the task's number of classes (required).
        """
        return self._fit(K_train, y, num_classes, None)

    def _fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int, shared: _SharedGram | None
             ) -> "KernelRegression":
        self._fitted = False  # a failed re-fit must not leave a half-updated model usable
        ridge = check_positive("ridge", self.ridge, allow_zero=True)
        train_time = self.train_time
        if train_time is not None:
            train_time = check_positive("train_time", train_time, allow_inf=True)
            if np.isinf(train_time):
                train_time = None
        learning_rate = check_positive("learning_rate", self.learning_rate)
        gram, y, num_classes = self._fit_inputs(K_train, y, num_classes, shared)
        K = gram.K
        n = K.shape[0]
        self._cho = None
        self._M = None
        if train_time is None:
            hint = "pass ridge > 0 (e.g. ridge=1e-6 * mean(diag(K_train)))" if ridge == 0 else "increase ridge"
            cho, lam, back = gram.once(("cholesky", ridge), lambda: _ridge_cholesky(K, ridge, hint))
            if not lam > 0:
                safe = ridge + back * np.sqrt(n) / _SAFE_RELATIVE_ERROR
                raise ValueError(
                    f"K_train + ridge*I (ridge={ridge}) is numerically singular: no positive lower bound on its "
                    f"smallest eigenvalue can be proven in float64, so the solve's error cannot be bounded; "
                    f"{hint} (ridge >= {safe:.3g} keeps the label weights accurate to {_SAFE_RELATIVE_ERROR:g})"
                )
            # ||W_i - W*_i||_1 <= sqrt(n) ||A^-1||_2 ||dA||_2 ||W_i||_2
            factor = float(np.sqrt(n) * back / lam * (1.0 + 8 * _EPS))
            if factor > _WARN_RELATIVE_ERROR:
                safe = ridge + max(0.0, np.sqrt(n) * back / _SAFE_RELATIVE_ERROR - lam)
                warnings.warn(
                    f"K_train + ridge*I (ridge={ridge}) is ill-conditioned: the label weights are only guaranteed to "
                    f"a relative accuracy of {factor:.2g} (smallest eigenvalue >= {lam:.3g}). Certificates account for "
                    f"it (rows within that margin are not exact); ridge >= {safe:.3g} would bring it below "
                    f"{_SAFE_RELATIVE_ERROR:g}", RuntimeWarning, stacklevel=3)
            self._cho = cho
            self.eig_lower_ = lam
        else:
            # Eigendecomposition: A^-1 (I - exp(-c A)) = V diag(phi(e)) V', phi(e) = -expm1(-c e) / e,
            # phi(0) = c, well defined for singular A (docs/math.md §2, finite training time).
            A = K + ridge * np.eye(n)
            e, V = gram.once(("eigh", ridge), lambda: scipy.linalg.eigh(A, check_finite=False))
            tol = _psd_tolerance(K)
            if e[0] - ridge < -tol:
                raise ValueError(
                    f"K_train is not positive semidefinite (smallest eigenvalue {e[0] - ridge:.3g}); "
                    "kernel Gram matrices must be PSD"
                )
            c = learning_rate * train_time
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                phi = np.where(np.abs(c * e) > 1e-300, -np.expm1(-c * e) / np.where(e == 0, 1.0, e), c)
            self._M = (V * phi[None, :]) @ V.T
            self._M = 0.5 * (self._M + self._M.T)
            # first-order error of M: eigh is backward stable (||E|| <= p(n) eps ||A||), phi has
            # |phi'| <= c^2 / 2 and |phi| <= c on the spectrum, the products add n eps ||M||_F; the
            # constant 8 n stands for p(n). Row error: sqrt(n) ||k_i||_2 ||dM||_2, see _weight_error.
            normA = float(np.linalg.norm(A))
            dM = 8.0 * n * _EPS * (c + 0.5 * c * c * normA) + _gamma(n + 2) * float(np.linalg.norm(self._M))
            self.eig_lower_ = None
            self._dM = dM
        self.weight_error_factor_ = factor if train_time is None else float(np.sqrt(n) * self._dM)
        self._finish_fit(y, num_classes, n)
        return self

    def _weights_block(self, Kb: np.ndarray) -> np.ndarray:
        if self._cho is not None:
            return scipy.linalg.cho_solve(self._cho, Kb.T, check_finite=False).T
        assert self._M is not None  # a fit sets exactly one of _cho (converged) and _M (finite time)
        return Kb @ self._M

    def _weights(self, Kt: np.ndarray, block_size: int | None) -> np.ndarray:
        """W = Kt A^-1 (converged) or Kt A^-1 (I - exp(-η t A)) (t, n), streamed over row blocks."""
        W = np.empty((Kt.shape[0], self.n_train_), dtype=np.float64)
        for sl in _blocks(Kt.shape[0], self.n_train_, block_size):
            W[sl] = self._weights_block(Kt[sl])
        return W

    def _weight_error(self, Kt: np.ndarray, W: np.ndarray) -> np.ndarray:
        """weight_error_factor_ * ||W_i||_2 (converged) or * ||Kt_i||_2 (finite time), rounded up."""
        base = np.linalg.norm(W, axis=1) if self._cho is not None else np.linalg.norm(Kt, axis=1)
        return self.weight_error_factor_ * base * (1.0 + (self.n_train_ + 4) * _EPS)

    def decision_function(self, K_test_train: ArrayLike, *, block_size: int | None = None) -> np.ndarray:
        """Class scores S (t, K) = W @ onehot(y) (regression outputs on one-hot targets)."""
        Kt = self._check_test(K_test_train)
        S = np.empty((Kt.shape[0], self.num_classes_), dtype=np.float64)
        for sl in _blocks(Kt.shape[0], self.n_train_, block_size):
            S[sl] = self._weights_block(Kt[sl]) @ self._Y
        return S

    def predict(self, K_test_train: ArrayLike, *, block_size: int | None = None) -> np.ndarray:
        """Predicted classes (t,) int64: `label_linear_prediction(W, y, K)` (exact argmax of the scores
        of the label weights, ties to the smaller index) = `certify(...).prediction`."""
        return label_linear_prediction(self.label_weights(K_test_train, block_size=block_size), self.labels_,
                                       self.num_classes_, block_size=block_size)


class KernelSVM(_KernelLearner):
    """Soft-margin kernel SVM without bias, one-vs-rest: an infinite-width network with hinge loss (docs/math.md §2).

    Class k solves `max_a 1'a - 1/2 a' diag(y^k) K diag(y^k) a, 0 <= a <= C` with y^k_j = +1 if
    label j is k else -1, and outputs `f_k(x) = sum_j a_j y^k_j K(x, x_j)`. For K = 2 the same
    one-vs-rest convention is used; both binary problems share one dual solution, so `alpha_` has
    one row and f_1 = -f_0.

    `C_max_ = 1 / max_i sum_j |K_ij|` (set by fit, rounded down by a rigorous rounding margin of
    relative size ~n·1e-16; `C_max` is a read-only alias). `C=None` uses C = C_max_. For
    C <= C_max_, alpha = C·1 for every labelling, so `f_k = C sum_j y^k_j K(x, x_j) = 2C·S_k -
    C·sum_j K(x, x_j)` with `S_k = sum_j K(x, x_j)[y_j == k]`: the model is label-linear and
    `label_weights` returns `W = K_test_train`, a positive multiple (1/2C) of the true label
    weights up to class-independent terms (exact: no solve, error 0). For C > C_max_ the dual QP
    is solved per class (primal-dual active-set iterations, with Clarabel through cvxpy as
    fallback; accepted at a KKT point, `kkt_residual_`); predictions work but `label_weights` and
    `certify` raise: the exact certificate there is the LabelCert MILP,
    `kernelcert.exact.labelcert_svm_milp(K_train, y, K_test_train, C, num_classes)` (small n only).

    Fitted attributes: C_, C_max_, label_linear_, alpha_ (problems, n), kkt_residual_, labels_,
    num_classes_, n_train_.
    """

    def __init__(self, C: float | None = None) -> None:
        self.C = C

    @property
    def C_max(self) -> float:
        """Read-only alias of the fitted `C_max_`."""
        self._require_fit()
        return self.C_max_

    @property
    def is_label_linear(self) -> bool:
        """True when C_ <= C_max_ (alpha = C for every labelling)."""
        self._require_fit()
        return self.label_linear_

    def fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int) -> "KernelSVM":
        """Fit on the (n, n) PSD training Gram and labels (n,) in 0..num_classes-1; returns self.

        num_classes: the task's number of classes (required).
        """
        return self._fit(K_train, y, num_classes, None)

    def _fit(self, K_train: ArrayLike, y: ArrayLike, num_classes: int, shared: _SharedGram | None) -> "KernelSVM":
        self._fitted = False  # a failed re-fit must not leave a half-updated model usable
        C = None if self.C is None else check_positive("C", self.C)
        gram, y, num_classes = self._fit_inputs(K_train, y, num_classes, shared)
        K = gram.K
        gram.once(("psd",), lambda: _check_psd(K, "K_train"))
        n = K.shape[0]
        c_max = gram.once(("c_max",), lambda: _safe_c_max(np.abs(K).sum(axis=1)))
        if not np.isfinite(c_max):
            raise ValueError("K_train is all zeros: C_max is infinite and the SVM is degenerate")
        self.C_max_ = c_max
        self.C_ = c_max if C is None else C
        self.label_linear_ = self.C_ <= self.C_max_
        num_problems = 1 if num_classes == 2 else num_classes
        self._ypm = np.stack([np.where(y == k, 1.0, -1.0) for k in range(num_problems)])
        if self.label_linear_:
            self.alpha_ = np.full((num_problems, n), self.C_)
            self.kkt_residual_ = 0.0
        else:
            alpha = np.empty((num_problems, n))
            resid = 0.0
            for k in range(num_problems):
                alpha[k], r = solve_svm_dual(K, self._ypm[k], self.C_, return_residual=True)
                resid = max(resid, r)
            self.alpha_ = alpha
            self.kkt_residual_ = resid
            if resid > 1e-6:
                warnings.warn(f"the SVM dual was solved only to a KKT residual of {resid:.2g}", RuntimeWarning,
                              stacklevel=3)
        self._finish_fit(y, num_classes, n)
        return self

    def _not_linear_error(self) -> ValueError:
        return ValueError(
            f"C={self.C_:.6g} exceeds C_max={self.C_max_:.6g} = 1/max_i sum_j |K_ij|: the SVM is not linear in the "
            "labels, so it has no label weights and ScaLabelCert does not apply; use C <= C_max (C=None for C_max), "
            "or the exact LabelCert MILP kernelcert.exact.labelcert_svm_milp(K_train, y, K_test_train, C, "
            "num_classes) on small problems"
        )

    def _weights(self, Kt: np.ndarray, block_size: int | None) -> np.ndarray:
        """W = a copy of Kt (t, n) (label-linear regime only; a positive multiple of the label weights)."""
        if not self.is_label_linear:
            raise self._not_linear_error()
        return np.array(Kt, dtype=np.float64, copy=True)

    def _weight_error(self, Kt: np.ndarray, W: np.ndarray) -> np.ndarray:
        """err = 0 (t,): the weights are the kernel values themselves."""
        return np.zeros(W.shape[0])

    def decision_function(self, K_test_train: ArrayLike, *, block_size: int | None = None) -> np.ndarray:
        """One-vs-rest SVM outputs f (t, K): f_k(x) = sum_j alpha_kj y^k_j K(x, x_j)."""
        Kt = self._check_test(K_test_train)
        coef = (self.alpha_ * self._ypm).T  # (n, num_problems)
        F = np.empty((Kt.shape[0], self.num_classes_), dtype=np.float64)
        for sl in _blocks(Kt.shape[0], self.n_train_, block_size):
            f = Kt[sl] @ coef
            F[sl] = np.concatenate([f, -f], axis=1) if self.num_classes_ == 2 else f
        return F

    def predict(self, K_test_train: ArrayLike, *, block_size: int | None = None) -> np.ndarray:
        """Predicted classes (t,) int64, ties to the smaller index.

        In the label-linear regime `label_linear_prediction(K_test_train, y, K)` (the certified rule,
        exact argmax); otherwise argmax of `decision_function`.
        """
        Kt = self._check_test(K_test_train)
        if self.is_label_linear:
            return label_linear_prediction(Kt, self.labels_, self.num_classes_, block_size=block_size)
        out = np.empty(Kt.shape[0], dtype=np.int64)
        for sl in _blocks(Kt.shape[0], self.n_train_, block_size):
            out[sl] = np.argmax(self.decision_function(Kt[sl]), axis=1)
        return out

    def certify(self, K_test_train: ArrayLike, **kw: Any) -> Certificate:
        """ScaLabelCert certificate (needs C <= C_max_): `certificates.certify(K_test_train, y, K, **kw)`.

        Above C_max_ the SVM is not label-linear: this raises ValueError; use the exact LabelCert MILP
        `kernelcert.exact.labelcert_svm_milp` (small n).
        """
        self._require_fit()
        if not self.is_label_linear:
            raise self._not_linear_error()
        return super().certify(K_test_train, **kw)


def fit_learners(learners: Sequence[_KernelLearnerT], K_train: ArrayLike, y: ArrayLike, num_classes: int) -> list[_KernelLearnerT]:
    """Fit every learner on the same (n, n) training Gram and labels; returns them (fitted in place).

    The same models as `[m.fit(K_train, y, num_classes) for m in learners]`, bit for bit, with the
    Gram validated and symmetrised once and every factorisation computed once for all of them:
    the SVMs' positive-semidefiniteness check and C_max, the regressions' Cholesky factor (and
    eigenvalue bound) per ridge, and their eigendecomposition per ridge for finite training times.
    (A regression and an SVM factorise different matrices, K + ridge I and the SVM's check of
    K + tol I, so they share the validation only.) A Gram that fails validation raises before
    any learner's own parameters are checked.
    """
    learners = list(learners)
    for m in learners:
        if not isinstance(m, _KernelLearner):
            raise TypeError(f"learners must be KernelRegression / KernelSVM instances, got {type(m).__name__}")
    if num_classes is None:
        raise ValueError("num_classes is required: pass the task's number of classes (a training set may lack "
                         "some of them, and the attacker may relabel to any)")
    shared = _SharedGram(K_train)
    for m in learners:
        m._fit(K_train, y, num_classes, shared)
    return learners


# --------------------------------------------------------------------------- dual QP (C > C_max)
@overload
def solve_svm_dual(K: ArrayLike, signs: ArrayLike, C: float, *, return_residual: Literal[False] = ...
                   ) -> np.ndarray: ...


@overload
def solve_svm_dual(K: ArrayLike, signs: ArrayLike, C: float, *, return_residual: Literal[True]
                   ) -> tuple[np.ndarray, float]: ...


@overload
def solve_svm_dual(K: ArrayLike, signs: ArrayLike, C: float, *, return_residual: bool = ...
                   ) -> np.ndarray | tuple[np.ndarray, float]: ...


def solve_svm_dual(K: ArrayLike, signs: ArrayLike, C: float, *, return_residual: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, float]:
    """Optimal dual variables alpha (n,) of `max 1'a - 1/2 a' diag(s) K diag(s) a, 0 <= a <= C` (no bias).

    `signs` (n,) in {-1, +1}. With return_residual=True also returns the projected-gradient KKT
    residual of the scaled problem (0 up to rounding when the exact polish succeeded).

    Scaled variables b = a / C in [0, 1] minimise `(1/2) b'Hb - 1'b`, H = C diag(s) K diag(s).
    Primal-dual active-set iterations from b = 1 are tried first; if they do not reach a KKT point,
    an interior-point solve (Clarabel) finds the active set and `_polish_box_qp` then solves the
    KKT system on that active set exactly and keeps the result only if it satisfies every KKT
    condition (otherwise the interior-point solution is returned).
    """
    K = as_float_array("K", K, ndim=2)
    ypm = as_float_array("signs", signs, ndim=1)
    if K.shape[0] != K.shape[1] or K.shape[0] != ypm.shape[0]:
        raise ValueError(f"K must be (n, n) and signs (n,), got {K.shape} and {ypm.shape}")
    if not np.all(np.abs(ypm) == 1.0):
        raise ValueError("signs must be -1 or +1")
    C = check_positive("C", C)
    n = K.shape[0]
    H = C * (ypm[:, None] * K * ypm[None, :])
    H = 0.5 * (H + H.T)
    # Fast path: active-set iterations from alpha = C (optimal in the small-C regime); accepted only
    # when every KKT condition holds, so the result is the optimum of this convex problem.
    sol = _polish_box_qp(H, np.ones(n))
    if sol is not None:
        return (C * sol, _kkt_residual(H, sol)) if return_residual else C * sol
    import cvxpy as cp

    b = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(b, cp.psd_wrap(H)) - cp.sum(b)), [b >= 0, b <= 1])
    try:
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
    except cp.error.SolverError:
        prob.solve(solver=cp.OSQP, eps_abs=1e-10, eps_rel=1e-10, max_iter=200000, polish=True)
    if b.value is None:
        raise RuntimeError(f"the SVM dual QP could not be solved (status {prob.status})")
    b0 = np.clip(np.asarray(b.value, dtype=np.float64), 0.0, 1.0)
    polished = _polish_box_qp(H, b0)
    sol = polished if polished is not None else b0
    if return_residual:
        return C * sol, _kkt_residual(H, sol)
    return C * sol


def _kkt_residual(H: np.ndarray, b: np.ndarray) -> float:
    """Projected-gradient norm of min (1/2) b'Hb - 1'b over [0, 1]^n (0 exactly at the optimum)."""
    grad = H @ b - 1.0
    return float(np.max(np.abs(b - np.clip(b - grad, 0.0, 1.0)))) if b.size else 0.0


def _polish_box_qp(H: np.ndarray, b0: np.ndarray, max_iter: int = 50) -> np.ndarray | None:
    """Exact solution of min (1/2) b'Hb - 1'b on [0, 1]^n from an approximate one, or None.

    Guess the active set from b0, solve the stationarity equations on the free set, and repair the
    guess (primal-dual active-set steps) until all KKT conditions hold within 1e-9 relative.
    """
    n = b0.shape[0]
    tau = 1e-9 * (1.0 + float(np.max(np.abs(H).sum(axis=1))))
    act = 1e-7
    lower = b0 <= act
    upper = b0 >= 1.0 - act
    for _ in range(max_iter):
        free = ~(lower | upper)
        b = np.where(upper, 1.0, 0.0)
        if free.any():
            rhs = 1.0 - H[np.ix_(free, upper)].sum(axis=1)
            HF = H[np.ix_(free, free)]
            sol = np.linalg.lstsq(HF, rhs, rcond=None)[0]
            if np.max(np.abs(HF @ sol - rhs)) > tau:
                return None  # free-set system inconsistent: the guess is wrong and cannot be repaired here
            b[free] = sol
        grad = H @ b - 1.0
        below = free & (b < -1e-12)
        above = free & (b > 1.0 + 1e-12)
        leave_lower = lower & (grad < -tau)
        leave_upper = upper & (grad > tau)
        if not (below.any() or above.any() or leave_lower.any() or leave_upper.any()):
            return np.clip(b, 0.0, 1.0)
        lower = (lower & ~leave_lower) | below
        upper = (upper & ~leave_upper) | above
    return None


__all__ = ["KernelRegression", "KernelSVM", "fit_learners", "onehot", "solve_svm_dual"]
