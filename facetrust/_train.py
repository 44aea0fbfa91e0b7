"""Training subcommands: `prepare`, `train`, `export`, `evaluate`, `jitter`, `degrade`.

torch and the training package are imported inside the command bodies only, so
`facetrust scan` never needs them. Exit code 0 on success, 2 on any error (a clear
message on stderr, no traceback).

Typical run::

    facetrust prepare facetrust_shared ../shared/data prepared/shared --frames 16
    facetrust train training/configs/lite0_shared.yaml --set epochs=5
    #   (calibrates, sets thresholds and exports runs/<name>/model.onnx at the end)
    facetrust export runs/lite0_shared --out model.onnx --int8    # again / another checkpoint
    facetrust evaluate model.onnx dfdc /data/dfdc --split test --out reports/dfdc
    facetrust jitter model.onnx dfdc /data/dfdc --split test       # box-jitter stability
    facetrust degrade model.onnx dfdc /data/dfdc --split test      # image-quality shortcut check

Several GPUs: ``torchrun --nproc_per_node=N -m facetrust train CONFIG`` (same command).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from facetrust._scan import MultiCropChoice

EXIT_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("training", "detector", "facetrust"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def _known_errors() -> tuple[type[BaseException], ...]:
    from detector.card import ModelCardError
    from training.cards import CardError
    from training.config import ConfigError
    from training.models import ModelError
    from training.train import TrainError

    return (ConfigError, TrainError, ModelError, CardError, ModelCardError, FileNotFoundError, ValueError,
            OSError, RuntimeError)


def prepare(
    card: Annotated[str, typer.Argument(help="dataset card name (datasets/NAME.yaml) or path")],
    root: Annotated[Path, typer.Argument(help="the corpus root folder")],
    out: Annotated[Path, typer.Argument(help="output folder (index.jsonl, meta.json, crops/)")],
    frames: _FramesOpt = 32,
    size: Annotated[int, typer.Option(help="side of the stored crops in pixels")] = 256,
    margin: Annotated[float, typer.Option(help="margin of the stored crops (>= the model's margin)")] = 2.0,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    limit: Annotated[int | None, typer.Option(help="at most this many media files (quick checks)")] = None,
    min_face: Annotated[int, typer.Option(help="smallest face side kept, in pixels")] = 40,
    role: Annotated[str, typer.Option(help="train, dev or all: which files of the card")] = "train",
    holdout: Annotated[list[str] | None, typer.Option(help="method to hold out (repeatable)")] = None,
    dense_landmarks: Annotated[bool, typer.Option(help="68-point landmarks with dlib")] = True,
    detector_min_face: Annotated[int | None, typer.Option(
        help="face size (px) the detector looks from; default: --min-face, as serving looks from the "
        "model card's min_face_size (another value moves boxes off serving's)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Detect, align and crop every face of a dataset into a prepared folder for training."""
    _logging(verbose)
    if frames < 1 or size < 16 or not (1.0 <= margin <= 4.0) or workers < 1:
        raise _fail("need --frames >= 1, --size >= 16, --margin in 1..4 and --workers >= 1")
    if limit is not None and limit < 1:
        raise _fail("--limit must be >= 1")
    if role not in ("train", "dev", "all"):
        raise _fail(f"--role must be train, dev or all, not {role!r}")
    try:
        from training.prepare import prepare_main

        result = prepare_main(card, root, out, frames=frames, margin=margin, size=size, workers=workers,
                              limit=limit, min_face=min_face, role=None if role == "all" else role,
                              holdout_methods=holdout or (), dense_landmarks=dense_landmarks,
                              detector_min_face=detector_min_face)
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    if result is not None:
        typer.echo(json.dumps(result, indent=2, default=str))


