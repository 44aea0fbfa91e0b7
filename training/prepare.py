"""``facetrust prepare``: detect and crop every face of a corpus once, for training.

For each media file a dataset card lists (:func:`training.cards.list_items`):

1. decode it exactly as serving does: images with :func:`detector.media.decode_image`,
   videos (and animated GIFs) with :func:`detector.video.iter_sampled_frames`, ``frames``
   evenly spaced frames (``Sampling("count", frames)``);
2. detect faces with serving's own detector (:class:`detector.faces.FaceDetector`, looking
   for faces from ``min_face`` pixels as serving looks from the card's ``min_face_size``,
   which training sets to the same ``min_face``: the boxes are serving's boxes), then keep
   faces with ``score >= min_score`` and a box side ``>= min_face`` pixels. Real-labelled media keep
   every such face. **Fake-labelled media keep only the largest face of each frame**: in a
   face swap or a talking-head video the manipulated face is the main one, while bystanders
   (or the other people of a multi-face picture) are often untouched, and labelling them fake
   would teach the model that real faces are fake;
3. store :func:`detector.crops.crop_face` ``(image, box, margin, size)`` (a wider margin than
   the model's, so that augmentation and blending have room) as JPEG quality 95 under
   ``OUT/crops/<media path>/<frame>_<face>.jpg``;
4. with ``dense_landmarks``, 68-point landmarks (:mod:`training.landmarks`) on the stored
   crop; a fit that disagrees with MTCNN's 5 points (see :func:`training.landmarks.agreement`)
   or a missing dlib gives ``null``.

``OUT/index.jsonl`` gets one JSON object per crop::

    {id, file, label (0 real / 1 fake), method, group, split, role, source (media path relative
     to ROOT), frame, time, det_score, box, landmarks5, landmarks68, image_box, image_size,
     orientation}

``box``/``landmarks5``/``landmarks68`` are in *crop* pixels (``image_box`` is the box in the
original frame; a face the detector found turned, ``orientation`` degrees clockwise, is
stored turned back upright, as serving scores it): ``crop_face(crop, box, model_margin,
model_size)`` on the stored crop gives serving's crop. ``OUT/meta.json`` holds the card,
settings, detector settings and counts; ``OUT/failures.jsonl`` one line per unreadable file
(logged and counted, never fatal).

Resumable: each finished media file leaves ``OUT/sources/<hash>.json`` (written atomically;
its crops and records, or its failure); a rerun skips those and rebuilds ``index.jsonl``,
``failures.jsonl`` and ``meta.json`` from them. Settings must match the earlier run's.
Files are processed in parallel by ``workers`` processes (each ONNX Runtime session single
threaded).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.cards import EXCLUDED, Card, Item, hash_unit, list_items, load_card, summarize

log = logging.getLogger(__name__)

INDEX, META, FAILURES, SOURCES, CROPS = "index.jsonl", "meta.json", "failures.jsonl", "sources", "crops"
JPEG_QUALITY = 95


class PrepareError(RuntimeError):
    """The preparation cannot run (bad settings, mismatching earlier run, ...)."""


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides the content of a prepared folder (checked on resume)."""

    card: str
    frames: int = 32
    margin: float = 2.0
    size: int = 256
    min_face: int = 40
    min_score: float = 0.9
    dense_landmarks: bool = True
    holdout_methods: tuple[str, ...] = ()
    role: str | None = "train"
    detector_min_face: int | None = None

    def check(self) -> None:
        """Raise :class:`PrepareError` for out-of-range values."""
        if self.frames < 1:
            raise PrepareError("frames must be >= 1")
        if not 1.0 <= self.margin <= 4.0:
            raise PrepareError("margin must be within 1..4 (use a margin wider than the model's 1.3)")
        if not 16 <= self.size <= 2048:
            raise PrepareError("size must be within 16..2048 pixels")
        if self.min_face < 1:
            raise PrepareError("min_face must be >= 1 pixel")
        if not 0.0 <= self.min_score <= 1.0:
            raise PrepareError("min_score must be within 0..1")
        if self.role not in (None, "train", "dev"):
            raise PrepareError("role must be train, dev or None (both)")
        if self.detector_min_face is not None and self.detector_min_face < 1:
            raise PrepareError("detector_min_face must be >= 1 pixel (or None: from min_face, as serving)")


