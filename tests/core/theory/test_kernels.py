"""Hermite coefficients, kernels, decorrelation strength and frozen probability against closed forms
and independent quadrature (paper §3, App. A.1-A.2; reference values in docs/theory.md)."""

import math

import numpy as np
import pytest
import torch

from core.theory import KERNEL_ACTIVATIONS, kernels
from core.theory.gaussian import gauss_hermite, panel_rule

SMOOTH_AND_KINKED = ("relu", "tanh", "sigmoid", "gelu", "elu")


def _phi(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def test_zeta_closed_forms():
    assert kernels.decorrelation_strength("relu") == pytest.approx(
        1 - math.pi / (2 * math.pi - 2), abs=1e-6
    )
    assert kernels.decorrelation_strength("sign") == pytest.approx(1 - 2 / math.pi, abs=1e-6)
    assert kernels.decorrelation_strength("identity") == pytest.approx(0.0, abs=1e-12)
    assert kernels.decorrelation_strength("identity", a=-3.0, b=2.0) == pytest.approx(
        0.0, abs=1e-12
    )
    # a pure second Hermite polynomial is maximally decorrelating (c_1 = 0)
    assert kernels.decorrelation_strength(lambda x: x**2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "name, zeta",
    [("gelu", 0.2767), ("tanh", 0.0695), ("elu", 0.0633), ("sigmoid", 0.0158)],
)
def test_zeta_reference_values(name, zeta):
    """The reference table of docs/theory.md (4 decimals)."""
    assert kernels.decorrelation_strength(name) == pytest.approx(zeta, abs=6e-5)


@pytest.mark.parametrize("b", np.linspace(-3.0, 3.0, 13))
def test_zeta_of_biased_relu_closed_form(b):
    """ReLU(z + b): c_1 = Phi(b), E f = b Phi(b) + phi(b), E f^2 = (1 + b^2) Phi(b) + b phi(b)."""
    cdf, pdf = _cdf(b), _phi(b)
    var = (1 + b * b) * cdf + b * pdf - (b * cdf + pdf) ** 2
    assert kernels.decorrelation_strength("relu", 1.0, b) == pytest.approx(
        1 - cdf**2 / var, abs=1e-9
    )


@pytest.mark.parametrize("a", [0.1, 0.3, 0.7])
def test_zeta_in_the_exponential_regime_of_elu(a):
    """ELU(a z - 15) = -1 + e^-15 e^(a z): lognormal, zeta = 1 - a^2 / (e^(a^2) - 1); not frozen."""
    assert kernels.decorrelation_strength("elu", a, -15.0) == pytest.approx(
        1 - a * a / math.expm1(a * a), abs=1e-8
    )


def test_frozen_unit_has_zeta_one_and_no_normalised_form():
    assert kernels.decorrelation_strength("relu", 1.0, -20.0) == 1.0
    assert kernels.decorrelation_strength("tanh", 0.0, 0.5) == 1.0
    with pytest.raises(ValueError, match="constant"):
        kernels.normalised_activation("relu", 1.0, -20.0)


def test_unknown_activation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="relu, leaky_relu, tanh") as err:
        kernels.decorrelation_strength("rleu")
    assert all(name in str(err.value) for name in KERNEL_ACTIVATIONS)
    with pytest.raises(ValueError, match="auto, closed, interpolant, series, quadrature"):
        kernels.kernel("relu", method="exact")


def test_gauss_hermite_is_for_the_standard_normal_and_exact_on_polynomials():
    z, w = gauss_hermite(20)
    moments = [float(w @ z**k) for k in range(9)]
    assert moments == pytest.approx([1, 0, 1, 0, 3, 0, 15, 0, 105], abs=1e-10)
    h = kernels.hermite_functions(z, 12)
    assert (w * h.T) @ h == pytest.approx(torch.eye(13, dtype=torch.float64), abs=1e-10)
    # a quadratic activation is h_2 after normalisation: exactly one coefficient
    c = kernels.hermite_coefficients(lambda x: x**2, terms=8, rule=gauss_hermite(20))
    assert c == pytest.approx(torch.eye(9, dtype=torch.float64)[2], abs=1e-12)


