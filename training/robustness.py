"""Robustness reports through the detector's own pipeline (torch-free).

``facetrust jitter``: how far a model's score moves when the face box moves a little.

The face detector's box is not a fixed point: it moves by a few pixels from frame to frame,
between detector settings and between pipelines. A classifier whose verdict follows those
pixels is unreliable evidence. For each face the detector finds in a split (still images,
and ``frames`` evenly spaced frames of each video), the face is scored on the detector's
box and on boxes moved by a fraction of their longer side left, right, up and down, and
scaled up and down by the same fraction (``exp(+-f)``). The report gives, per fraction,
the mean and 95th percentile of the absolute change of the calibrated probability and of
the logit, and the share of faces whose label at the balanced or strict threshold changes
under at least one of the six moves.

``facetrust degrade``: does the model read image quality instead of manipulation? Each
face is cropped with the box found on the original picture from copies of the whole
picture re-encoded as JPEG (quality 60 and 30), reduced to half and a quarter of its
resolution and back, or blurred, as a re-uploaded or re-recorded file would be. Per copy
the report gives each label's mean fake probability, the share above the balanced and strict
thresholds and the face-level AUC. If real faces' probability climbs with the damage, the
model has learned "low quality means fake" (a shortcut), whatever its AUC.

``facetrust degrade --codec NAME`` (repeatable; :data:`CODECS`) adds copies saved as a phone
would save a photo (JPEG quality 90, HEIC or AVIF quality 80) and decoded back by
:func:`detector.media.decode_image`, the decoder every upload goes through; the report gives
each codec's mean bits per pixel. HEIC needs the ``heic`` extra (pillow-heif).

``facetrust degrade --face-size S`` (repeatable) adds the face-size check: each face whose box
side is at least 1.15 S is also scored from a copy of the whole picture shrunk (area
resampling) until its box side is S px, with the face found again by the detector on that copy
(as a smaller upload would be analysed) and cropped there. Per size the report gives each
label's faces scored, faces the detector no longer found, faces left out as already smaller
than 1.15 S (``too_small``), mean probability and the shares above the thresholds.

``facetrust degrade --edge-cut F`` (repeatable, -0.15 <= F < 0.5, F != 0) adds the cut-face check:
each face whose box lies wholly inside the picture is also scored from four copies of the picture
cut so that the share F of its box lies beyond the bottom, top, left or right edge (a chin cut
off by a selfie's frame, a forehead by a video call's; a negative F ends the picture -F of the
box outside it, which THE crop's 1.3 margin shows as a black border; where the picture already
ends closer, that copy is left out and counted as ``not_cut``), found again by the detector on that copy
and cropped there as an upload would be. Per F the report gives each label's faces scored
(four sides pooled, and per side), faces the detector no longer found, mean probability, the
shares above the thresholds and the median share of the found box outside the copy
(:func:`detector.crops.outside_fraction`, what serving measures); ``by_outside`` bins every
face scored in the report's original and cut copies by that share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.crops import outside_fraction
from training.augment import down_up, jpeg
from training.metrics import binary_metrics

DEFAULT_FRACTIONS = (0.02, 0.05)


def moved_boxes(box: Sequence[float], fraction: float) -> list[tuple[float, float, float, float]]:
    """Six boxes: ``box`` shifted by ``fraction`` of its longer side left/right/up/down, and
    scaled about its centre by ``exp(+fraction)`` and ``exp(-fraction)``."""
    from detector.crops import view_boxes

    out = view_boxes(box, fraction)[1:]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    for f in (np.exp(fraction), np.exp(-fraction)):
        out.append((cx - hw * f, cy - hh * f, cx + hw * f, cy + hh * f))
    return out


def _images(path: Path, media: str, frames: int, unreadable: list[str]) -> Iterator[np.ndarray]:
    """The picture, or ``frames`` evenly spaced frames; a file that fails to decode is added to
    ``unreadable`` (with the reason) instead of raising."""
    from detector.media import MediaError, decode_image
    from detector.video import Sampling, iter_sampled_frames

    try:
        if media == "image":
            yield decode_image(path.read_bytes())
            return
        with iter_sampled_frames(path, Sampling("count", frames)) as it:
            for frame in it:
                yield frame.image_rgb
    except MediaError as exc:
        unreadable.append(f"{path}: {exc}")


def _split_items(card: str | Path, root: str | Path, split: str) -> tuple[Any, list[Any]]:
    """The dataset card and its items of ``split`` (``ValueError`` when there are none)."""
    from training.cards import list_items, load_card

    dcard = load_card(card)
    items = [it for it in list_items(dcard, root) if it.split == split]
    if not items:
        raise ValueError(f"no items in split {split!r} of {dcard.name}")
    return dcard, items


def _face_crops(
    image: np.ndarray, boxes: Sequence[Sequence[float]], card: Any, multi_crop: bool
) -> np.ndarray:
    """THE crop of each box, or its :data:`detector.crops.VIEWS` crops one after the other."""
    from detector.crops import crop_boxes

    return crop_boxes(image, boxes, card.crop_margin, card.input_size, _views(multi_crop))


def _views(multi_crop: bool) -> int:
    from detector.crops import VIEWS

    return VIEWS if multi_crop else 1


def _save(report: dict[str, Any], out: str | Path | None, name: str) -> dict[str, Any]:
    """Write ``report`` as ``out/name`` (when ``out`` is given) and note the file in it."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(report, indent=2), encoding="utf-8")
        report["file"] = str(out / name)
    return report