def train(
    config: Annotated[Path, typer.Argument(help="training config YAML (see training/configs/)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override: key=value (YAML value), "
                                                   "dotted keys for sections, repeatable")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in the config's out folder")] = False,
    pretrained_file: Annotated[Path | None, typer.Option(
        "--pretrained-file", help="initialise from these local weights (.safetensors or torch state "
        "dict; by name, else in order) instead of the config's `pretrained`")] = None,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a classifier; ends with calibration, thresholds and ONNX export (unless export: false)."""
    _logging(verbose)
    if pretrained_file is not None and not pretrained_file.is_file():
        raise _fail(f"--pretrained-file {pretrained_file}: no such file")
    try:
        from training.config import load_config
        from training.train import train_main

        overrides = list(set_ or [])
        if pretrained_file is not None:
            overrides.append(f"pretrained={json.dumps(str(pretrained_file))}")
        cfg = load_config(config, overrides)
        run = train_main(cfg, resume=resume, progress=progress)
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from the main process
        typer.echo(str(run))


def export(
    run: Annotated[Path, typer.Argument(help="run folder or a .safetensors checkpoint in it")],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write")],
    int8: Annotated[bool, typer.Option(help="also try INT8 static quantisation (kept if AUC drops <= 0.005)")]
    = False,
    calibration: Annotated[str | None, typer.Option(help="auto, temperature, isotonic or identity "
                                                    "(default: the run's config)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Calibrate on validation, set thresholds and export ONNX with its model card."""
    _logging(verbose)
    try:
        from training.release import export_run

        result = export_run(run, out, int8=int8, calibration=calibration)
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    card = result["card"]
    summary = {
        "onnx": result["onnx"],
        "parity_max_abs_prob_diff": result["parity_max_abs_prob_diff"],
        "calibration": card["calibration"]["method"],
        "threshold_balanced": card["threshold_balanced"],
        "threshold_strict": card["threshold_strict"],
        "validation": card["metrics"]["validation"],
        "int8": result.get("int8"),
    }
    typer.echo(json.dumps(summary, indent=2))


_ModelArg = Annotated[Path, typer.Argument(help="ONNX model with a FaceTrust card")]
_CardArg = Annotated[str, typer.Argument(help="dataset card name or path")]
_RootArg = Annotated[Path, typer.Argument(help="the corpus root folder")]
_SplitOpt = Annotated[str, typer.Option(help="train, val, test or dev")]
_FramesOpt = Annotated[int, typer.Option(help="frames sampled per video")]
_MultiCropFlag = Annotated[bool, typer.Option(
    "--multi-crop", help="score each box as the mean of its 4 views (box moved 2% four ways, 2 mirrored), "
    "as `facetrust scan` does for photos")]


def evaluate(
    model: _ModelArg,
    card: _CardArg,
    root: _RootArg,
    split: Annotated[str, typer.Option(help="train, val, test, dev or all")] = "test",
    out: Annotated[Path | None, typer.Option(help="report folder (report.json, roc.png)")] = None,
    frames: Annotated[int, typer.Option(help="frames sampled per video")] = 32,
    limit: Annotated[int | None, typer.Option(
        help="at most this many items (>= 2; seeded, stratified by label: a real and a fake at least)",
    )] = None,
    multi_crop: Annotated[MultiCropChoice, typer.Option(
        "--multi-crop", help="as `facetrust scan --multi-crop`: which media score each face as the "
        "mean of 4 views")] = MultiCropChoice.images,
    min_face: Annotated[int | None, typer.Option(
        "--min-face", min=1, metavar="PX", help="as `facetrust scan --min-face`: look for faces from "
        "this box side (default: the model card's min_face_size)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Frame- and video-level AUC, AP, EER, TPR@1%FPR with the detector's own pipeline."""
    _logging(verbose)
    if split not in ("train", "val", "test", "dev", "all"):
        raise _fail("--split must be train, val, test, dev or all")
    if frames < 1:
        raise _fail("--frames must be >= 1")
    try:
        from training.evaluate import evaluate_main

        report = evaluate_main(model, card, root, split=split, out=out, frames=frames, limit=limit,
                               multi_crop=multi_crop.value, min_face=min_face)
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    summary = {k: report[k] for k in ("model", "dataset", "counts")}
    summary["video"] = report["video"]["overall"]
    summary["frame"] = report["frame"]["overall"]
    summary["files"] = report.get("files")
    typer.echo(json.dumps(summary, indent=2, default=str))


def _check_report_args(verbose: bool, split: str, frames: int) -> None:
    """Logging on; ``--split`` one of train/val/test/dev and ``--frames`` >= 1, else exit 2."""
    _logging(verbose)
    if split not in ("train", "val", "test", "dev"):
        raise _fail("--split must be train, val, test or dev")
    if frames < 1:
        raise _fail("--frames must be >= 1")


def jitter(
    model: _ModelArg,
    card: _CardArg,
    root: _RootArg,
    split: _SplitOpt = "test",
    frames: _FramesOpt = 4,
    fraction: Annotated[list[float] | None, typer.Option(
        help="box move as a fraction of its longer side (repeat for several; default 0.02 and 0.05)")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many items (seeded)")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder (jitter.json)")] = None,
    multi_crop: _MultiCropFlag = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """How much each face's score moves when its box moves by a few percent (shift, scale)."""
    _check_report_args(verbose, split, frames)
    try:
        from training.robustness import DEFAULT_FRACTIONS, box_stability

        report = box_stability(model, card, root, split=split, frames=frames, limit=limit, out=out,
                               fractions=tuple(fraction) if fraction else DEFAULT_FRACTIONS,
                               multi_crop=multi_crop)
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(report, indent=2))


def degrade(
    model: _ModelArg,
    card: _CardArg,
    root: _RootArg,
    split: _SplitOpt = "test",
    frames: _FramesOpt = 4,
    max_real: Annotated[int | None, typer.Option(help="at most this many real items (seeded); "
                                                      "every fake is kept")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder (degrade.json)")] = None,
    multi_crop: _MultiCropFlag = False,
    face_size: Annotated[list[int] | None, typer.Option(
        help="also score faces shrunk to this box side in px (faces of at least 1.15x that size; at "
             "least the model's min_face_size), found again by the detector (repeat for several, e.g. "
             "--face-size 60 --face-size 80)")] = None,
    codec: Annotated[list[str] | None, typer.Option(
        help="also score copies saved as a phone saves photos and decoded back as an upload: jpeg90, "
             "heic80 (needs the heic extra) or avif80 (repeat for several)")] = None,
    edge_cut: Annotated[list[float] | None, typer.Option(
        help="also score whole faces from copies cut so that this share of the face box (from -0.15 "
             "up to, not including, 0.5; not 0; negative: the picture ends that far outside the box, "
             "a black border in the crop) "
             "lies beyond the bottom, top, left or right edge, found again by the detector (repeat "
             "for several, e.g. --edge-cut -0.05 --edge-cut 0.1)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Scores per label on JPEG-recompressed, lower-resolution and blurred copies (quality shortcut),
    with --codec on copies saved as HEIC, AVIF or JPEG, with --face-size on faces shrunk to a
    given size, and with --edge-cut on faces cut by the picture's edge."""
    _check_report_args(verbose, split, frames)
    try:
        from training.robustness import quality_shift

        report = quality_shift(model, card, root, split=split, frames=frames, max_real=max_real, out=out,
                               multi_crop=multi_crop, face_sizes=tuple(face_size or ()),
                               codecs=tuple(codec or ()), edge_cuts=tuple(edge_cut or ()))
    except _known_errors() as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(report, indent=2))


def register(app: typer.Typer) -> None:
    """Register this module's subcommands on the `facetrust` app."""
    app.command("prepare")(prepare)
    app.command("train")(train)
    app.command("export")(export)
    app.command("evaluate")(evaluate)
    app.command("jitter")(jitter)
    app.command("degrade")(degrade)