@dataclass
class _Task:
    rel: str
    path: str
    label: int
    method: str
    group: str
    split: str
    role: str
    media: str
    key: str
    settings: PrepareSettings
    out: str


@dataclass
class _Result:
    rel: str
    key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    frames: int = 0
    faces_seen: int = 0
    lm68_null: int = 0
    seconds: float = 0.0
    media: str = "image"


def source_key(rel: str) -> str:
    """Stable short file name for a media path (its done-marker name)."""
    return hashlib.sha1(rel.encode("utf-8")).hexdigest()[:20]


# -- the per-process worker ------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _detector_kwargs(s: PrepareSettings) -> dict[str, Any]:
    """The face detector's settings: it looks for faces from ``min_face`` pixels, as serving
    looks from the card's ``min_face_size`` (the trained model's ``min_face``), unless
    ``detector_min_face`` says otherwise."""
    size = s.min_face if s.detector_min_face is None else s.detector_min_face
    return {"min_face_size": int(size)}


def _init_worker(threads: int, dense: bool, detector_kwargs: dict[str, Any]) -> None:
    from detector.faces import create_face_detector

    _STATE["detector"] = create_face_detector(threads=threads, **detector_kwargs)
    _STATE["landmarker"] = None
    _STATE["landmark_error"] = None
    if dense:
        from training.landmarks import LandmarkError, create_landmarker

        try:
            _STATE["landmarker"] = create_landmarker()
        except LandmarkError as exc:
            _STATE["landmark_error"] = str(exc)


def _frames_of(task: _Task) -> Iterator[tuple[int, float | None, np.ndarray]]:
    """(frame index, time or None, RGB image) of an item, decoded as serving decodes it."""
    from detector.media import decode_image, media_type_of, sniff
    from detector.video import Sampling, iter_sampled_frames

    with open(task.path, "rb") as fh:
        data = fh.read()
    kind = sniff(data[:64])
    if kind is not None and media_type_of(kind, data) == "image":
        yield 0, None, decode_image(data)
        return
    if kind is None:
        decode_image(data)  # raises MediaError(unsupported/unreadable) with the right message
    del data
    with iter_sampled_frames(task.path, Sampling("count", task.settings.frames)) as frames:
        for f in frames:
            yield int(f.index), float(f.time), f.image_rgb


def _keep(faces: list[Any], label: int, s: PrepareSettings) -> list[tuple[int, Any]]:
    ok = [
        (k, f) for k, f in enumerate(faces)
        if f.score >= s.min_score and min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= s.min_face
    ]
    if label == 1 and len(ok) > 1:  # fakes: only the largest face of the frame (see module doc)
        ok = [max(ok, key=lambda kf: (kf[1].box[2] - kf[1].box[0]) * (kf[1].box[3] - kf[1].box[1]))]
    return ok


