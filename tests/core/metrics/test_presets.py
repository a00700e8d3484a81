"""The presets compute what their sources compute: the paper's numbers on a fixed matrix."""

import math

import pytest
import torch

from core.metrics import PRESETS
from core.metrics.probe import LayerView

# Columns a = (1,0,1,0), b = 0 (dead), c = (3,0,3,1); G is the gradient of the batch-mean loss.
H = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
G = torch.tensor([[1e-6, 0.0, 1e-3], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0], [1e-6, 0.0, 0.0]])


def _view(h, g, batch_size):
    return LayerView(h, g, batch_size, None, lambda k: None)


def _entropy_rank(weights):
    p = [w / sum(weights) for w in weights]
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


def _sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_paper_preset_reproduces_the_paper_formulas():
    view = _view(H, G, batch_size=4)
    got = {name: float(metric.compute(view)) for name, metric in PRESETS["paper"].items()}
    # §2.1: z = (0.5, 1, 0): only b has more than 95% of |h| < 1e-7.
    # §2.2: cos(a, c) = 6 / sqrt(2 * 19) = 0.973 > 0.95, lower index only: a.
    # §2.3: mu = (0.5, 1e-12, 1.75); r_a = 2e-6 and r_b = 0 on all rows, r_c > 1e-4 on 1 of 4.
    # §2.4: H^T H on (a, c) = [[2, 6], [6, 19]]: sigma^2 = (21 +- sqrt(433)) / 2, and sigma_b = 0.
    sigma = [math.sqrt((21 + math.sqrt(433)) / 2), math.sqrt((21 - math.sqrt(433)) / 2)]
    # §2.5: centred a_c = (.5,-.5,.5,-.5), c_c = (1.25,-1.75,1.25,-.75):
    # C = [[1, 2.5], [2.5, 6.75]],
    # (tr C)^2 / ||C||_F^2 = 7.75^2 / (1 + 2 * 6.25 + 6.75^2).
    # §2.8: Shapiro-Wilk, n = 4 (Royston's a_3, a_4); sorted a = (0,0,1,1): W = (a_3 + a_4)^2;
    # b constant: score 1; sorted c = (0,1,3,3): W = (2 a_3 + 3 a_4)^2 / 6.75.
    a3, a4 = 0.16633641006923108, 0.687264285908471
    w_a, w_c = (a3 + a4) ** 2, (2 * a3 + 3 * a4) ** 2 / 6.75
    # §2.9: unit means (.5, 0, 1.75); sample stds sqrt(1/3), 0, sqrt(6.75 / 3) = 1.5.
    stds = [math.sqrt(1 / 3), 0.0, 1.5]
    expected = {
        "dead_fraction": 1 / 3,
        "duplicate_fraction_cosine": 1 / 3,
        "saturated_fraction_batch_mean": 2 / 3,
        "effective_rank": _entropy_rank(sigma),
        "participation_ratio": 7.75**2 / (1 + 2 * 6.25 + 6.75**2),
        "non_gaussianity": ((1 - w_a) + 1 + (1 - w_c)) / 3,
        "mean_of_means": 0.75,
        "std_of_means": math.sqrt((0.25**2 + 0.75**2 + 1.0**2) / 2),
        "mean_of_stds": sum(stds) / 3,
        "std_of_stds": _sample_std(stds),
    }
    assert got == pytest.approx(expected, rel=1e-6)


def test_paper_source_names():
    sources = {name: metric.source for name, metric in PRESETS["paper"].items()}
    assert sources["participation_ratio"] == "stable_rank"  # what the paper's code calls it
    assert sources["duplicate_fraction_cosine"] == "dup_fraction"
    assert sources["saturated_fraction_batch_mean"] == "saturated_frac"
    assert PRESETS["dohare2024"]["approximate_rank_abs"].source.startswith("stable rank")
    for preset in ("default", "paper", "paper_bitflip"):
        for name in ("mean_of_means", "std_of_means", "mean_of_stds", "std_of_stds"):
            assert PRESETS[preset][name].source == name  # the paper code's own names (§2.9)


def test_default_saturation_equals_the_papers_at_its_probe_size():
    """Per-sample gradients with rel_tol 0.05 == batch-mean gradients with 1e-4 at N = 500."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 64, generator=g, dtype=torch.float64).relu()
    per_sample = torch.randn(500, 64, generator=g, dtype=torch.float64) * torch.logspace(
        -4, 0, 64, dtype=torch.float64
    )
    view = _view(h, per_sample / 500, batch_size=500)
    ours = float(PRESETS["default"]["saturated_fraction"].compute(view))
    papers = float(PRESETS["paper"]["saturated_fraction_batch_mean"].compute(view))
    assert 0 < ours < 1
    assert ours == papers


def test_dohare_preset_by_hand():
    view = _view(H, None, batch_size=4)
    got = {
        name: float(metric.compute(view))
        for name, metric in PRESETS["dohare2024"].items()
        if not metric.needs_weight
    }
    sigma = [math.sqrt((21 + math.sqrt(433)) / 2), math.sqrt((21 - math.sqrt(433)) / 2)]
    share = sigma[0] ** 2 / sum(s**2 for s in sigma)  # 0.9952: above 0.99 with one value
    assert share > 0.99 and sigma[0] / sum(sigma) < 0.99
    assert got == pytest.approx(
        {
            "dormant_ratio": 1 / 3,  # b is zero on every row
            "dead_fraction": 1 / 3,  # non-zero on fewer than 1% of rows: b only
            "effective_rank": _entropy_rank(sigma),
            "approximate_rank": 1,
            "approximate_rank_abs": 2,
            "numerical_rank": 2,
        },
        rel=1e-6,
    )