def test_gauss_hermite_and_panel_rule_agree_on_smooth_activations():
    for name in ("tanh", "gelu", "sigmoid"):
        gh = kernels.hermite_coefficients(name, terms=20, rule=gauss_hermite(200))
        panel = kernels.hermite_coefficients(name, terms=20)
        assert gh == pytest.approx(panel, abs=1e-10)


def test_gauss_hermite_is_slow_across_a_kink():
    """Why the panel rule is the default: O(1/n) error for ReLU with Gauss-Hermite."""
    exact = 1 - math.pi / (2 * math.pi - 2)
    c = kernels.hermite_coefficients("relu", terms=1, rule=gauss_hermite(200))
    assert abs(1 - float(c[1]) ** 2 - exact) > 1e-4


@pytest.mark.parametrize("name", ("relu", "tanh", "gelu", "selu", "sign"))
def test_normalisation_and_parseval(name):
    z, w = panel_rule(1.0, 0.0, KERNEL_ACTIVATIONS[name].kinks)
    f = kernels.normalised_activation(name)(z)
    assert float(w @ f) == pytest.approx(0.0, abs=1e-12)
    assert float(w @ f**2) == pytest.approx(1.0, abs=1e-12)
    c = kernels.hermite_coefficients(name, terms=200)
    assert float(c[0]) == pytest.approx(0.0, abs=1e-12)
    # sum c_k^2 -> 1: the tail beyond 200 terms is O(K^-1/2) at a jump, O(K^-3/2) at a kink
    tail = 1 - float((c**2).sum())
    assert -1e-14 <= tail < {"sign": 0.04, "relu": 1e-4, "selu": 1e-4}.get(name, 1e-6)


def test_relu_kernel_matches_the_arc_cosine_closed_form():
    rho = np.linspace(-1.0, 1.0, 41)
    assert kernels.kernel_quadrature("relu", rho) == pytest.approx(
        kernels.relu_kernel(rho), abs=1e-6
    )
    assert kernels.kernel("relu")(rho) == pytest.approx(kernels.relu_kernel(rho), abs=0)
    assert float(kernels.relu_kernel(0.5)) == pytest.approx(
        0.426, abs=5e-4
    )  # the paper's spot check
    # the series converges to it, slowly (its error at rho = 1 is the tail, ~ K^-3/2)
    assert kernels.kernel("relu", method="series", terms=200)(rho) == pytest.approx(
        kernels.relu_kernel(rho), abs=1e-4
    )


def test_quadrature_is_exact_near_rho_one_where_the_inner_expectation_has_a_sharp_kink():
    """At sqrt(1 - rho^2) = 0.03 the smoothed kink is 0.03 wide in x (error 1e-7 without the extra
    outer panel edges)."""
    theta = np.array([0.0, 0.01, 0.03, 0.1, math.pi - 0.1, math.pi - 0.03, math.pi - 0.01])
    rho = np.cos(theta)
    assert kernels.kernel_quadrature("relu", rho) == pytest.approx(
        kernels.relu_kernel(rho), abs=1e-13
    )
    assert kernels.kernel_quadrature("sign", rho) == pytest.approx(
        kernels.sign_kernel(rho), abs=1e-13
    )


def test_sign_kernel_matches_the_arcsine_closed_form():
    rho = np.linspace(-1.0, 1.0, 21)
    assert kernels.kernel_quadrature("sign", rho) == pytest.approx(
        kernels.sign_kernel(rho), abs=1e-6
    )


@pytest.mark.parametrize("name", ("tanh", "gelu", "sigmoid"))
def test_series_matches_quadrature_for_smooth_activations(name):
    rho = np.linspace(-1.0, 1.0, 11)
    series = kernels.kernel(name, method="series", terms=64)(rho)
    assert series == pytest.approx(kernels.kernel_quadrature(name, rho), abs=1e-7)


