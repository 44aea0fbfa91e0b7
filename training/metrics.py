"""Binary detection metrics: AUC, AP, EER and TPR at a fixed false-positive rate.

Convention everywhere: label 1 = fake (positive), 0 = real; higher score = more fake.
Metrics that need both classes are ``None`` when a class is missing (never made up).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: False-positive rate at which :func:`binary_metrics` reports the true-positive rate.
LOW_FPR = 0.01


def _as_arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (real) or 1 (fake)")
    if not np.all(np.isfinite(p)):
        raise ValueError("scores must be finite")
    return y.astype(np.int64), p


def roc_points(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of the ROC (scikit-learn, all points kept)."""
    from sklearn.metrics import roc_curve

    y, p = _as_arrays(y, p)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    return fpr, tpr, thr


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the score threshold where FPR = FNR.

    The ROC is piecewise linear between its points; the EER is where the segment
    crosses ``fpr == 1 - tpr``, interpolated linearly (threshold interpolated the same
    way, clipped to the finite score range).
    """
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases along the curve: -1 at the start, +1 at the end
    idx = int(np.argmax(diff >= 0.0))
    if idx == 0 or diff[idx] == 0.0:
        t = thr[idx] if np.isfinite(thr[idx]) else thr[min(idx + 1, len(thr) - 1)]
        return float((fpr[idx] + fnr[idx]) / 2.0), float(t)
    i0, i1 = idx - 1, idx
    w = -diff[i0] / (diff[i1] - diff[i0])  # fraction of the way from i0 to i1
    eer = fpr[i0] + w * (fpr[i1] - fpr[i0])
    t0 = thr[i0] if np.isfinite(thr[i0]) else thr[i1]
    t = t0 + w * (thr[i1] - t0)
    return float(eer), float(t)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = LOW_FPR) -> float:
    """Highest TPR among ROC operating points whose FPR is <= ``max_fpr`` (no interpolation)."""
    ok = fpr <= max_fpr + 1e-12
    return float(np.max(tpr[ok])) if np.any(ok) else 0.0


def binary_metrics(y: Any, p: Any) -> dict[str, Any]:
    """AUC, average precision, EER (+ its threshold) and TPR at 1% FPR of scores ``p``.

    ``y``: 0 = real, 1 = fake. Returns counts always; the score metrics are ``None``
    when only one class is present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, p = _as_arrays(y, p)
    n_pos = int(y.sum())
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_fake": n_pos,
        "n_real": int(y.size - n_pos),
        "auc": None,
        "ap": None,
        "eer": None,
        "eer_threshold": None,
        "tpr_at_1pct_fpr": None,
    }
    if n_pos == 0 or n_pos == y.size:
        return out
    fpr, tpr, thr = roc_points(y, p)
    eer, eer_t = eer_from_roc(fpr, tpr, thr)
    out.update(
        auc=float(roc_auc_score(y, p)),
        ap=float(average_precision_score(y, p)),
        eer=eer,
        eer_threshold=eer_t,
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, LOW_FPR),
    )
    return out


def log_loss(y: Any, p: Any, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of probabilities ``p`` (clipped to ``[eps, 1-eps]``)."""
    y, p = _as_arrays(y, p)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p)))


def brier(y: Any, p: Any) -> float:
    """Mean squared error of probabilities ``p`` against labels ``y``."""
    y, p = _as_arrays(y, p)
    return float(np.mean((p - y) ** 2))


def format_metrics(m: dict[str, Any]) -> str:
    """One-line human summary of a :func:`binary_metrics` dict."""
    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    return (
        f"AUC {f(m.get('auc'))}  AP {f(m.get('ap'))}  EER {f(m.get('eer'))}  "
        f"TPR@1%FPR {f(m.get('tpr_at_1pct_fpr'))}  (real {m.get('n_real')}, fake {m.get('n_fake')})"
    )
