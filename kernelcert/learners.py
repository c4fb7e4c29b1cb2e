"""Label-linear kernel learners: infinite-width networks trained to convergence (SPEC §2).

Both learners take precomputed kernel matrices (NTK or NNGP): `K_train` (n, n) for fitting and
`K_test_train` (t, n) = Θ(x_test, X_train) for prediction. Their class scores are
`s_k(x) = sum_j W[x, j] [y_j == k]` (+ terms that do not depend on k) with label weights
`W = label_weights(K_test_train)`, which is what ScaLabelCert certifies (SPEC §3).
Predictions are argmax over classes with ties to the smaller index, computed from `W @ onehot(y)`
so that they coincide with the prediction the certificate is about.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from ._validation import (
    as_float_array,
    check_columns,
    check_gram,
    check_labels,
    check_positive,
    check_same_length,
)

_EPS = np.finfo(np.float64).eps
_BLOCK_BYTES = 64 * 2**20
_MILP_MAX_N = 2000  # the SVM keeps its Gram for the exact MILP path only up to this size


def onehot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) float64 one-hot encoding of integer labels."""
    return (y[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)


def _row_blocks(t: int, n: int, block_size: int | None):
    """Slices over t rows so that one (block, n) float64 block stays near 64 MiB."""
    if block_size is None:
        block_size = max(1, _BLOCK_BYTES // (8 * max(n, 1)))
    block_size = max(1, int(block_size))
    for start in range(0, t, block_size):
        yield slice(start, min(t, start + block_size))


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
    SPEC §2 true in exact arithmetic (the margin is ~n·1e-16 relative).
    """
    n = row_abs_sums.shape[0]
    m = float(np.max(row_abs_sums))
    if m <= 0.0:
        return float("inf")
    m_up = m * (1.0 + (n + 2) * _EPS)
    return float(np.nextafter(1.0 / m_up, 0.0))


class _Fitted:
    """Shared bookkeeping: fitted-state checks and test-matrix validation."""

    def _require_fit(self) -> None:
        if not getattr(self, "_fitted", False):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit(K_train, y) first")

    def _check_test(self, K_test_train) -> np.ndarray:
        self._require_fit()
        Kt = as_float_array("K_test_train", K_test_train, ndim=2)
        check_columns("K_test_train", Kt, self.n_train_)
        return Kt

    def _fit_inputs(self, K_train, y, num_classes):
        self._fitted = False  # a failed re-fit must not leave a half-updated model usable
        K = check_gram(K_train, name="K_train")
        y, num_classes = check_labels(y, num_classes, name="y")
        check_same_length(K_train=K, y=y)
        K = 0.5 * (K + K.T)  # exact symmetry (check_gram allowed a 1e-8 relative asymmetry)
        return K, y, num_classes


class KernelRegression(_Fitted):
    """Kernel (ridge) regression on one-hot targets: an infinite-width network trained with squared loss.

    Converged (`train_time=None`): `S(x) = Θ(x, X) (Θ + λI)^-1 Y`. Finite time t with learning rate η
    (gradient flow, SPEC §2): `S_t(x) = Θ(x, X) A^-1 (I - exp(-η t A)) Y` with `A = Θ + λI`.
    Label weights `W = Θ(x, X) A^-1` (converged) or `Θ(x, X) A^-1 (I - exp(-η t A))`, shape (t, n);
    class scores are exactly `W @ onehot(y)`.

    Parameters: ridge λ >= 0; train_time t > 0 or None/inf (converged); learning_rate η > 0.
    With λ = 0 and no finite time the training Gram must be numerically positive definite; a
    singular or indefinite one raises ValueError (use a ridge).
    """

    def __init__(self, ridge: float = 0.0, train_time: float | None = None, learning_rate: float = 1.0):
        self.ridge = check_positive("ridge", ridge, allow_zero=True)
        if train_time is not None:
            train_time = check_positive("train_time", train_time, allow_inf=True)
            if np.isinf(train_time):
                train_time = None
        self.train_time = train_time
        self.learning_rate = check_positive("learning_rate", learning_rate)
        self._fitted = False

    def fit(self, K_train, y, num_classes: int | None = None) -> "KernelRegression":
        """Fit on the (n, n) training Gram and integer labels (n,) in 0..num_classes-1; returns self."""
        K, y, num_classes = self._fit_inputs(K_train, y, num_classes)
        n = K.shape[0]
        A = K + self.ridge * np.eye(n)
        self._cho = None
        self._M = None
        if self.train_time is None:
            hint = "pass ridge > 0 (e.g. ridge=1e-6 * mean(diag(K_train)))" if self.ridge == 0 else "increase ridge"
            try:
                cho = scipy.linalg.cho_factor(A, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                raise ValueError(
                    f"K_train + ridge*I (ridge={self.ridge}) is singular or not positive definite, "
                    f"so converged kernel regression is not defined; {hint}"
                ) from None
            anorm = float(np.max(np.abs(A).sum(axis=0)))
            rcond, info = scipy.linalg.lapack.dpocon(cho[0], anorm, uplo="L")
            if info != 0 or not rcond > n * _EPS:
                raise ValueError(
                    f"K_train + ridge*I (ridge={self.ridge}) is numerically singular "
                    f"(reciprocal condition number {rcond:.2g}); {hint}"
                )
            self._cho = cho
        else:
            # Eigendecomposition: A^-1 (I - exp(-c A)) = V diag(phi(e)) V', phi(e) = -expm1(-c e) / e,
            # phi(0) = c, well defined for singular A (SPEC §2, finite training time).
            e, V = scipy.linalg.eigh(A, check_finite=False)
            tol = _psd_tolerance(K)
            if e[0] - self.ridge < -tol:
                raise ValueError(
                    f"K_train is not positive semidefinite (smallest eigenvalue {e[0] - self.ridge:.3g}); "
                    "kernel Gram matrices must be PSD"
                )
            c = self.learning_rate * self.train_time
            with np.errstate(divide="ignore", invalid="ignore"):
                phi = np.where(np.abs(c * e) > 1e-300, -np.expm1(-c * e) / np.where(e == 0, 1.0, e), c)
            self._M = (V * phi[None, :]) @ V.T
            self._M = 0.5 * (self._M + self._M.T)
        self.labels_ = y
        self.num_classes_ = num_classes
        self.n_train_ = n
        self._Y = onehot(y, num_classes)
        self._fitted = True
        return self

    def _weights_block(self, Kb: np.ndarray) -> np.ndarray:
        if self._cho is not None:
            return scipy.linalg.cho_solve(self._cho, Kb.T, check_finite=False).T
        return Kb @ self._M

    def label_weights(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """Label weights W (t, n), float64; class scores are `W @ onehot(y)` (streamed over row blocks)."""
        Kt = self._check_test(K_test_train)
        W = np.empty((Kt.shape[0], self.n_train_), dtype=np.float64)
        for sl in _row_blocks(Kt.shape[0], self.n_train_, block_size):
            W[sl] = self._weights_block(Kt[sl])
        return W

    def decision_function(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """Class scores S (t, K) = W @ onehot(y) (regression outputs on one-hot targets)."""
        Kt = self._check_test(K_test_train)
        S = np.empty((Kt.shape[0], self.num_classes_), dtype=np.float64)
        for sl in _row_blocks(Kt.shape[0], self.n_train_, block_size):
            S[sl] = self._weights_block(Kt[sl]) @ self._Y
        return S

    def predict(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """Predicted classes (t,) int64: argmax of the scores, ties to the smaller index."""
        return np.argmax(self.decision_function(K_test_train, block_size=block_size), axis=1).astype(np.int64)

    def certify(self, K_test_train, **kw):
        """ScaLabelCert certificate: `certificates.certify(self.label_weights(K), y, K, **kw)`."""
        from .certificates import certify

        return certify(self.label_weights(K_test_train), self.labels_, self.num_classes_, **kw)


class KernelSVM(_Fitted):
    """Soft-margin kernel SVM without bias, one-vs-rest: an infinite-width network with hinge loss (SPEC §2).

    Class k solves `max_a 1'a - 1/2 a' diag(y^k) K diag(y^k) a, 0 <= a <= C` with y^k_j = +1 if
    label j is k else -1, and outputs `f_k(x) = sum_j a_j y^k_j K(x, x_j)`. For K = 2 the same
    one-vs-rest convention is used; both binary problems share one dual solution, so `alpha_` has
    one row and f_1 = -f_0.

    `C_max = 1 / max_i sum_j |K_ij|` (set by fit, rounded down by a rigorous rounding margin of
    relative size ~n·1e-16). `C=None` uses C = C_max. For C <= C_max, alpha = C·1 for every
    labelling, so `f_k = C sum_j y^k_j K(x, x_j) = 2C·S_k - C·sum_j K(x, x_j)` with
    `S_k = sum_j K(x, x_j)[y_j == k]`: the model is label-linear and `label_weights` returns
    `W = K_test_train`, a positive multiple (1/2C) of the true label weights up to class-independent
    terms. For C > C_max the dual QP is solved per class (primal-dual active-set iterations, with
    Clarabel through cvxpy as fallback; accepted at a KKT point, `kkt_residual_`); predictions work
    but `label_weights` raises, and `certify` needs `method="milp"` (exact LabelCert MILP; small n
    only, so the model keeps the training Gram as `K_train_` only when n <= 2000).
    """

    def __init__(self, C: float | None = None):
        self.C = None if C is None else check_positive("C", C)
        self._fitted = False

    @property
    def is_label_linear(self) -> bool:
        """True when C_ <= C_max (alpha = C for every labelling)."""
        self._require_fit()
        return self.label_linear_

    def fit(self, K_train, y, num_classes: int | None = None) -> "KernelSVM":
        """Fit on the (n, n) PSD training Gram and labels (n,) in 0..num_classes-1; returns self."""
        K, y, num_classes = self._fit_inputs(K_train, y, num_classes)
        _check_psd(K, "K_train")
        n = K.shape[0]
        row_abs = np.abs(K).sum(axis=1)
        c_max = _safe_c_max(row_abs)
        if not np.isfinite(c_max):
            raise ValueError("K_train is all zeros: C_max is infinite and the SVM is degenerate")
        self.C_max = c_max
        self.C_ = c_max if self.C is None else self.C
        self.label_linear_ = self.C_ <= self.C_max
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
                              stacklevel=2)
        self.labels_ = y
        self.num_classes_ = num_classes
        self.n_train_ = n
        self.K_train_ = K if n <= _MILP_MAX_N else None
        self._Y = onehot(y, num_classes)
        self._fitted = True
        return self

    def _not_linear_error(self) -> ValueError:
        return ValueError(
            f"C={self.C_:.6g} exceeds C_max={self.C_max:.6g} = 1/max_i sum_j |K_ij|: the SVM is not linear in the "
            "labels, so it has no label weights and ScaLabelCert does not apply; use C <= C_max (C=None for C_max) "
            "or certify(..., method='milp') for the exact LabelCert MILP on small problems"
        )

    def label_weights(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """W = K_test_train (t, n) float64 (label-linear regime only; a positive multiple of the label weights)."""
        Kt = self._check_test(K_test_train)
        if not self.is_label_linear:
            raise self._not_linear_error()
        return np.array(Kt, dtype=np.float64, copy=True)

    def decision_function(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """One-vs-rest SVM outputs f (t, K): f_k(x) = sum_j alpha_kj y^k_j K(x, x_j)."""
        Kt = self._check_test(K_test_train)
        coef = (self.alpha_ * self._ypm).T  # (n, num_problems)
        F = np.empty((Kt.shape[0], self.num_classes_), dtype=np.float64)
        for sl in _row_blocks(Kt.shape[0], self.n_train_, block_size):
            f = Kt[sl] @ coef
            F[sl] = np.concatenate([f, -f], axis=1) if self.num_classes_ == 2 else f
        return F

    def predict(self, K_test_train, *, block_size: int | None = None) -> np.ndarray:
        """Predicted classes (t,) int64, ties to the smaller index.

        In the label-linear regime computed as argmax of `W @ onehot(y)` (the certified rule); otherwise
        argmax of `decision_function`.
        """
        Kt = self._check_test(K_test_train)
        out = np.empty(Kt.shape[0], dtype=np.int64)
        linear = self.is_label_linear
        for sl in _row_blocks(Kt.shape[0], self.n_train_, block_size):
            if linear:
                out[sl] = np.argmax(Kt[sl] @ self._Y, axis=1)
            else:
                out[sl] = np.argmax(self.decision_function(Kt[sl]), axis=1)
        return out

    def certify(self, K_test_train, *, method: str = "scalabelcert", **kw):
        """Certificate for every test row.

        method="scalabelcert" (default, needs C <= C_max): `certificates.certify(K_test_train, y, K, **kw)`.
        method="milp": exact LabelCert MILP at any C (`exact.labelcert_svm_milp`, small n only; `kw` may
        hold max_flips, time_limit); returns a `LabelCertResult`.
        """
        if method == "milp":
            self._require_fit()
            if self.K_train_ is None:
                raise ValueError(f"method='milp' is for small problems (n <= {_MILP_MAX_N}); this model has "
                                 f"n={self.n_train_}")
            from .exact import labelcert_svm_milp

            Kt = self._check_test(K_test_train)
            return labelcert_svm_milp(self.K_train_, self.labels_, Kt, self.C_, self.num_classes_, **kw)
        if method != "scalabelcert":
            raise ValueError(f"unknown method {method!r}; use 'scalabelcert' or 'milp'")
        from .certificates import certify

        return certify(self.label_weights(K_test_train), self.labels_, self.num_classes_, **kw)


# --------------------------------------------------------------------------- dual QP (C > C_max)
def solve_svm_dual(K, signs, C: float, *, return_residual: bool = False):
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


__all__ = ["KernelRegression", "KernelSVM", "onehot", "solve_svm_dual"]
