"""``facetrust evaluate``: score a dataset split with the detector's own pipeline.

Every media item of the card's split goes through
``create_analyzer(model).analyze_path(path, sampling=...)``: the same decoding, face
detection, crop, classifier and aggregation as ``facetrust scan`` and the service.

* **frame level**: one score per sampled frame with a face, the frame's
  ``fake_probability`` (max over its faces); a still image is one frame (max over faces);
* **video level** (item level): the result's ``fake_probability`` (the verdict).

Items whose status is not ``ok`` (no face, unreadable, unsupported, too large, ...) are
counted and listed with their status, and never given a score. The report holds AUC,
AP, EER and TPR@1%FPR at both levels (overall and per method vs. all reals), the model
card, the per-item scores and an ROC plot (``roc.png``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import binary_metrics, roc_points

log = logging.getLogger(__name__)


def _level_metrics(labels: list[int], scores: list[float], methods: list[str]) -> dict[str, Any]:
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"overall": binary_metrics(y, p), "per_method": {}}
    m = np.asarray(methods)
    for name in sorted(set(m[y == 1].tolist())) if y.size else []:
        sel = (y == 0) | ((y == 1) & (m == name))
        out["per_method"][name] = binary_metrics(y[sel], p[sel])
    return out


def plot_roc(curves: dict[str, tuple[list[int], list[float]]], path: Path, title: str) -> bool:
    """Write an ROC plot (one curve per entry with both classes); False if none could be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    drawn = 0
    for name, (y, p) in curves.items():
        m = binary_metrics(y, p)
        if m["auc"] is None:
            continue
        fpr, tpr, _ = roc_points(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {m['auc']:.3f}, n={m['n']})")
        drawn += 1
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (real called fake)")
    ax.set_ylabel("true-positive rate (fake caught)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no curve: needs scored real and fake items", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drawn > 0


def evaluate_main(
    model: str | Path,
    card: str | Path,
    root: str | Path,
    *,
    split: str = "test",
    out: str | Path | None = None,
    frames: int = 32,
    limit: int | None = None,
    holdout_methods: tuple[str, ...] = (),
    multi_crop: str = "images",
    min_face: int | None = None,
    analyzer: Any | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ONNX ``model`` on the ``split`` of dataset ``card`` under ``root``.

    ``split``: train/val/test/dev or ``all`` (every split but ``excluded``); ``frames``:
    sampled frames per video; ``limit``: at most this many items (>= 2; seeded, stratified by
    label, for quick checks); ``multi_crop`` and ``min_face``: as ``facetrust scan --multi-crop``
    and ``--min-face`` (ignored when an ``analyzer`` is given). Writes ``report.json`` and
    ``roc.png`` to ``out`` if given.
    """
    from detector.analyze import create_analyzer
    from detector.video import Sampling
    from training.cards import list_items, load_card

    dcard = load_card(card)
    items = list_items(dcard, root, holdout_methods=holdout_methods)
    if split == "all":
        chosen = [it for it in items if it.split != "excluded"]
    else:
        chosen = [it for it in items if it.split == split]
    if not chosen:
        raise ValueError(f"no items in split {split!r} of {dcard.name} "
                         f"(splits: {dict(Counter(i.split for i in items))})")
    if limit is not None and limit < 2:
        raise ValueError("limit must be >= 2 (a real and a fake item at least)")
    if limit is not None and len(chosen) > limit:
        rng = np.random.default_rng(0)
        by_label = [[k for k, it in enumerate(chosen) if it.label == lab] for lab in (0, 1)]
        share = round(limit * len(by_label[1]) / len(chosen))
        fakes = min(len(by_label[1]), max(1 if by_label[1] else 0, share))
        counts = (min(len(by_label[0]), limit - fakes), fakes)
        keep: list[int] = []
        for idx, n in zip(by_label, counts, strict=True):
            keep += rng.choice(idx, n, replace=False).tolist() if idx and n else []
        chosen = [chosen[k] for k in sorted(keep)]
    analyzer = analyzer or create_analyzer(model, multi_crop=multi_crop, min_face=min_face)  # type: ignore[arg-type]
    sampling = Sampling("count", frames)
    rows: list[dict[str, Any]] = []
    frame_y: list[int] = []
    frame_p: list[float] = []
    frame_m: list[str] = []
    t0 = time.perf_counter()
    for n, it in enumerate(chosen):
        res = analyzer.analyze_path(it.path, sampling=sampling)
        status = str(getattr(res.status, "value", res.status))
        row: dict[str, Any] = {"rel": it.rel, "label": it.label, "method": it.method, "group": it.group,
                               "media": it.media, "status": status, "score": None, "frame_scores": []}
        if status == "ok" and res.fake_probability is not None:
            row["score"] = float(res.fake_probability)
            if res.frames is not None:
                fs = [float(f.fake_probability) for f in res.frames if f.fake_probability is not None]
            else:
                fs = [max(float(f.fake_probability) for f in res.faces or [])] if res.faces else []
            row["frame_scores"] = fs
            frame_y += [it.label] * len(fs)
            frame_p += fs
            frame_m += [it.method] * len(fs)
        else:
            row["error"] = res.error
        rows.append(row)
        if progress:
            progress(n + 1, len(chosen))
    scored = [r for r in rows if r["score"] is not None]
    unscored = [r for r in rows if r["score"] is None]
    video = _level_metrics([r["label"] for r in scored], [r["score"] for r in scored],
                           [r["method"] for r in scored])
    frame = _level_metrics(frame_y, frame_p, frame_m)
    acard = analyzer.card
    report: dict[str, Any] = {
        "model": {"path": str(model), "name": acard.name, "version": acard.version,
                  "threshold_balanced": acard.threshold_balanced, "threshold_strict": acard.threshold_strict},
        "dataset": {"card": dcard.name, "root": str(root), "split": split, "frames_per_video": frames},
        "multi_crop": getattr(analyzer, "multi_crop", None),
        "min_face_size": getattr(analyzer, "min_face_size", None),
        "counts": {
            "items": len(rows),
            "scored": len(scored),
            "unscored": len(unscored),
            "unscored_by_status": dict(Counter(str(r["status"]) for r in unscored)),
            "frames_scored": len(frame_p),
            "by_label": dict(Counter(str(r["label"]) for r in rows)),
        },
        "video": video,
        "frame": frame,
        "accuracy_at_thresholds": _threshold_rates(scored, acard.threshold_balanced, acard.threshold_strict),
        "unscored": [{"rel": r["rel"], "status": r["status"], "error": r.get("error")} for r in unscored],
        "items": rows,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        curves = {"video level": ([r["label"] for r in scored], [r["score"] for r in scored]),
                  "frame level": (frame_y, frame_p)}
        plot_roc(curves, out / "roc.png", f"{acard.name} {acard.version} on {dcard.name}/{split}")
        report["files"] = {"report": str(out / "report.json"), "roc": str(out / "roc.png")}
    return report


def _threshold_rates(scored: list[dict[str, Any]], t_bal: float, t_strict: float) -> dict[str, Any]:
    y = np.array([r["label"] for r in scored], dtype=np.int64)
    p = np.array([r["score"] for r in scored], dtype=np.float64)
    out = {}
    for name, t in (("balanced", t_bal), ("strict", t_strict)):
        fake = p >= t
        out[name] = {
            "threshold": t,
            "fpr": float(fake[y == 0].mean()) if (y == 0).any() else None,
            "tpr": float(fake[y == 1].mean()) if (y == 1).any() else None,
        }
    return out
