"""Calibration of raw fake logits and the two decision thresholds of the model card.

Fitted on held-out (validation) logits, never on training data:

* **temperature**: ``p = sigmoid(z / T)``, ``T`` minimising the negative log-likelihood
  (bounded 1-D search over ``log T``). Monotone, one parameter, hard to over-fit.
* **isotonic**: scikit-learn ``IsotonicRegression`` of the label on the logit, stored as
  its knots (``xs``/``ys``) in :class:`detector.card.Calibration`; inference is
  ``np.interp`` over the knots, exactly what scikit-learn predicts. Probabilities are
  kept inside ``[eps, 1 - eps]`` so no face is ever reported as certainly real/fake.
* **auto**: the method with the lower k-fold cross-validated NLL (each fold's
  calibrator is fitted on the other folds), then refitted on all points.

Thresholds, on calibrated probabilities, a face being called *fake* iff ``p >= t``:

* **balanced**: the equal-error point: the candidate threshold (a calibrated score of
  the calibration set) minimising ``max(FPR, FNR)``; ties go to the larger threshold.
* **strict**: the smallest threshold whose false-positive rate on the calibration
  reals is ``<= 1%``. With ``n`` reals at most ``k = floor(0.01 n)`` of them may reach
  it, so it is set just above the ``(k+1)``-th largest real score (every real tied
  with that score stays below it). With fewer than 100 reals ``k = 0``: the threshold
  sits above every real score (FPR 0 on the calibration set; the 1% target cannot be
  resolved from so few and the card's metrics say how many reals were used). The
  strict threshold is never below the balanced one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from detector.card import Calibration
from training.metrics import binary_metrics, brier, log_loss

#: Calibrated probabilities are kept in ``[PROB_EPS, 1 - PROB_EPS]`` (isotonic).
PROB_EPS = 1e-4
#: Target false-positive rate of the strict threshold.
STRICT_FPR = 0.01

Method = Literal["auto", "temperature", "isotonic", "identity"]


def _check(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if z.shape != y.shape:
        raise ValueError(f"{z.size} logits but {y.size} labels")
    if z.size == 0:
        raise ValueError("calibration needs at least one logit")
    if not np.all(np.isfinite(z)):
        raise ValueError("calibration logits must be finite")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("calibration labels must be 0 (real) or 1 (fake)")
    if y.min() == y.max():
        raise ValueError("calibration needs both real (0) and fake (1) examples")
    return z, y.astype(np.int64)


def fit_temperature(logits: Any, labels: Any) -> Calibration:
    """Temperature ``T`` minimising the NLL of ``sigmoid(z / T)`` (``T`` in [0.01, 100])."""
    from scipy.optimize import minimize_scalar

    z, y = _check(logits, labels)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + e^s) - y s, numerically stable
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded",
                          options={"xatol": 1e-6})
    return Calibration("temperature", temperature=float(math.exp(res.x)))


def fit_isotonic(logits: Any, labels: Any) -> Calibration:
    """Isotonic regression of the label on the logit, as piecewise-linear knots."""
    from sklearn.isotonic import IsotonicRegression

    z, y = _check(logits, labels)
    iso = IsotonicRegression(y_min=PROB_EPS, y_max=1.0 - PROB_EPS, increasing=True,
                             out_of_bounds="clip")
    iso.fit(z, y.astype(np.float64))
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if xs.size < 2:  # all logits equal: a flat map at the base rate
        xs = np.array([xs[0] - 1.0, xs[0] + 1.0]) if xs.size else np.array([-1.0, 1.0])
        ys = np.full(2, float(np.clip(y.mean(), PROB_EPS, 1 - PROB_EPS)))
    return Calibration("isotonic", xs=tuple(float(v) for v in xs), ys=tuple(float(v) for v in ys))


def _fit(method: str, z: np.ndarray, y: np.ndarray) -> Calibration:
    if method == "temperature":
        return fit_temperature(z, y)
    if method == "isotonic":
        return fit_isotonic(z, y)
    if method == "identity":
        return Calibration("identity")
    raise ValueError(f"unknown calibration method {method!r} (auto, temperature, isotonic, identity)")


def cross_validated_nll(method: str, logits: Any, labels: Any, folds: int = 5, seed: int = 0) -> float:
    """Mean NLL of ``method`` over stratified ``folds`` (fit on the rest, score the fold)."""
    z, y = _check(logits, labels)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(z.size, dtype=np.int64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        fold_of[rng.permutation(idx)] = np.arange(idx.size) % folds
    losses, weights = [], []
    for k in range(folds):
        test = fold_of == k
        train = ~test
        if not test.any() or y[train].min() == y[train].max():
            continue
        cal = _fit(method, z[train], y[train])
        losses.append(log_loss(y[test], cal(z[test])))
        weights.append(int(test.sum()))
    if not losses:
        return float("nan")
    return float(np.average(losses, weights=weights))


def balanced_threshold(probs: Any, labels: Any) -> float:
    """Equal-error threshold: minimises ``max(FPR, FNR)`` over candidate thresholds."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    cands = np.unique(p)  # ascending; fake iff p >= t
    real, fake = np.sort(p[y == 0]), np.sort(p[y == 1])
    if real.size == 0 or fake.size == 0:
        raise ValueError("thresholds need both real and fake examples")
    fpr = 1.0 - np.searchsorted(real, cands, side="left") / real.size
    fnr = np.searchsorted(fake, cands, side="left") / fake.size
    worst = np.maximum(fpr, fnr)
    best = np.flatnonzero(worst == worst.min())
    return float(cands[best[-1]])