def _r(a: Any, nd: int = 2) -> Any:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _process(task: _Task) -> _Result:
    """Decode, detect, crop and describe one media file; writes its crops and done-marker."""
    from detector.crops import crop_face, to_crop_coords
    from detector.media import MediaError

    t0 = time.perf_counter()
    res = _Result(task.rel, task.key, media=task.media)
    out = Path(task.out)
    crop_dir = out / CROPS / Path(task.rel).with_suffix("")
    try:
        batch: list[tuple[int, float | None, np.ndarray]] = []
        gen = _frames_of(task)
        for frame in gen:
            batch.append(frame)
            if len(batch) >= 8:
                _detect_batch(task, batch, res, crop_dir, crop_face, to_crop_coords)
                batch = []
        if batch:
            _detect_batch(task, batch, res, crop_dir, crop_face, to_crop_coords)
    except MediaError as exc:
        res.failure = {"source": task.rel, "status": str(getattr(exc.status, "value", exc.status)),
                       "error": str(exc)}
    except (OSError, ValueError, cv2.error) as exc:
        res.failure = {"source": task.rel, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    if res.failure:
        res.records = []
    res.seconds = time.perf_counter() - t0
    _write_marker(out, res)
    return res


def _detect_batch(task: _Task, batch: list[tuple[int, float | None, np.ndarray]], res: _Result,
                  crop_dir: Path, crop_face: Any, to_crop_coords: Any) -> None:
    s = task.settings
    detections = _STATE["detector"].detect_batch([img for _, _, img in batch])
    landmarker = _STATE.get("landmarker")
    from detector.crops import turn_back
    from training.landmarks import MAX_DISAGREEMENT, agreement

    for (index, t, img), faces in zip(batch, detections, strict=True):
        res.frames += 1
        res.faces_seen += len(faces)
        for k, face in _keep(faces, task.label, s):
            # a turned face is stored turned back, as serving scores it (detector.crops.crop_boxes)
            pic, fbox, fmarks = turn_back(img, face.box, face.orientation, face.landmarks)
            crop = crop_face(pic, fbox, s.margin, s.size)
            corners = to_crop_coords([fbox[:2], fbox[2:4]], fbox, s.margin, s.size)
            box = corners.reshape(-1).tolist()
            lm5 = to_crop_coords(fmarks, fbox, s.margin, s.size)
            lm68 = None
            if landmarker is not None:
                pts = landmarker(crop, lm5)
                if agreement(pts, lm5) <= MAX_DISAGREEMENT:
                    lm68 = _r(pts, 1)
            if lm68 is None:
                res.lm68_null += 1
            name = f"{index:06d}_{k}.jpg"
            crop_dir.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise ValueError("JPEG encoding failed")
            (crop_dir / name).write_bytes(buf.tobytes())
            res.records.append({
                "id": f"{task.key}-{index:06d}-{k}",
                "file": (crop_dir / name).relative_to(task.out).as_posix(),
                "label": task.label,
                "method": task.method,
                "group": task.group,
                "split": task.split,
                "role": task.role,
                "source": task.rel,
                "frame": index,
                "time": None if t is None else round(t, 4),
                "det_score": round(float(face.score), 5),
                "box": _r(box),
                "landmarks5": _r(lm5),
                "landmarks68": lm68,
                "image_box": _r(face.box),
                "orientation": int(face.orientation),
                "image_size": [int(img.shape[1]), int(img.shape[0])],
            })


def _write_marker(out: Path, res: _Result) -> None:
    path = out / SOURCES / f"{res.key}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(res)), encoding="utf-8")
    os.replace(tmp, path)


def _read_marker(out: Path, key: str) -> dict[str, Any] | None:
    path = out / SOURCES / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# -- driver -----------------------------------------------------------------------------------
def _select(items: list[Item], s: PrepareSettings, limit: int | None) -> list[Item]:
    chosen = [i for i in items if i.split != EXCLUDED and (s.role is None or i.role == s.role)]
    if limit is not None:
        chosen = sorted(chosen, key=lambda i: hash_unit(f"limit:{i.rel}"))[: max(0, int(limit))]
        chosen.sort(key=lambda i: i.rel)
    return chosen


def _detector_settings(s: PrepareSettings) -> dict[str, Any]:
    from detector.faces import FaceDetector

    params = inspect.signature(FaceDetector.__init__).parameters
    settings = {k: (list(v.default) if isinstance(v.default, tuple) else v.default)
                for k, v in params.items() if k not in ("self", "threads")}
    return {**settings, **_detector_kwargs(s)}


def _run_tasks(tasks: list[_Task], workers: int, dense: bool, detector_kwargs: dict[str, Any],
               progress: bool) -> Iterable[_Result]:
    if not tasks:
        return
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), unit="file", desc="prepare", smoothing=0.05)
    try:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker(max(1, (os.cpu_count() or 1)), dense, detector_kwargs)
            for t in tasks:
                r = _process(t)
                if bar is not None:
                    bar.update(1)
                yield r
            return
        # spawn, not fork: a forked child of a process that already ran ONNX Runtime (its
        # thread pool) can deadlock. Spawn re-imports a script's __main__ (scripts need the
        # usual `if __name__ == "__main__":` guard), never a package's `__main__` module.
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(1, dense, detector_kwargs)) as pool:
            for r in pool.imap_unordered(_process, tasks, chunksize=1 if len(tasks) < 200 else 4):
                if bar is not None:
                    bar.update(1)
                yield r
    finally:
        if bar is not None:
            bar.close()


