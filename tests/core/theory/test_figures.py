"""The numbers of Figures A.1-A.3 checked by value against closed forms, and the drawings checked
to show exactly those numbers (paper App. A.1-A.2)."""

import math

import numpy as np
import pytest

from core.theory.bounds import correlation_path, random_correlation_matrix
from core.theory.figures import (
    counterexamples,
    draw_a1,
    draw_a2,
    draw_a3,
    gap_curves,
    modulation_curves,
    rank_path,
    tradeoff_scatter,
)
from core.theory.kernels import relu_kernel


def _cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2))


def _pdf(x):
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _relu_zeta(t):
    """zeta of ReLU(z + t) (= of ReLU(a z + a t) for a > 0): 1 - Phi(t)^2 / Var."""
    var = (1 + t * t) * _cdf(t) + t * _pdf(t) - (t * _cdf(t) + _pdf(t)) ** 2
    return 1 - _cdf(t) ** 2 / var


def test_a1_gap_and_rank_ratio_of_relu_by_value():
    gaps = gap_curves(("relu",), points=21)["relu"]
    rho = np.linspace(-1, 1, 21)
    assert gaps["gap"] == pytest.approx(rho**2 - relu_kernel(rho) ** 2, abs=1e-14)
    zeta = 1 - math.pi / (2 * math.pi - 2)
    assert gaps["bound"] == pytest.approx(zeta * rho**2 * (1 - rho**2), abs=1e-12)
    path = rank_path(np.random.default_rng(0), ("relu",), n=6, steps=3)["relu"]
    target = random_correlation_matrix(6, np.random.default_rng(0))
    c = correlation_path(target, 1.0)
    k = relu_kernel(c)
    np.fill_diagonal(k, 1.0)
    assert path["ratio"][-1] == pytest.approx((c**2).sum() / (k**2).sum(), rel=1e-12)
    assert path["ratio"][0] == pytest.approx(1.0, abs=1e-12)  # C(0) = I
    fig = draw_a1({"relu": gaps}, {"relu": path})
    assert fig.axes[0].lines[0].get_ydata() == pytest.approx(gaps["gap"])
    assert fig.axes[1].lines[0].get_ydata() == pytest.approx(path["ratio"])


def test_a2_curves_by_value():
    curves = modulation_curves(points=5)
    relu, tanh = curves["relu"], curves["tanh"]
    assert relu["zeta"] == pytest.approx([_relu_zeta(b) for b in relu["b"]], abs=1e-9)
    assert relu["frozen"] == pytest.approx([_cdf(-b) for b in relu["b"]], abs=1e-9)
    expected = [
        2 * _cdf(-math.atanh(math.sqrt(1 - 1e-4 / a)) / a) if a > 1e-4 else 0.0 for a in tanh["a"]
    ]
    assert tanh["frozen"] == pytest.approx(expected, abs=1e-9)
    fig = draw_a2(curves)
    assert fig.axes[0].lines[1].get_ydata() == pytest.approx(relu["frozen"])
    assert fig.axes[1].lines[0].get_ydata() == pytest.approx(tanh["zeta"])


def test_a3_one_panel_per_activation_with_its_eps_and_the_relu_values():
    families = {
        "relu": ("outer", 1e-8, (-3.0, 1.0)),
        "silu": ("outer", 1e-8, (-15.0, -15.0)),
        "tanh": ("inner", 1e-4, (-1.0, 0.5)),
    }
    scatter = tradeoff_scatter(families, gains=3, biases=3)
    relu = scatter["relu"]
    t = relu["b"] / relu["a"]
    assert relu["frozen"] == pytest.approx([_cdf(-v) for v in t], abs=1e-9)
    assert relu["zeta"] == pytest.approx([_relu_zeta(v) for v in t], abs=1e-8)
    assert scatter["tanh"]["b"] == pytest.approx(scatter["tanh"]["a"] * np.repeat(
        [[-1.0, -0.25, 0.5]], 3, axis=0).reshape(-1))  # fmt: skip
    fig = draw_a3(scatter)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    for ax, (name, (_, eps, _)) in zip(visible, families.items()):
        assert ax.get_title().startswith(name) and f"ε = {eps:g}" in ax.get_title()
        shown = np.concatenate([c.get_offsets() for c in ax.collections])
        data = np.column_stack([scatter[name]["frozen"], scatter[name]["zeta"]])
        shown, data = shown[np.lexsort(shown.T)], data[np.lexsort(data.T)]
        assert np.allclose(shown, data, rtol=0, atol=1e-12)


def test_silu_decorrelates_almost_fully_while_almost_never_frozen():
    """The counterexample Fig. A.3 marks: SiLU(a z - 15) at a = 10^0.5."""
    scatter = tradeoff_scatter({"silu": ("outer", 1e-8, (-15.0, -15.0))}, gains=11, biases=1)
    s = scatter["silu"]
    hit = counterexamples(scatter)["silu"]
    assert s["a"][hit].size >= 1
    assert np.all(s["zeta"][hit] > 0.9) and np.all(s["frozen"][hit] < 0.2)