GRID_RHO = np.array([-1.0, -0.999, -0.95, -0.6, 0.2, 0.85, 0.93, 0.9999, 1.0])
GRID_AB = [(1.0, 0.0), (1.6, -0.7)]


@pytest.mark.parametrize("a, b", GRID_AB)
@pytest.mark.parametrize("name", sorted(KERNEL_ACTIVATIONS))
def test_default_kernel_equals_the_quadrature_to_1e_10(name, a, b):
    """Every activation x scale x bias x rho, including rho near +-1 where kinks make kappa
    singular and the 64-term series is off by up to 1e-1."""
    assert kernels.kernel(name, a, b)(GRID_RHO) == pytest.approx(
        kernels.kernel_quadrature(name, GRID_RHO, a, b), abs=1e-10
    )


def _gaussian_conditional_kernel(f, conditional, mean, var, a, b, r):
    """kappa(r) = E[(f(aX+b) - m)(E[f(aY+b) | X] - m)] / v by scipy's adaptive quadrature."""
    from scipy.integrate import quad

    s = math.sqrt(1 - r * r)

    def integrand(x):
        return _phi(x) * (f(a * x + b) - mean) * (conditional(a * r * x + b, a * s) - mean)

    kink = -b / a
    value = sum(
        quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
        for lo, hi in [(-14.0, kink), (kink, 14.0)]
    )
    return value / var


@pytest.mark.parametrize("a, b", [(1.6, -0.7), (0.6, 0.9), (2.0, 0.0)])
def test_biased_relu_and_sign_kernels_against_scipy(a, b):
    """E[(W)+] = mu Phi(mu/sd) + sd phi(mu/sd), E[sign W] = 2 Phi(mu/sd) - 1 for W ~ N(mu, sd^2):
    the inner expectation in closed form, the outer one by scipy.integrate.quad."""
    t = b / a
    relu_mean = b * _cdf(t) + a * _phi(t)
    relu_var = (a * a + b * b) * _cdf(t) + a * b * _phi(t) - relu_mean**2
    sign_mean = 2 * _cdf(t) - 1
    cases = {
        "relu": (
            lambda w: max(w, 0.0),
            lambda mu, sd: mu * _cdf(mu / sd) + sd * _phi(mu / sd),
            relu_mean,
            relu_var,
        ),
        "sign": (
            lambda w: math.copysign(1.0, w),
            lambda mu, sd: 2 * _cdf(mu / sd) - 1,
            sign_mean,
            1 - sign_mean**2,
        ),
    }
    rho = [-0.99, -0.4, 0.3, 0.97]
    for name, (f, conditional, mean, var) in cases.items():
        expected = [_gaussian_conditional_kernel(f, conditional, mean, var, a, b, r) for r in rho]
        assert kernels.kernel(name, a, b)(rho) == pytest.approx(expected, abs=1e-10), name


@pytest.mark.parametrize("a", [0.5, 0.9])
def test_elu_in_its_exponential_regime_is_a_lognormal_kernel(a):
    """ELU(a z - 14) = -1 + e^-14 e^(a z) on all but 1e-50 of the mass: kappa(rho) =
    (e^(a^2 rho) - 1) / (e^(a^2) - 1), a closed form at a scale and bias far from (1, 0)."""
    rho = np.array([-1.0, -0.5, 0.0, 0.7, 1.0])
    expected = np.expm1(a * a * rho) / math.expm1(a * a)
    assert kernels.kernel("elu", a, -14.0)(rho) == pytest.approx(expected, abs=1e-10)


def test_gelu_tail_is_x_phi_x():
    x = torch.tensor([-8.0, -10.0, -20.0], dtype=torch.float64)
    expected = torch.tensor([v * _cdf(v) for v in (-8.0, -10.0, -20.0)], dtype=torch.float64)
    assert torch.allclose(KERNEL_ACTIVATIONS["gelu"](x), expected, rtol=1e-12, atol=0)