def prepare_main(
    card: Card | str | Path,
    root: str | Path,
    out: str | Path,
    *,
    frames: int = 32,
    margin: float = 2.0,
    size: int = 256,
    min_face: int = 40,
    min_score: float = 0.9,
    workers: int = 2,
    limit: int | None = None,
    dense_landmarks: bool = True,
    holdout_methods: Iterable[str] = (),
    role: str | None = "train",
    detector_min_face: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare ``card``'s media under ``root`` into ``out``; returns the ``meta.json`` contents.

    ``role``: ``"train"`` (default) prepares the training-role files (all their splits),
    ``"dev"`` only the dev-role files, ``None`` both. ``limit``: at most that many media files
    (a fixed pseudo-random subset, for quick checks). ``detector_min_face``: ``None`` runs the
    detector as serving runs it for the model trained on these crops (looking for faces from
    ``min_face`` pixels, the card's ``min_face_size``: boxes identical to serving's); another
    value gives boxes a few pixels off serving's (the pyramid levels differ). ``retry_failed``: redo files
    that failed in an earlier run (otherwise they stay failed). See the module docstring.
    """
    t_start = time.perf_counter()
    card_obj = card if isinstance(card, Card) else load_card(card)
    settings = PrepareSettings(
        card=card_obj.name, frames=int(frames), margin=float(margin), size=int(size), min_face=int(min_face),
        min_score=float(min_score), dense_landmarks=bool(dense_landmarks),
        holdout_methods=tuple(holdout_methods), role=role,
        detector_min_face=None if detector_min_face is None else int(detector_min_face),
    )
    settings.check()
    if workers < 1:
        raise PrepareError("workers must be >= 1")
    root, out = Path(root), Path(out)
    items = list_items(card_obj, root, holdout_methods=settings.holdout_methods)
    chosen = _select(items, settings, limit)
    if not chosen:
        raise PrepareError(f"no media to prepare in {root} for card {card_obj.name} (role {role})")
    out.mkdir(parents=True, exist_ok=True)
    (out / SOURCES).mkdir(exist_ok=True)
    old = _load_json(out / META)
    if old and old.get("settings"):
        # settings added to this module later take their default in folders made before
        earlier = {**_jsonable(asdict(PrepareSettings(card=card_obj.name))), **old["settings"]}
        if earlier != _jsonable(asdict(settings)):
            raise PrepareError(
                f"{out} was prepared with other settings {old['settings']}; "
                "use a new folder or the same settings"
            )
        if old.get("root") and old["root"] != str(root.resolve()):
            raise PrepareError(
                f"{out} was prepared from {old['root']}, not {root.resolve()}; use a new folder"
            )
        if old.get("detector") and old["detector"] != _jsonable(_detector_settings(settings)):
            raise PrepareError(
                f"{out} was prepared with other face-detector settings {old['detector']} (this FaceTrust "
                f"detects with {_jsonable(_detector_settings(settings))}); use a new folder"
            )
    # Write the settings first so that an interrupted run is resumed with the same ones.
    _write_json(out / META, {**(old or {}), "settings": _jsonable(asdict(settings))})

    landmark_note = None
    if settings.dense_landmarks:
        from training.landmarks import LandmarkError, model_path

        try:
            import dlib  # noqa: F401

            model_path()
        except (ImportError, LandmarkError) as exc:
            landmark_note = f"68-point landmarks unavailable, stored as null: {exc}"
            log.warning("%s", landmark_note)

    todo, results = [], {}
    for it in chosen:
        key = source_key(it.rel)
        marker = _read_marker(out, key)
        if marker is not None and (marker.get("failure") is None or not retry_failed):
            results[it.rel] = marker
            continue
        todo.append(_Task(it.rel, str(it.path), it.label, it.method, it.group, it.split, it.role, it.media,
                          key, settings, str(out)))
    log.info("%s: %d media files, %d already done, %d to do", card_obj.name, len(chosen), len(results),
             len(todo))
    t_run = time.perf_counter()
    n_new = 0
    for r in _run_tasks(todo, workers, settings.dense_landmarks, _detector_kwargs(settings), progress):
        results[r.rel] = asdict(r)
        n_new += 1
    run_seconds = time.perf_counter() - t_run
    meta = _finish(card_obj, root, out, settings, items, chosen, results, n_new, run_seconds, landmark_note)
    meta["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 2)
    earlier_runs = float(((old or {}).get("timing") or {}).get("run_seconds_all_runs", 0.0))
    meta["timing"]["run_seconds_all_runs"] = round(earlier_runs + run_seconds, 2)
    _write_json(out / META, meta)
    return meta


def _finish(card: Card, root: Path, out: Path, settings: PrepareSettings, items: list[Item],
            chosen: list[Item], results: dict[str, dict[str, Any]], n_new: int, run_seconds: float,
            landmark_note: str | None) -> dict[str, Any]:
    records, failures = [], []
    for it in chosen:  # card order: a deterministic index whatever the worker order
        r = results.get(it.rel)
        if r is None:
            continue
        if r.get("failure"):
            failures.append(r["failure"])
        records.extend(r.get("records", []))
    _write_lines(out / INDEX, records)
    _write_lines(out / FAILURES, failures)
    done = [results[i.rel] for i in chosen if i.rel in results]
    ok = [r for r in done if not r.get("failure")]
    by_media: dict[str, list[float]] = {"image": [], "video": []}
    for r in ok:
        by_media.setdefault(r.get("media", "image"), []).append(float(r.get("seconds", 0.0)))
    counts = {
        "sources": len(chosen),
        "sources_done": len(done),
        "sources_new": n_new,
        "failures": len(failures),
        "failures_by_status": dict(Counter(f.get("status", "error") for f in failures)),
        "sources_without_face": sum(1 for r in ok if not r.get("records")),
        "frames": sum(int(r.get("frames", 0)) for r in ok),
        "crops": len(records),
        "landmarks68_null": sum(1 for rec in records if rec.get("landmarks68") is None),
        "crops_by_split_label": _count(records, "split"),
        "crops_by_method_label": _count(records, "method"),
    }
    return {
        "settings": _jsonable(asdict(settings)),
        "card": {"name": card.name, "title": card.title, "path": str(card.path) if card.path else None,
                 "layout": card.layout, "licence": card.licence},
        "root": str(root.resolve()),
        "margin": settings.margin,
        "size": settings.size,
        "frames": settings.frames,
        "detector": _detector_settings(settings),
        "crop_format": {"type": "jpeg", "quality": JPEG_QUALITY},
        "landmarks68": landmark_note or ("dlib shape_predictor_68_face_landmarks" if settings.dense_landmarks
                                         else "disabled"),
        "fake_faces": "largest face per frame",
        "items": summarize(items),
        "counts": counts,
        "timing": {
            "run_seconds": round(run_seconds, 2),
            "image_seconds_mean": _mean(by_media.get("image", [])),
            "video_seconds_mean": _mean(by_media.get("video", [])),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _count(records: list[dict[str, Any]], key: str) -> dict[str, int]:
    return {f"{k}/{lab}": n for (k, lab), n in sorted(Counter((r[key], r["label"]) for r in records).items())}


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise PrepareError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
