import numpy as np
import pytest

from kernelcert.exact import brute_force_certificate, brute_force_retrain, labelcert_svm_milp
from kernelcert.learners import KernelRegression, KernelSVM


@pytest.mark.parametrize("seed", range(3))
def test_label_linear_brute_force_equals_retraining(gram_problem, seed):
    K, Kx, y = gram_problem(6, 4, 3, seed)
    model = KernelRegression(1e-3).fit(K, y, 3)
    a = brute_force_certificate(model.label_weights(Kx), y, 3)
    b = brute_force_retrain(lambda yy: KernelRegression(1e-3).fit(K, yy, 3).predict(Kx), y, 3)
    np.testing.assert_array_equal(a.radius, b.radius)
    np.testing.assert_array_equal(a.class_costs, b.class_costs)


@pytest.mark.parametrize("seed,scale", [(0, 1.0), (1, 1.0), (2, 20.0), (3, 20.0)])
def test_labelcert_matches_retraining(gram_problem, seed, scale):
    K, Kx, y = gram_problem(6, 3, 2 + seed % 2, seed)
    num_classes = 2 + seed % 2
    C = scale * KernelSVM().fit(K, y, num_classes).C_max
    lc = labelcert_svm_milp(K, y, Kx, C, num_classes, max_flips=3)
    bf = brute_force_retrain(lambda yy: KernelSVM(C).fit(K, yy, num_classes).predict(Kx), y, num_classes, max_flips=3)
    np.testing.assert_array_equal(lc.radius, bf.radius)
    if scale == 1.0:
        np.testing.assert_array_equal(np.minimum(KernelSVM(C).fit(K, y, num_classes).certify(Kx).radius, 3), lc.radius)