def box_stability(
    model: str | Path,
    card: str | Path,
    root: str | Path,
    *,
    split: str = "test",
    frames: int = 4,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    limit: int | None = None,
    multi_crop: bool = False,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Box-jitter stability of ONNX ``model`` on ``split`` of dataset ``card`` under ``root``.

    ``limit``: at most this many items (a seeded random subset). ``multi_crop``: score every
    box (the detector's and each moved one) as the mean of its 4 views, as ``facetrust scan``
    does for photos. Writes ``jitter.json`` to ``out`` if given. Frames without a face add
    nothing; files that cannot be decoded are listed under ``unreadable``.
    """
    from detector.analyze import create_analyzer

    if not fractions or any(not (0.0 < f <= 0.25) for f in fractions):
        raise ValueError("each jitter fraction must be within (0, 0.25]")
    if limit is not None and limit < 1:
        raise ValueError("--limit must be >= 1")
    dcard, items = _split_items(card, root, split)
    if limit is not None and len(items) > limit:
        rng = np.random.default_rng(0)
        keep = sorted(rng.choice(len(items), limit, replace=False).tolist())
        items = [items[k] for k in keep]
    analyzer = create_analyzer(model)
    mcard = analyzer.card
    unreadable: list[str] = []
    base_p: list[float] = []
    base_l: list[float] = []
    labels: list[int] = []
    moved_p: dict[float, list[np.ndarray]] = {f: [] for f in fractions}
    moved_l: dict[float, list[np.ndarray]] = {f: [] for f in fractions}
    for n, it in enumerate(items):
        for image in _images(it.path, it.media, frames, unreadable):
            for face in analyzer.face_detector.detect(image):
                boxes = [face.box] + [b for f in fractions for b in moved_boxes(face.box, f)]
                crops = _face_crops(image, boxes, mcard, multi_crop)
                scored = analyzer.classifier.score(crops, views=_views(multi_crop))
                base_p.append(float(scored.probabilities[0]))
                base_l.append(float(scored.logits[0]))
                labels.append(it.label)
                for k, f in enumerate(fractions):
                    sl = slice(1 + 6 * k, 7 + 6 * k)
                    moved_p[f].append(scored.probabilities[sl])
                    moved_l[f].append(scored.logits[sl])
        if progress:
            progress(n + 1, len(items))
    report: dict[str, Any] = {
        "model": {"path": str(model), "name": mcard.name, "version": mcard.version},
        "dataset": {"card": dcard.name, "split": split, "items": len(items), "frames_per_video": frames},
        "crop_views": _views(multi_crop),
        "unreadable": unreadable,
        "faces": len(base_p),
        "faces_by_label": {"real": labels.count(0), "fake": labels.count(1)},
        "fractions": {},
    }
    if base_p:
        p0, l0 = np.array(base_p), np.array(base_l)
        for f in fractions:
            dp = np.abs(np.stack(moved_p[f]) - p0[:, None])
            dl = np.abs(np.stack(moved_l[f]) - l0[:, None])
            row: dict[str, Any] = {
                "mean_abs_dprob": float(dp.mean()),
                "p95_abs_dprob": float(np.quantile(dp, 0.95)),
                "mean_abs_dlogit": float(dl.mean()),
                "p95_abs_dlogit": float(np.quantile(dl, 0.95)),
            }
            moved = np.stack(moved_p[f])
            for name, t in (("balanced", mcard.threshold_balanced), ("strict", mcard.threshold_strict)):
                flips = ((moved >= t) != (p0 >= t)[:, None]).any(axis=1)
                row[f"label_flip_{name}"] = float(flips.mean())
            report["fractions"][str(f)] = row
    return _save(report, out, "jitter.json")


#: The picture-wide degradations of :func:`quality_shift` (name -> function of an RGB image).
DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg60": lambda im: jpeg(im, 60),
    "jpeg30": lambda im: jpeg(im, 30),
    "half_resolution": lambda im: down_up(im, 0.5),
    "quarter_resolution": lambda im: down_up(im, 0.25),
    "blur_sigma1.5": lambda im: cv2.GaussianBlur(im, (0, 0), 1.5),
}


#: Phone photo codecs for ``degrade --codec``: name -> (format, quality).
CODECS: dict[str, tuple[str, int]] = {"jpeg90": ("jpeg", 90), "heic80": ("heic", 80), "avif80": ("avif", 80)}


def encode_photo(image: np.ndarray, fmt: str, quality: int, *, heic_tile: int = 0) -> bytes:
    """``image`` (RGB uint8) saved as ``fmt`` (``jpeg``, ``heic``, ``avif``) at ``quality``; a HEIC
    in ``heic_tile`` px tiles as iPhones store it (0: one picture)."""
    import io

    from PIL import Image

    pil, buf = Image.fromarray(np.ascontiguousarray(image)), io.BytesIO()
    if fmt == "heic":
        try:
            import pillow_heif
        except ImportError as exc:
            raise ValueError("--codec heic80 needs pillow-heif: pip install 'facetrust[heic]'") from exc
        tiles = {"tile_size": heic_tile} if heic_tile else {}
        pillow_heif.from_pillow(pil).save(buf, quality=quality, **tiles)
    else:
        pil.save(buf, {"jpeg": "JPEG", "avif": "AVIF"}[fmt], quality=quality)
    return buf.getvalue()


class _Recoded:
    """A :data:`CODECS` entry as a degradation; counts the bytes and pixels it encoded."""

    def __init__(self, fmt: str, quality: int) -> None:
        self.fmt, self.quality, self.bytes, self.pixels = fmt, quality, 0, 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from detector.media import decode_image

        data = encode_photo(image, self.fmt, self.quality)
        self.bytes += len(data)
        self.pixels += image.shape[0] * image.shape[1]
        return decode_image(data)


def quality_shift(
    model: str | Path,
    card: str | Path,
    root: str | Path,
    *,
    split: str = "test",
    frames: int = 4,
    max_real: int | None = None,
    multi_crop: bool = False,
    face_sizes: Sequence[int] = (),
    codecs: Sequence[str] = (),
    edge_cuts: Sequence[float] = (),
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Scores of ONNX ``model`` on ``split`` under each of :data:`DEGRADATIONS` (see module doc)
    and each of ``codecs`` (names in :data:`CODECS`).

    ``max_real``: at most this many real items (seeded); every fake item is kept.
    ``multi_crop``: score each face as the mean of its 4 views. ``face_sizes``: box sides (px)
    for the face-size check, ``edge_cuts``: shares of the box for the cut-face check (module
    doc). Writes ``degrade.json`` to ``out`` if given. Files
    that cannot be decoded are listed under ``unreadable``.
    """
    from detector.analyze import create_analyzer

    if max_real is not None and max_real < 1:
        raise ValueError("--max-real must be >= 1")
    sizes = sorted({int(s) for s in face_sizes})
    cuts = sorted({float(f) for f in edge_cuts})
    if any(not (-0.15 <= f < 0.5) or f == 0.0 for f in cuts):
        raise ValueError("each --edge-cut must be within [-0.15, 0.5) and not 0: the share of the face box "
                         "cut off (negative: the picture ends that far outside the box, a black border)")
    unknown = sorted(set(codecs) - set(CODECS))
    if unknown:
        raise ValueError(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    recoders = {name: _Recoded(*CODECS[name]) for name in dict.fromkeys(codecs)}
    if "heic80" in recoders:
        encode_photo(np.zeros((16, 16, 3), np.uint8), "heic", 80)  # fail now if pillow-heif is missing
    dcard, items = _split_items(card, root, split)
    reals = [k for k, it in enumerate(items) if it.label == 0]
    if max_real is not None and len(reals) > max_real:
        drop = set(reals) - set(np.random.default_rng(0).choice(reals, max_real, replace=False).tolist())
        items = [it for k, it in enumerate(items) if k not in drop]
    analyzer = create_analyzer(model)
    mcard = analyzer.card
    if sizes and sizes[0] < mcard.min_face_size:
        raise ValueError(f"--face-size must be >= the model's min_face_size ({mcard.min_face_size:g} px): "
                         "the detector looks for no smaller face")
    unreadable: list[str] = []
    degradations: dict[str, Callable[[np.ndarray], np.ndarray]] = {**DEGRADATIONS, **recoders}
    names = ["original", *degradations]
    probs: dict[str, list[float]] = {n: [] for n in names}
    labels: list[int] = []
    # per size: (label, probability or None when the detector lost the face)
    shrunk: dict[int, list[tuple[int, float | None | bool]]] = {s: [] for s in sizes}
    # per share: (label, side, probability or None when lost or not cut, share of the found box
    # outside, whether the picture could be cut there)
    cut: dict[float, list[tuple[int, str, float | None, float, bool]]] = {f: [] for f in cuts}
    outside: list[tuple[int, float, float]] = []  # every face scored: (label, outside share, probability)
    for n, it in enumerate(items):
        for image in _images(it.path, it.media, frames, unreadable):
            faces = analyzer.face_detector.detect(image)
            if not faces:
                continue
            copies = {"original": image} | {k: f(image) for k, f in degradations.items()}
            for name, pic in copies.items():
                crops = _face_crops(pic, [f.box for f in faces], mcard, multi_crop)
                scored = analyzer.classifier.score(crops, views=_views(multi_crop))
                probs[name] += scored.probabilities.tolist()
                if name == "original" and cuts:
                    outside += [(it.label, outside_fraction(f.box, image.shape[1], image.shape[0]), float(p))
                                for f, p in zip(faces, scored.probabilities, strict=True)]
            labels += [it.label] * len(faces)
            for face in faces:
                for size in sizes:
                    score = _shrunk_score(analyzer, image, face.box, size, multi_crop)
                    shrunk[size].append((it.label, score))
                if outside_fraction(face.box, image.shape[1], image.shape[0]) > 0.0:
                    continue  # already cut: the check cuts faces that were whole
                for f in cuts:
                    for side in EDGE_SIDES:
                        got = _cut_score(analyzer, image, face.box, f, side, multi_crop)
                        cut[f].append((it.label, side, *got))
                        if got[0] is not None and got[2]:
                            outside.append((it.label, got[1], got[0]))
        if progress:
            progress(n + 1, len(items))
    y = np.array(labels, dtype=np.int64)
    report: dict[str, Any] = {
        "model": {"path": str(model), "name": mcard.name, "version": mcard.version},
        "dataset": {"card": dcard.name, "split": split, "items": len(items), "frames_per_video": frames},
        "crop_views": _views(multi_crop),
        "unreadable": unreadable,
        "faces_by_label": {"real": int((y == 0).sum()), "fake": int((y == 1).sum())},
        "degradations": {},
    }
    for name in names:
        p = np.array(probs[name], dtype=np.float64)
        row: dict[str, Any] = {"auc": binary_metrics(y, p)["auc"] if len(p) else None}
        for lab, key in ((0, "real"), (1, "fake")):
            sel = p[y == lab]
            row[key] = None if not len(sel) else {
                "mean_probability": float(sel.mean()),
                "above_balanced": float((sel >= mcard.threshold_balanced).mean()),
                "above_strict": float((sel >= mcard.threshold_strict).mean()),
            }
        if name in recoders and recoders[name].pixels:
            row["bits_per_pixel"] = 8.0 * recoders[name].bytes / recoders[name].pixels
        report["degradations"][name] = row
    if sizes:
        report["face_sizes"] = {}
        for size in sizes:
            row = {}
            for lab, key in ((0, "real"), (1, "fake")):
                got = [p for y_, p in shrunk[size] if y_ == lab and p is not False]
                sel = np.array([p for p in got if p is not None], dtype=np.float64)
                row[key] = {
                    "faces": len(sel),
                    "not_found": len(got) - len(sel),
                    "too_small": sum(1 for y_, p in shrunk[size] if y_ == lab and p is False),
                    "mean_probability": float(sel.mean()) if len(sel) else None,
                    "above_balanced": float((sel >= mcard.threshold_balanced).mean()) if len(sel) else None,
                    "above_strict": float((sel >= mcard.threshold_strict).mean()) if len(sel) else None,
                }
            report["face_sizes"][str(size)] = row
    if cuts:
        report["edge_cuts"] = {str(f): _cut_rows(cut[f], mcard) for f in cuts}
        report["by_outside"] = _outside_bins(outside, mcard)
    return _save(report, out, "degrade.json")


#: The picture edges ``degrade --edge-cut`` cuts a face by.
EDGE_SIDES = ("bottom", "top", "left", "right")
#: Bin edges of ``by_outside`` (share of the face box outside the picture): whole faces first.
OUTSIDE_BINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def cut_picture(
    image: np.ndarray, box: Sequence[float], fraction: float, side: str
) -> tuple[np.ndarray, int, int]:
    """``image`` cut so that ``fraction`` of face ``box`` (its height for ``bottom``/``top``, its
    width for ``left``/``right``) lies beyond that edge (negative: the edge ``-fraction`` of it
    outside the box); returns the copy and its offset ``(dx,
    dy)`` in ``image`` (subtract it from ``image`` coordinates)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    h, w = image.shape[:2]
    dy_box, dx_box = fraction * (y1 - y0), fraction * (x1 - x0)
    if side == "bottom":
        return image[: max(1, min(h, int(np.ceil(y1 - dy_box))))], 0, 0
    if side == "top":
        top = min(h - 1, max(0, int(np.floor(y0 + dy_box))))
        return image[top:], 0, top
    if side == "right":
        return image[:, : max(1, min(w, int(np.ceil(x1 - dx_box))))], 0, 0
    if side == "left":
        left = min(w - 1, max(0, int(np.floor(x0 + dx_box))))
        return image[:, left:], left, 0
    raise ValueError(f"side must be one of {', '.join(EDGE_SIDES)}, not {side!r}")


def _cut_score(
    analyzer: Any, image: np.ndarray, box: Sequence[float], fraction: float, side: str, multi_crop: bool
) -> tuple[float | None, float, bool]:
    """The face at ``box`` scored from :func:`cut_picture`'s copy, found again there by the
    detector (the found box that contains the face's centre and overlaps it most): its
    probability (None when not found) and the share of the found box outside the copy, and
    True; ``(None, nan, False)`` without scoring when the copy is the whole picture (a negative
    ``fraction`` where the picture already ends closer to the box)."""
    pic, dx, dy = cut_picture(np.ascontiguousarray(image), box, fraction, side)
    if pic.shape == image.shape:
        return None, float("nan"), False
    pic = np.ascontiguousarray(pic)
    x0, y0, x1, y1 = (float(box[0]) - dx, float(box[1]) - dy, float(box[2]) - dx, float(box[3]) - dy)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    found = [g for g in analyzer.face_detector.detect(pic)
             if g.box[0] <= cx <= g.box[2] and g.box[1] <= cy <= g.box[3]]
    if not found:
        return None, float("nan"), True

    def overlap(g: Any) -> float:
        iw = max(0.0, min(x1, g.box[2]) - max(x0, g.box[0]))
        ih = max(0.0, min(y1, g.box[3]) - max(y0, g.box[1]))
        return iw * ih

    best = max(found, key=overlap)
    crops = _face_crops(pic, [best.box], analyzer.card, multi_crop)
    prob = float(analyzer.classifier.score(crops, views=_views(multi_crop)).probabilities[0])
    return prob, outside_fraction(best.box, pic.shape[1], pic.shape[0]), True


def _rates(probs: Sequence[float], card: Any) -> dict[str, Any]:
    sel = np.asarray(probs, dtype=np.float64)
    return {
        "faces": int(len(sel)),
        "mean_probability": float(sel.mean()) if len(sel) else None,
        "above_balanced": float((sel >= card.threshold_balanced).mean()) if len(sel) else None,
        "above_strict": float((sel >= card.threshold_strict).mean()) if len(sel) else None,
    }


def _cut_rows(rows: Sequence[tuple[int, str, float | None, float, bool]], card: Any) -> dict[str, Any]:
    """Per label: the four sides pooled, then per side (see the module doc); ``not_cut``: copies
    left out because the picture already ended closer to the box than a negative share."""
    out: dict[str, Any] = {}
    for lab, key in ((0, "real"), (1, "fake")):
        mine = [r for r in rows if r[0] == lab and r[4]]
        found = [r for r in mine if r[2] is not None]
        row = _rates([r[2] for r in found], card)
        row["not_found"] = len(mine) - len(found)
        row["not_cut"] = sum(1 for r in rows if r[0] == lab and not r[4])
        row["median_outside"] = float(np.median([r[3] for r in found])) if found else None
        row["sides"] = {
            side: _rates([r[2] for r in found if r[1] == side], card)
            | {"not_found": sum(1 for r in mine if r[1] == side and r[2] is None),
               "not_cut": sum(1 for r in rows if r[0] == lab and r[1] == side and not r[4])}
            for side in EDGE_SIDES
        }
        out[key] = row
    return out


def _outside_bins(faces: Sequence[tuple[int, float, float]], card: Any) -> dict[str, Any]:
    """Every face scored (original and cut copies) per bin of :data:`OUTSIDE_BINS`: ``"0"`` for
    faces wholly inside, then ``"lo-hi"`` (lo excluded, hi included)."""
    out: dict[str, Any] = {}
    for k, hi in enumerate(OUTSIDE_BINS):
        lo = OUTSIDE_BINS[k - 1] if k else None
        name = "0" if lo is None else f"{lo:g}-{hi:g}"
        inside = [(y, p) for y, share, p in faces if (share <= 0.0 if lo is None else lo < share <= hi)]
        out[name] = {key: _rates([p for y, p in inside if y == lab], card)
                     for lab, key in ((0, "real"), (1, "fake"))}
    return out


def _shrunk_score(
    analyzer: Any, image: np.ndarray, box: Sequence[float], size: int, multi_crop: bool
) -> float | None | bool:
    """The face at ``box`` scored from a copy of ``image`` shrunk until the box side is ``size``
    px, found again there by the detector: its probability, None when the detector no longer
    finds it, False when the face is smaller than 1.15 ``size`` already (not measured)."""
    side = max(box[2] - box[0], box[3] - box[1])
    if side < 1.15 * size:
        return False
    k = size / side
    small = cv2.resize(image, (max(1, round(image.shape[1] * k)), max(1, round(image.shape[0] * k))),
                       interpolation=cv2.INTER_AREA)
    cx, cy = (box[0] + box[2]) / 2 * k, (box[1] + box[3]) / 2 * k
    found = [g for g in analyzer.face_detector.detect(small)
             if g.box[0] <= cx <= g.box[2] and g.box[1] <= cy <= g.box[3]]
    if not found:
        return None
    crops = _face_crops(small, [found[0].box], analyzer.card, multi_crop)
    return float(analyzer.classifier.score(crops, views=_views(multi_crop)).probabilities[0])