def strict_threshold(probs: Any, labels: Any, max_fpr: float = STRICT_FPR) -> float:
    """Smallest threshold with FPR <= ``max_fpr`` on the reals (see the module docstring)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    real = np.sort(p[y == 0])[::-1]
    if real.size == 0:
        raise ValueError("the strict threshold needs real examples")
    k = int(math.floor(max_fpr * real.size + 1e-9))
    if k >= real.size:
        return 0.0
    return float(min(1.0, np.nextafter(real[k], np.inf)))


@dataclass(frozen=True)
class CalibrationResult:
    """A fitted calibration, the two thresholds and what they achieve on the calibration set."""

    calibration: Calibration
    threshold_balanced: float
    threshold_strict: float
    report: dict[str, Any]


def _rates(p: np.ndarray, y: np.ndarray, t: float) -> dict[str, float]:
    fake = p >= t
    return {
        "threshold": float(t),
        "fpr": float(fake[y == 0].mean()),
        "tpr": float(fake[y == 1].mean()),
    }


def calibrate(logits: Any, labels: Any, method: Method = "auto", *, folds: int = 5,
              seed: int = 0) -> CalibrationResult:
    """Fit the calibration (``method``) and both thresholds on held-out ``logits``/``labels``."""
    z, y = _check(logits, labels)
    cv: dict[str, float] = {}
    if method == "auto":
        for m in ("temperature", "isotonic"):
            cv[m] = cross_validated_nll(m, z, y, folds=folds, seed=seed)
        finite = {m: v for m, v in cv.items() if math.isfinite(v)}
        chosen = min(finite, key=finite.get) if finite else "temperature"
    else:
        chosen = method
    cal = _fit(chosen, z, y)
    p = np.asarray(cal(z), dtype=np.float64)
    t_bal = balanced_threshold(p, y)
    t_strict = max(strict_threshold(p, y), t_bal)
    raw_p = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
    report = {
        "method": chosen,
        "requested": method,
        "cv_nll": cv,
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "nll_raw": log_loss(y, raw_p),
        "nll_calibrated": log_loss(y, p),
        "brier_raw": brier(y, raw_p),
        "brier_calibrated": brier(y, p),
        "balanced": _rates(p, y, t_bal),
        "strict": _rates(p, y, t_strict),
        "strict_target_fpr": STRICT_FPR,
        "strict_fpr_resolution": 1.0 / max(1, int((y == 0).sum())),
        "metrics": binary_metrics(y, p),
    }
    return CalibrationResult(cal, t_bal, t_strict, report)