def test_the_frozen_threshold_is_relative_and_near_rounding():
    """ELU(0.3 z - 20): sd / rms ~ 6e-10 is resolved (zeta = 1 - a^2 / (e^(a^2) - 1) = 0.044);
    a constant is frozen."""
    a = 0.3
    assert kernels.decorrelation_strength("elu", a, -20.0) == pytest.approx(
        1 - a * a / math.expm1(a * a), abs=1e-5
    )
    assert kernels.decorrelation_strength("tanh", 0.0, 0.3) == 1.0


@pytest.mark.parametrize("name", SMOOTH_AND_KINKED + ("sign",))
def test_kernel_properties(name):
    """kappa(0) = 0, |kappa| <= |rho|, kappa'(0) = c_1^2 = 1 - zeta, kappa(1) = 1."""
    rho = np.linspace(-1.0, 1.0, 401)
    kappa = kernels.kernel(name)
    values = kappa(rho)
    assert float(kappa(0.0)) == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.abs(values) <= np.abs(rho) + 1e-12)
    h = 1e-5
    slope = (kappa(h) - kappa(-h)) / (2 * h)
    assert float(slope) == pytest.approx(1 - kernels.decorrelation_strength(name), abs=1e-5)
    exact = kernels.kernel_quadrature(name, [1.0])
    assert float(exact[0]) == pytest.approx(1.0, abs=1e-10)


def test_frozen_probability_closed_forms():
    for a, b in [(1.0, 0.0), (1.0, -1.0), (2.0, 1.5), (0.5, -2.0)]:
        assert kernels.frozen_probability("relu", a, b, 1e-8) == pytest.approx(
            _cdf(-b / a), abs=1e-9
        )
    # tanh(a z): |a (1 - tanh^2)| < eps  <=>  |a z| > atanh(sqrt(1 - eps / a))
    for a in (2.0, 5.0, 10.0, 100.0):
        t = math.atanh(math.sqrt(1 - 1e-4 / a)) / a
        assert kernels.frozen_probability("tanh", a, 0.0, 1e-4) == pytest.approx(
            2 * _cdf(-t), abs=1e-9
        )
    assert kernels.frozen_probability("identity") == 0.0
    assert kernels.frozen_probability("sign") == 1.0


def test_frozen_probability_reference_values():
    """The tanh(a z) table of docs/theory.md, eps = 1e-4."""
    table = {0.5: 0.0, 1.0: 0.0, 2.0: 0.005, 5.0: 0.22, 10.0: 0.52, 100.0: 0.94}
    for a, p in table.items():
        assert kernels.frozen_probability("tanh", a, 0.0, 1e-4) == pytest.approx(p, abs=5e-3)


def test_zeta_is_monotone_in_relu_bias_and_tanh_gain():
    """Fig. A.2: zeta rises as the ReLU bias falls and as the tanh gain grows, toward freezing."""
    biases = np.linspace(-3.0, 3.0, 61)
    zeta_b = np.array([kernels.decorrelation_strength("relu", 1.0, b) for b in biases])
    dead = np.array([kernels.frozen_probability("relu", 1.0, b, 1e-8) for b in biases])
    assert np.all(np.diff(zeta_b) < 0) and np.all(np.diff(dead) < 0)
    assert zeta_b[0] > 0.99 and dead[0] > 0.99
    gains = np.logspace(-1.0, 2.0, 61)
    zeta_a = np.array([kernels.decorrelation_strength("tanh", a, 0.0) for a in gains])
    frozen = np.array([kernels.frozen_probability("tanh", a, 0.0, 1e-4) for a in gains])
    assert np.all(np.diff(zeta_a) > 0) and np.all(np.diff(frozen) >= 0)
    assert zeta_a[-1] < 1 - 2 / math.pi + 1e-3  # tanh(a z) -> sign as a -> infinity
    assert frozen[-1] > 0.9
