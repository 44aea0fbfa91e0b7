"""Calibration and thresholds: recover a known temperature, isotonic knots, strict FPR."""

from __future__ import annotations

import numpy as np
import pytest

from detector.card import Calibration, ModelCard
from training.calibrate import (
    balanced_threshold,
    calibrate,
    cross_validated_nll,
    fit_isotonic,
    fit_temperature,
    strict_threshold,
)


def synthetic(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose true probability is sigmoid(z / T): labels drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 4.0, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z / temperature))).astype(int)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 2.0, 4.0])
def test_temperature_recovers_known_temperature(t_true: float) -> None:
    z, y = synthetic(20000, t_true)
    cal = fit_temperature(z, y)
    assert cal.method == "temperature"
    assert cal.temperature == pytest.approx(t_true, rel=0.08)


def test_isotonic_is_monotone_and_matches_sklearn() -> None:
    from sklearn.isotonic import IsotonicRegression

    z, y = synthetic(3000, 2.0, seed=1)
    cal = fit_isotonic(z, y)
    assert cal.method == "isotonic"
    xs, ys = np.array(cal.xs), np.array(cal.ys)
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) >= 0)
    assert ys.min() > 0 and ys.max() < 1
    grid = np.linspace(-15, 15, 301)
    p = cal(grid)
    assert np.all(np.diff(p) >= 0)
    iso = IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip").fit(z, y)
    np.testing.assert_allclose(p, iso.predict(grid), atol=1e-9)
    # the card round-trips the knots
    card = ModelCard(name="x", version="1", architecture="a", input_size=32, mean=(0.5,) * 3,
                     std=(0.5,) * 3, calibration=cal)
    again = ModelCard.from_json(card.to_json())
    np.testing.assert_allclose(again.calibration(grid), p)


def test_strict_threshold_keeps_fpr_at_most_one_percent() -> None:
    rng = np.random.default_rng(2)
    for n_real in (100, 250, 1000, 1234):
        reals = rng.beta(2, 5, n_real)
        reals[:7] = 0.5  # ties straddling the cut
        fakes = rng.beta(5, 2, 400)
        p = np.r_[reals, fakes]
        y = np.r_[np.zeros(n_real), np.ones(400)].astype(int)
        t = strict_threshold(p, y)
        fpr = float((reals >= t).mean())
        assert fpr <= 0.01
        # smallest such threshold: one step lower admits more false positives than allowed
        k = int(np.floor(0.01 * n_real))
        assert (reals >= np.sort(reals)[::-1][k]).sum() > k


def test_strict_threshold_small_sample_is_above_every_real() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.9, 0.95])
    y = np.array([0, 0, 0, 1, 1])
    t = strict_threshold(p, y)
    assert t > 0.3 and (p[y == 0] >= t).sum() == 0


def test_balanced_threshold_is_equal_error_point() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert balanced_threshold(p, y) == 0.6
    # overlapping: one real above, one fake below
    p2 = np.array([0.1, 0.2, 0.3, 0.75, 0.25, 0.6, 0.8, 0.9])
    t = balanced_threshold(p2, y)
    fpr = (p2[y == 0] >= t).mean()
    fnr = (p2[y == 1] < t).mean()
    assert fpr == fnr == 0.25


def test_calibrate_auto_report_and_card_thresholds() -> None:
    z, y = synthetic(4000, 3.0, seed=3)
    res = calibrate(z, y, "auto")
    assert res.report["method"] in ("temperature", "isotonic")
    assert set(res.report["cv_nll"]) == {"temperature", "isotonic"}
    assert res.report["nll_calibrated"] < res.report["nll_raw"]
    assert 0.0 <= res.threshold_balanced <= res.threshold_strict <= 1.0
    p = res.calibration(z)
    assert (p[y == 0] >= res.threshold_strict).mean() <= 0.01
    assert res.report["strict"]["fpr"] <= 0.01
    card = ModelCard(name="x", version="1", architecture="a", input_size=32, mean=(0.5,) * 3,
                     std=(0.5,) * 3, calibration=res.calibration,
                     threshold_balanced=res.threshold_balanced, threshold_strict=res.threshold_strict)
    assert ModelCard.from_json(card.to_json()) == card


def test_cross_validated_nll_prefers_truth() -> None:
    z, y = synthetic(3000, 1.0, seed=4)
    t_nll = cross_validated_nll("temperature", z, y)
    id_nll = cross_validated_nll("identity", z, y)
    assert t_nll <= id_nll + 0.01


@pytest.mark.parametrize(
    ("z", "y"),
    [([0.1, 0.2], [0, 0]), ([0.1, np.inf], [0, 1]), ([0.1], [0, 1]), ([0.1, 0.2], [0, 3]), ([], [])],
)
def test_bad_calibration_inputs(z: list, y: list) -> None:
    with pytest.raises(ValueError):
        calibrate(z, y)


def test_identity_method() -> None:
    res = calibrate([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1], "identity")
    assert res.calibration == Calibration("identity")
