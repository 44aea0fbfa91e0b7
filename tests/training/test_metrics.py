"""binary_metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import binary_metrics, brier, eer_from_roc, log_loss, roc_points, tpr_at_fpr


def test_perfect_separation() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert m["auc"] == 1.0 and m["ap"] == 1.0
    assert m["eer"] == 0.0
    assert 0.2 < m["eer_threshold"] <= 0.8
    assert m["tpr_at_1pct_fpr"] == 1.0
    assert (m["n"], m["n_real"], m["n_fake"]) == (4, 2, 2)


def test_inverted_scores() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert m["auc"] == 0.0
    assert m["eer"] == 1.0
    assert m["tpr_at_1pct_fpr"] == 0.0


def test_hand_computed_auc_and_eer() -> None:
    # reals 0.1 0.4 0.35 0.8 / fakes ... classic example: pairs (fake > real) = 3 of 4 -> AUC 0.75
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    m = binary_metrics(y, p)
    assert m["auc"] == pytest.approx(0.75)
    # ROC points: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FPR = FNR = 0.5 at (.5,.5)
    assert m["eer"] == pytest.approx(0.5)
    # AP: ranks 0.8(F) 0.4(R) 0.35(F) 0.1(R): precisions at recall steps 1/1, 2/3 -> (1 + 2/3) / 2
    assert m["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.5)


def test_eer_interpolates_between_roc_points() -> None:
    fpr = np.array([0.0, 0.0, 0.4, 1.0])
    tpr = np.array([0.0, 0.5, 0.9, 1.0])
    thr = np.array([np.inf, 0.9, 0.5, 0.1])
    # diff = fpr - (1 - tpr): -1, -0.5, 0.3, 1 -> crossing 0.5/0.8 of the way from point 1 to 2
    eer, t = eer_from_roc(fpr, tpr, thr)
    w = 0.5 / 0.8
    assert eer == pytest.approx(0.0 + w * 0.4)
    assert t == pytest.approx(0.9 + w * (0.5 - 0.9))


def test_tpr_at_one_percent_fpr_with_many_reals() -> None:
    # 200 reals in [0, 1); 2 reals above all but 10 of 20 fakes
    rng = np.random.default_rng(0)
    reals = np.sort(rng.uniform(0, 0.5, 200))
    reals[-2:] = [0.95, 0.96]  # at most 1% FPR -> 2 false positives allowed
    fakes = np.concatenate([np.full(10, 0.97), np.full(5, 0.955), np.full(5, 0.2)])
    y = np.r_[np.zeros(200), np.ones(20)]
    p = np.r_[reals, fakes]
    m = binary_metrics(y, p)
    # FPR <= 1% admits thresholds above 0.95 -> TPR = (10 + 5) / 20
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.75)
    fpr, tpr, _ = roc_points(y, p)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(0.5)


def test_random_scores_give_auc_near_half() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 20000)
    m = binary_metrics(y, rng.random(20000))
    assert abs(m["auc"] - 0.5) < 0.02
    assert abs(m["eer"] - 0.5) < 0.02
    assert m["tpr_at_1pct_fpr"] < 0.03


def test_one_class_gives_no_scores() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.5, 0.9])
    assert m["auc"] is None and m["eer"] is None and m["tpr_at_1pct_fpr"] is None
    assert m["n_real"] == 3


@pytest.mark.parametrize(
    ("y", "p"),
    [([0, 1], [0.5]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1, float("nan")])],
)
def test_bad_inputs_raise(y: list, p: list) -> None:
    with pytest.raises(ValueError):
        binary_metrics(y, p)


def test_log_loss_and_brier() -> None:
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    assert brier([1, 0], [1.0, 0.0]) == 0.0
    assert brier([1, 0], [0.0, 1.0]) == 1.0
