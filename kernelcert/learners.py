"""Label-linear learners of infinite-width networks (SPEC §2): kernel regression and small-C kernel SVM.

Both expose `label_weights(K_test_train) -> W (t, n)` with class scores `W @ onehot(y)` (up to
class-independent terms and a positive factor), which is all ScaLabelCert needs.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ._validation import as_float_array, check_columns, check_gram, check_labels

_BLOCK_ROWS = 4096


def onehot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot matrix (n, K) float64."""
    out = np.zeros((len(y), num_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


class _LabelLinear:
    """Shared fit bookkeeping, prediction and certification for label-linear learners."""

    labels_: np.ndarray
    num_classes_: int

    def _fit_common(self, K_train, y, num_classes):
        K = check_gram("K_train", K_train)
        y, k = check_labels("y", y, num_classes)
        if len(y) != K.shape[0]:
            raise ValueError(f"y has {len(y)} labels but K_train is {K.shape[0]} x {K.shape[1]}")
        self.labels_, self.num_classes_, self.n_train_ = y, k, len(y)
        return K

    def _check_fitted(self):
        if not hasattr(self, "labels_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(K_train, y) first")

    def _test_rows(self, K_test_train):
        self._check_fitted()
        Kt = as_float_array("K_test_train", K_test_train, ndim=2)
        check_columns("K_test_train", Kt, self.n_train_)
        return Kt

    def decision_function(self, K_test_train) -> np.ndarray:
        """Class scores (t, K)."""
        return self.label_weights(K_test_train) @ onehot(self.labels_, self.num_classes_)

    def predict(self, K_test_train) -> np.ndarray:
        """Predicted classes (t,), ties to the smaller index."""
        return np.argmax(self.decision_function(K_test_train), axis=1)

    def certify(self, K_test_train, **kwargs):
        """ScaLabelCert certificate (kernelcert.certificates.certify) for the test rows."""
        from .certificates import certify

        return certify(self.label_weights(K_test_train), self.labels_, self.num_classes_, **kwargs)


class KernelRegression(_LabelLinear):
    """Kernel (ridge) regression on one-hot targets: gradient flow on the squared loss (SPEC §2).

    ridge λ >= 0; train_time=None means trained to convergence, W = K(x, X) (K + λI)^-1;
    a finite train_time t with learning_rate η gives W = K(x, X) (K+λI)^-1 (I - exp(-η t (K+λI))).
    """

    def __init__(self, ridge: float = 0.0, train_time: float | None = None, learning_rate: float = 1.0):
        if not (np.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a non-negative number, got {ridge}")
        if train_time is not None and not (np.isfinite(train_time) and train_time > 0):
            raise ValueError(f"train_time must be positive or None, got {train_time}")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.ridge, self.train_time, self.learning_rate = float(ridge), train_time, float(learning_rate)

    def fit(self, K_train, y, num_classes: int | None = None):
        K = self._fit_common(K_train, y, num_classes)
        A = K + self.ridge * np.eye(len(K))
        if self.train_time is None:
            try:
                self._chol = scipy.linalg.cho_factor(A, lower=True)
            except np.linalg.LinAlgError as exc:
                raise ValueError("K_train + ridge*I is singular or not positive definite; use ridge > 0 "
                                 f"(ridge={self.ridge})") from exc
            self._mix = None
        else:
            evals, evecs = np.linalg.eigh(A)
            # (1 - exp(-η t e)) / e -> η t as e -> 0: the finite-time solution exists for singular A
            ht = self.learning_rate * self.train_time
            safe = np.where(np.abs(evals) > 1e-300, evals, 1.0)
            factor = np.where(np.abs(evals) > 1e-300, -np.expm1(-ht * evals) / safe, ht)
            self._mix = (evecs * factor) @ evecs.T  # A^-1 (I - exp(-η t A)), symmetric
            self._chol = None
        return self

    def label_weights(self, K_test_train) -> np.ndarray:
        """W (t, n) with class scores W @ onehot(y); streamed over blocks of test rows."""
        Kt = self._test_rows(K_test_train)
        W = np.empty_like(Kt)
        for start in range(0, len(Kt), _BLOCK_ROWS):
            blk = Kt[start:start + _BLOCK_ROWS]
            if self._chol is not None:
                W[start:start + _BLOCK_ROWS] = scipy.linalg.cho_solve(self._chol, blk.T).T
            else:
                W[start:start + _BLOCK_ROWS] = blk @ self._mix
        return W


class KernelSVM(_LabelLinear):
    """Soft-margin kernel SVM without bias, one-vs-rest (class k: y_j = +1 iff label k), SPEC §2.

    C_max = 1 / max_i sum_j |K_ij| (set by fit). C=None means C = C_max. For C <= C_max the dual
    solution is alpha = C for every labelling, so f_k(x) = C sum_j y^k_j K(x, x_j)
    = 2C s_k(x) - C sum_j K(x, x_j): label-linear with W = K(test, train) (a positive multiple).
    For C > C_max the dual QP is solved (cvxpy, Clarabel) so predictions work, but label_weights and
    certify raise unless certify(..., method="milp") asks for the exact LabelCert MILP.
    """

    def __init__(self, C: float | None = None):
        if C is not None and not (np.isfinite(C) and C > 0):
            raise ValueError(f"C must be positive or None, got {C}")
        self.C = C

    def fit(self, K_train, y, num_classes: int | None = None):
        K = self._fit_common(K_train, y, num_classes)
        row = np.abs(K).sum(axis=1).max()
        self.C_max = float(1.0 / row) if row > 0 else np.inf
        self.C_ = self.C_max if self.C is None else float(self.C)
        self.label_linear_ = self.C_ <= self.C_max
        self._K = K
        if self.label_linear_:
            self.alpha_ = np.full((self.num_classes_, len(y)), self.C_)
        else:
            self.alpha_ = np.stack([solve_svm_dual(K, self._signs(k), self.C_) for k in range(self.num_classes_)])
        return self

    def _signs(self, k):
        return np.where(self.labels_ == k, 1.0, -1.0)

    def label_weights(self, K_test_train) -> np.ndarray:
        self._check_fitted()
        if not self.label_linear_:
            raise ValueError(f"C={self.C_:.6g} is above C_max={self.C_max:.6g}: the SVM is not linear in the labels; "
                             "use C <= C_max (or C=None) for ScaLabelCert, or certify(..., method='milp')")
        return self._test_rows(K_test_train).copy()

    def decision_function(self, K_test_train) -> np.ndarray:
        """One-vs-rest SVM outputs f_k (t, K)."""
        Kt = self._test_rows(K_test_train)
        signs = np.stack([self._signs(k) for k in range(self.num_classes_)])
        return Kt @ (self.alpha_ * signs).T

    def predict(self, K_test_train) -> np.ndarray:
        if getattr(self, "label_linear_", False):
            return _LabelLinear.decision_function(self, K_test_train).argmax(axis=1)
        return np.argmax(self.decision_function(K_test_train), axis=1)

    def certify(self, K_test_train, method: str = "scalabelcert", **kwargs):
        if method == "scalabelcert":
            return _LabelLinear.certify(self, K_test_train, **kwargs)
        if method == "milp":
            from .exact import labelcert_svm_milp

            return labelcert_svm_milp(self._K, self.labels_, self._test_rows(K_test_train), self.C_,
                                      self.num_classes_, **kwargs)
        raise ValueError(f"method must be 'scalabelcert' or 'milp', got {method!r}")


def solve_svm_dual(K: np.ndarray, signs: np.ndarray, C: float) -> np.ndarray:
    """alpha of max 1'a - 1/2 a' diag(s) K diag(s) a, 0 <= a <= C (no bias), via cvxpy + Clarabel."""
    import cvxpy as cp

    Q = K * np.outer(signs, signs)
    Q = 0.5 * (Q + Q.T)
    a = cp.Variable(len(signs))
    prob = cp.Problem(cp.Maximize(cp.sum(a) - 0.5 * cp.quad_form(a, cp.psd_wrap(Q))), [a >= 0, a <= C])
    prob.solve(solver=cp.CLARABEL)
    if a.value is None:
        raise ValueError(f"SVM dual QP failed ({prob.status})")
    return np.clip(np.asarray(a.value, np.float64), 0.0, C)
