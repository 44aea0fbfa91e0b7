"""``facetrust export``: a trained run -> calibrated, thresholded ONNX model with its card.

Steps (all on the run's validation set, never on training data):

1. load ``config.yaml`` and the checkpoint (``best.safetensors`` by default);
2. raw logits of the validation items (real crops as stored plus SBI twins, see
   :func:`training.data.validation_items`) and of the held-out methods;
3. calibration and thresholds (:func:`training.calibrate.calibrate`);
4. the :class:`~detector.card.ModelCard` and the ONNX export with torch-vs-ONNX parity
   checked on real validation crops (:func:`training.export.export_classifier`);
5. optionally INT8 static quantisation (QDQ, per channel) calibrated on training crops,
   kept only if its validation AUC is at most 0.005 below the FP32 model's
   (``<out stem>.int8.onnx``, card embedded too); both AUCs are reported.

Writes ``export.json`` (the report) and ``calibration.json`` into the run folder.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from detector.card import ModelCard
from training.calibrate import calibrate
from training.config import TrainConfig, load_config
from training.data import AS_IS, FaceDataset
from training.metrics import binary_metrics
from training.train import (
    BEST,
    LAST,
    Data,
    TrainError,
    load_data,
    load_weights_file,
    predict,
    validation_report,
)

log = logging.getLogger(__name__)

#: INT8 is kept only if validation AUC drops by at most this much.
INT8_MAX_AUC_DROP = 0.005
PARITY_CROPS = 64
INT8_CALIBRATION_CROPS = 128


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """``(run folder, checkpoint)`` from a run folder (best, else last) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        run = p
        ckpt = run / BEST if (run / BEST).is_file() else run / LAST
    elif p.is_file():
        run, ckpt = p.parent, p
    else:
        raise TrainError(f"{p} is neither a run folder nor a checkpoint file")
    if not ckpt.is_file():
        raise TrainError(f"no checkpoint ({BEST} or {LAST}) in {run}")
    if not (run / "config.yaml").is_file():
        raise TrainError(f"{run} has no config.yaml beside the checkpoint")
    return run, ckpt


def _inputs(ds: FaceDataset, keys: list[int]) -> np.ndarray:
    return np.stack([ds[k][0].numpy() for k in keys]).astype(np.float32)


def _onnx_logits(path: Path, card: ModelCard, loader: DataLoader) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [sess.run([card.output_name], {card.input_name: x.numpy()})[0].reshape(-1) for x, *_ in loader]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def training_data_summary(cfg: TrainConfig, data: Data) -> str:
    """One paragraph for the card: sources, counts, validation and held-out methods."""
    recs = data.sources.records
    parts = []
    for i, d in enumerate(cfg.data):
        mine = [r for r in recs if r.source == i]
        meta = data.sources.meta()[i]
        card = meta.get("card") or meta.get("dataset") or Path(d.path).name
        if isinstance(card, dict):  # prepare stores the dataset card's summary: name it, no local path
            card = card.get("name") or card.get("title") or Path(d.path).name
        methods = sorted({r.method for r in mine})
        n_real = sum(r.label == 0 for r in mine)
        parts.append(f"{card} ({n_real} real / {len(mine) - n_real} fake "
                     f"face crops; methods {', '.join(methods)}; weight {d.weight:g})")
    n_sbi = sum(1 for _, k in data.val_items if k != AS_IS)
    text = (f"Prepared face crops: {'; '.join(parts)}. Training: {len(data.train_idx)} records plus "
            f"on-the-fly self-blended (p={cfg.sbi_prob:g}) and cross-identity blended "
            f"(p={cfg.cross_blend_prob:g}) fakes "
            f"from real crops. Validation (group-disjoint, calibration and thresholds): "
            f"{len(data.val_items) - n_sbi} crops plus {n_sbi} self-blended twins.")
    a = cfg.augment
    if a.edge_prob > 0 or a.edge_prob_labelled_fake > 0:
        text += (f" Picture edges near the face (black beyond): p={a.edge_prob:g}, labelled fakes "
                 f"p={a.edge_prob_labelled_fake:g}.")
    if a.real_source_degrade_prob > 0:
        text += f" Extra detail loss for crops of real pictures: p={a.real_source_degrade_prob:g}."
    if a.box_shift > 0 or a.box_scale > 0:
        text += f" Face-box jitter: shift {a.box_shift:g}, scale {a.box_scale:g}."
    if cfg.init_from:
        text += f" Fine-tuned from every tensor of {cfg.init_from}."
    if cfg.validation.holdout_methods:
        text += f" Held out of training: {', '.join(cfg.validation.holdout_methods)}."
    return text


