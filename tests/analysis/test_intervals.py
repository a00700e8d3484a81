import math

import numpy as np
import pytest

from analysis.intervals import bootstrap_interval, t_interval


def test_t_interval_of_one_to_five_is_the_hand_computed_one():
    est = t_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    # mean 3, s^2 = (4+1+0+1+4)/4 = 2.5, t_{0.975,4} = 2.776445 (tables)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert est.n == 5 and est.mean == 3.0
    assert est.std == pytest.approx(math.sqrt(2.5), abs=1e-12)
    assert est.low == pytest.approx(3 - half, abs=1e-6)
    assert est.high == pytest.approx(3 + half, abs=1e-6)


def test_t_interval_90_percent_uses_its_own_quantile():
    est = t_interval(np.array([10.0, 20.0, 40.0]), confidence=0.90)
    # mean 70/3, s^2 = ((-40/3)^2 + (-10/3)^2 + (50/3)^2)/2 = 700/3, t_{0.95,2} = 2.919986
    half = 2.919986 * math.sqrt(700 / 3) / math.sqrt(3)
    assert (est.low, est.high) == pytest.approx((70 / 3 - half, 70 / 3 + half), abs=1e-5)


def test_one_value_gives_no_interval_and_says_why():
    est = t_interval(np.array([7.0]))
    assert est.mean == 7.0 and est.n == 1
    assert math.isnan(est.std) and math.isnan(est.low) and math.isnan(est.high)
    assert "n=1" in est.note


def test_bootstrap_of_two_values_has_the_enumerable_quantiles():
    # resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4:
    # the 2.5% quantile is 0 and the 97.5% quantile is 1
    est = bootstrap_interval(np.array([0.0, 1.0]), np.random.default_rng(0), resamples=4000)
    assert (est.low, est.high) == (0.0, 1.0)
    assert "undercovers" in est.note


def test_bootstrap_is_reproducible_from_its_generator_and_near_t_for_large_n():
    x = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    a = bootstrap_interval(x, np.random.default_rng(7))
    b = bootstrap_interval(x, np.random.default_rng(7))
    assert (a.low, a.high) == (b.low, b.high) and a.note == ""
    t = t_interval(x)
    width = t.high - t.low
    assert abs(a.low - t.low) < 0.1 * width and abs(a.high - t.high) < 0.1 * width


def test_two_dimensional_values_are_rejected():
    with pytest.raises(ValueError, match="1-D"):
        t_interval(np.ones((2, 2)))