def smallest_training_face(data: Data) -> int:
    """The smallest face side (pixels) ``facetrust prepare`` let into any training source.

    The minimum over the sources' ``settings.min_face``; 20 (the detector's historical default)
    when a source does not record one. Goes into the card as ``min_face_size``: serving does not
    score faces smaller than the model has seen.
    """
    sizes = []
    for meta in data.sources.meta():
        value = (meta.get("settings") or {}).get("min_face")
        sizes.append(int(value) if isinstance(value, int | float) and value >= 1 else 20)
    return min(sizes, default=20)


def _calibration_metrics(cal: Any) -> dict[str, Any]:
    """The card's calibration, threshold and calibrated-validation entries of a calibration."""
    r = cal.report
    return {
        "validation_calibrated": _short(r["metrics"]),
        "thresholds": {k: r[k] for k in ("balanced", "strict", "strict_target_fpr", "strict_fpr_resolution")},
        "calibration": {k: r[k] for k in ("method", "cv_nll", "nll_raw", "nll_calibrated", "brier_raw",
                                          "brier_calibrated")},
    }


def _short(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("auc", "ap", "eer", "tpr_at_1pct_fpr", "n_real", "n_fake")
    return {k: m.get(k) for k in keys}


def export_run(path: str | Path, out: str | Path, *, int8: bool = False, calibration: str | None = None,
               device: str = "cpu") -> dict[str, Any]:
    """Calibrate, threshold and export the run (or checkpoint) at ``path`` to ``out``.

    Returns the export report (also written to ``<run>/export.json``). Raises
    :class:`TrainError` when the validation set cannot calibrate (needs reals and fakes).
    """
    from training.export import export_classifier, quantize_int8
    from training.models import create_classifier, normalisation

    run, ckpt = resolve_run(path)
    out = Path(out)
    cfg = load_config(run / "config.yaml")
    if calibration:
        cfg.calibration = calibration
    model = create_classifier(cfg.model, None)
    ck_meta = load_weights_file(model, ckpt)
    dev = torch.device(device)
    model.to(dev).eval()
    data = load_data(cfg)
    mean, std = normalisation(cfg.model, cfg.pretrained)
    val_ds = FaceDataset(data.sources, cfg, mean, std, train=False, items=data.val_items)
    workers = min(cfg.workers, os.cpu_count() or 1)
    val_dl = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=workers)
    val = predict(model, val_dl, dev)
    hold = None
    if data.holdout_items:
        hold_ds = FaceDataset(data.sources, cfg, mean, std, train=False, items=data.holdout_items)
        hold = predict(model, DataLoader(hold_ds, batch_size=cfg.batch_size, num_workers=workers), dev)
    y, z = val["labels"], val["logits"]
    if y.size == 0 or y.min() == y.max():
        raise TrainError(
            f"the validation set has {int((y == 0).sum())} real and {int((y == 1).sum())} fake items: "
            "calibration needs both (enable validation.synthetic_fakes or add labelled fakes)"
        )
    cal = calibrate(z, y, cfg.calibration, seed=cfg.seed)
    report = validation_report(data.sources, val, hold)
    metrics: dict[str, Any] = {
        "validation": _short(report["overall"]),
        "per_method": {m: _short(v) for m, v in report["per_method"].items()},
        **_calibration_metrics(cal),
        "checkpoint": {"file": ckpt.name, **{k: ck_meta.get(k) for k in ("epoch", "val_auc")}},
    }
    if "holdout" in report:
        metrics["holdout"] = {m: _short(v) for m, v in report["holdout"].items()}
    card = ModelCard(
        name=cfg.name,
        version=cfg.version,
        architecture=f"timm/{cfg.model}",
        input_size=cfg.input_size,
        mean=tuple(mean),
        std=tuple(std),
        crop_margin=cfg.crop_margin,
        min_face_size=smallest_training_face(data),
        calibration=cal.calibration,
        threshold_balanced=cal.threshold_balanced,
        threshold_strict=cal.threshold_strict,
        training_data=training_data_summary(cfg, data),
        licence=cfg.licence,
        intended_use=cfg.intended_use,
        metrics=metrics,
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    )
    # parity on real validation crops: up to half reals, half fakes
    reals = [k for k in range(len(val_ds)) if y[k] == 0][: PARITY_CROPS // 2]
    fakes = [k for k in range(len(val_ds)) if y[k] == 1][: PARITY_CROPS - len(reals)]
    check = _inputs(val_ds, reals + fakes)
    model.cpu()
    # Written under temporary names next to ``out`` and renamed at the end: an interrupted or
    # failed export leaves the files that were there before (or none), never half a model.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{os.getpid()}.onnx")
    q_out = out.with_name(out.stem + ".int8.onnx")
    q_tmp = tmp.with_name(tmp.stem + ".int8.onnx")
    try:
        parity = export_classifier(model, card, tmp, check_inputs=check)
        result: dict[str, Any] = {
            "onnx": str(out),
            "checkpoint": str(ckpt),
            "parity_max_abs_prob_diff": parity,
            "parity_crops": len(check),
            "calibration": cal.report,
            "validation": report,
            "card": card.to_dict(),
        }
        if int8:
            result["int8"] = _try_int8(tmp, card, cfg, data, val_dl, y, mean, std, quantize_int8, q_out.name)
        if q_tmp.exists():
            os.replace(q_tmp, q_out)
        elif int8:  # not kept: an INT8 file left by an earlier export would not match this model
            q_out.unlink(missing_ok=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        q_tmp.unlink(missing_ok=True)
    (run / "calibration.json").write_text(json.dumps(cal.report, indent=2), encoding="utf-8")
    (run / "export.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    log.info("exported %s (parity %.2e); balanced threshold %.4f, strict %.4f, calibration %s", out, parity,
             card.threshold_balanced, card.threshold_strict, cal.report["method"])
    return result


def _try_int8(out: Path, card: ModelCard, cfg: TrainConfig, data: Data, val_dl: DataLoader, y: np.ndarray,
              mean: Any, std: Any, quantize: Any, final_name: str) -> dict[str, Any]:
    """Quantise ``out`` to ``<out stem>.int8.onnx`` beside it; ``final_name`` is the name the INT8
    file will have once renamed (recorded in the card)."""
    from training.export import embed_card

    rng = np.random.default_rng([cfg.seed, 8])
    pool = np.asarray(data.train_idx)
    pick = pool[rng.choice(pool.size, min(INT8_CALIBRATION_CROPS, pool.size), replace=False)]
    ds = FaceDataset(data.sources, cfg, mean, std, train=False, items=[(int(i), AS_IS) for i in pick])
    calib = _inputs(ds, list(range(len(ds))))
    q_path = out.with_name(out.stem + ".int8.onnx")
    auc_fp32 = binary_metrics(y, _onnx_logits(out, card, val_dl))["auc"]
    quantize(out, q_path, calib, card)
    z8 = _onnx_logits(q_path, card, val_dl)
    auc_int8 = binary_metrics(y, z8)["auc"]
    keep = auc_fp32 is not None and auc_int8 is not None and auc_fp32 - auc_int8 <= INT8_MAX_AUC_DROP
    info = {"auc_fp32": auc_fp32, "auc_int8": auc_int8, "max_drop": INT8_MAX_AUC_DROP, "kept": bool(keep),
            # the file's name, next to the FP32 model: a path would name the exporting machine's folders
            "calibration_crops": int(len(calib)), "file": final_name if keep else None}
    cal8 = None
    if keep:
        # INT8 logits are not FP32's: the INT8 file gets its own calibration and thresholds,
        # fitted the same way on its own validation logits, so its strict threshold keeps its promise.
        cal8 = calibrate(z8, y, cfg.calibration, seed=cfg.seed)
        info["threshold_balanced"], info["threshold_strict"] = cal8.threshold_balanced, cal8.threshold_strict
    new_card = ModelCard.from_dict({**card.to_dict(), "metrics": {**card.metrics, "int8": info}})
    embed_card(out, new_card)
    if cal8 is not None:
        metrics8 = {**new_card.metrics, "int8": info, **_calibration_metrics(cal8)}
        embed_card(q_path, dataclasses.replace(
            new_card, version=f"{card.version}+int8", metrics=metrics8, calibration=cal8.calibration,
            threshold_balanced=cal8.threshold_balanced, threshold_strict=cal8.threshold_strict))
        log.info("INT8 kept: validation AUC %.4f (FP32 %.4f) -> %s", auc_int8, auc_fp32, q_path)
    else:
        q_path.unlink(missing_ok=True)
        log.info("INT8 discarded: validation AUC %s vs FP32 %s (max drop %.3f)", auc_int8, auc_fp32,
                 INT8_MAX_AUC_DROP)
    return info
