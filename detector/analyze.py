"""The analyzer: bytes or a path in, one :class:`~detector.schema.AnalysisResult` out.

Pipeline: sniff the format (allowlist) -> decode (image, or sampled video frames) ->
detect faces (MTCNN, batched) -> THE crop (:func:`detector.crops.crop_face` with the
card's margin and size) -> one classifier call per batch -> named aggregation rules
(:mod:`detector.aggregate`). Bad inputs never raise: the result's ``status`` says why
and carries no score. An unexpected exception becomes status ``error`` with its message.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from detector import aggregate
from detector._prefetch import Prefetch
from detector.card import ModelCard, resolve_min_face
from detector.classifier import Classifier, ScoreBatch, resolve_model_path
from detector.container import MAX_STEPS, UNCHECKED, trailing_bytes
from detector.crops import VIEWS, crop_boxes
from detector.media import (
    ANIMATABLE_KINDS,
    SNIFF_BYTES,
    MediaError,
    decode_image,
    describe_unknown,
    media_type_of,
    sha256_file,
    sniff,
    sniff_file,
)
from detector.schema import AnalysisResult, Face, Frame, ModelInfo, Status, Track, VideoInfo
from detector.tracks import link_tracks
from detector.video import Sampling, VideoLimits, iter_sampled_frames

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]
#: Called with each analysed picture's faces as the model crops them (card's margin and size,
#: turned upright; one crop per face, in the order of the result's faces, whatever
#: ``multi_crop``): ``(frame index, or None for a still image, uint8 [faces, S, S, 3])``. Not
#: called for pictures without faces. For reports (:mod:`detector.report`).
FaceCrops = Callable[[int | None, np.ndarray], None]


@dataclass(frozen=True)
class Limits:
    """Caps applied to every file; anything over them gets status ``too_large`` or ``timeout``.

    ``max_file_bytes``: size of the file; ``max_image_pixels`` / ``max_image_side``: a
    still image's width x height and longer side (checked from the header, before
    decoding); ``max_video_pixels``: width x height of a video frame;
    ``max_video_seconds``: duration; ``max_video_frames``: frames decoded;
    ``max_sampled_frames``: frames analysed (matters with ``--all-frames``);
    ``time_limit``: seconds of analysis per file (``timeout`` past it).
    """

    max_file_bytes: int = 2 * 1024**3
    max_image_pixels: int = 50_000_000
    max_image_side: int = 20_000
    max_video_pixels: int = 4096 * 2160
    max_video_seconds: float = 600.0
    max_video_frames: int = 20_000
    max_sampled_frames: int = 5_000
    time_limit: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_image_pixels", "max_image_side", "max_video_pixels",
                     "max_video_frames", "max_sampled_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Limits.{name} must be a whole number >= 1, not {v!r}")
        for name in ("max_video_seconds", "time_limit"):
            v = getattr(self, name)
            try:
                ok = not isinstance(v, (bool, str, bytes)) and math.isfinite(float(v)) and float(v) > 0
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise ValueError(f"Limits.{name} must be a finite number > 0, not {v!r}")

    def video_limits(self) -> VideoLimits:
        """The :class:`detector.video.VideoLimits` these limits imply."""
        return VideoLimits(
            max_duration_s=self.max_video_seconds,
            max_pixels_per_frame=self.max_video_pixels,
            max_decoded_frames=self.max_video_frames,
            max_sampled_frames=self.max_sampled_frames,
        )


#: A face whose model crop (``crop_margin`` x its box side) had to be enlarged more than this to
#: the model's input size carries less real detail than the model's input: the result gets a
#: :func:`detail_warning` when such faces decide the verdict. For the shipped model (160 px,
#: margin 1.3) that is a box side under 82.05 px; its card measures what small faces do to the
#: scores of real faces ("Face size").
LOW_DETAIL_UPSCALE = 1.5


def detail_warning(sides: Sequence[float], card: ModelCard) -> str | None:
    """The warning for a verdict decided by faces of box sides ``sides`` (pixels; their median
    counts), or None when they are large enough (see :data:`LOW_DETAIL_UPSCALE`)."""
    finite = [float(x) for x in sides if math.isfinite(float(x))]
    if not finite:
        return None
    side = float(np.median(finite))
    limit = card.input_size / (card.crop_margin * LOW_DETAIL_UPSCALE)
    if side >= limit:
        return None
    shown = math.floor(side * 10) / 10  # never rounded up to the limit
    return (
        f"the verdict rests on small faces (box side {shown:.1f} px, under {limit:.2f} px: "
        f"the model's {card.input_size} px crop was enlarged more than {LOW_DETAIL_UPSCALE:g}x): small "
        "real faces score higher than large ones, so a fake verdict here is weak evidence (model "
        "card, 'Face size')"
    )


def trailing_warning(kind: str | None, data: bytes | None = None, path: Path | None = None) -> str | None:
    """The warning for a file whose ``kind`` data end before the file does
    (:func:`detector.container.trailing_bytes`), or whose structure was too fragmented to
    check; None otherwise."""
    extra = trailing_bytes(kind, data=data, path=path) if kind else None
    name = {"mp4": "MP4/MOV", "webm": "WebM", "mkv": "Matroska"}.get(str(kind), str(kind).upper())
    if extra == UNCHECKED:
        return (f"this {name} file has over {MAX_STEPS:,} structures (segments, chunks, blocks or boxes): "
                "whether bytes were appended after its data was not checked")
    if not extra:
        return None
    example = "another file appended" if kind in ("mp4", "avi", "avif", "heic", "webm", "mkv") else (
        "a phone's motion-photo video, or another file appended")
    return (
        f"{extra:,} bytes follow the end of the {name} data ({example}): the SHA-256 covers them, "
        "the analysis does not"
    )


def _side(face: Face) -> float:
    return max(face.box[2] - face.box[0], face.box[3] - face.box[1])


class _Timer:
    """Accumulates seconds per stage."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {"decode": 0.0, "detect": 0.0, "classify": 0.0}

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since)
        return now

    def done(self) -> dict[str, float]:
        return {**{k: round(v, 6) for k, v in self.stages.items()},
                "total": round(time.perf_counter() - self.t0, 6)}


class _Timeout(Exception):
    """The per-file time limit was reached."""


class _Cancelled(Exception):
    """The caller's cancel() returned True."""


class _FileChanged(MediaError):
    """The file changed (replaced or written) while it was hashed and analysed."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            Status.unreadable,
            f"{path} changed while it was analysed (replaced or written to): no verdict, since "
            "the SHA-256 and the scores could come from different contents; analyse it again",
        )

    def __reduce__(self) -> tuple[object, tuple[str]]:  # type: ignore[override]
        return (MediaError, (self.status.value, self.message))  # type: ignore[return-value]


def _fingerprint(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced or written: device, inode, size, times (ns)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unchanged(path: Path, before: tuple[int, ...]) -> None:
    """Raise :class:`_FileChanged` when ``path`` is not the file fingerprinted ``before``."""
    try:
        now = _fingerprint(path)
    except OSError:
        now = ()
    if now != before:
        raise _FileChanged(path)


def _as_bytes(data: object) -> bytes:
    """``data`` as bytes: bytes, bytearray, memoryview or a uint8 numpy array (``TypeError``
    for anything else: an int would otherwise become that many zero bytes)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)) or (
        isinstance(data, np.ndarray) and data.dtype == np.uint8
    ):
        return bytes(memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data))
    raise TypeError(f"data must be bytes (or bytearray, memoryview, uint8 array), not {type(data).__name__}")


def _as_name(name: object) -> str:
    """A reported file name from ``name`` (str, a path, bytes; None: ``'upload'``)."""
    if name is None:
        return "upload"
    if isinstance(name, (bytes, os.PathLike)):
        return os.fsdecode(name)
    return str(name)


#: Sampled frames decoded ahead of detection, on a background thread (decoding overlaps with
#: detection and classification; each waiting 1080p frame holds about 6 MB).
_DECODE_AHEAD = 2

#: Default frame pixels per face-detector call: two 1080p frames (sixteen 512x512 ones), so
#: that a 2-core detector works on two frames at once (see ``FaceDetector.detect_batch``).
DETECT_PIXELS = 2 * 1920 * 1080

#: Frames with faces of a video that go through the detector's orientation pass before it is
#: left off for the rest of the video (unless one of their faces was turned): see ``_FrameBatch``.
ORIENT_PROBE_FRAMES = 4

#: Which media score each face as the mean logit of :data:`detector.crops.VIEWS` crops (the box
#: moved by 2% four ways, two of them mirrored: :func:`detector.crops.crop_views`) instead of
#: one. ``images`` (the default): a photo's single score is what decides, and the mean of the
#: views moves about half as much with the detector's box (MODEL_CARD.md); a video already
#: averages each face over its frames, and four crops per face would multiply its classifier time
#: by four.
MultiCrop = Literal["none", "images", "all"]
DEFAULT_MULTI_CROP: MultiCrop = "images"


class Analyzer:
    """Scores every face of images and videos with one classifier and one face detector.

    ``model``: a :class:`Classifier`, a path to an ONNX model with a card, or ``None`` for
    the shipped default. ``face_detector``: anything with ``detect``/``detect_batch``
    (default: :func:`detector.faces.create_face_detector` looking for faces of at least the
    card's ``min_face_size``: smaller faces than the model was trained on get no score).
    ``batch_size``: sampled video
    frames whose faces are classified in one call; ``detect_pixels``: frame pixels given
    to one ``detect_batch`` call (bounds the detector's memory; the default
    :data:`DETECT_PIXELS` is two 1080p frames, one per detection thread on 2 cores). Raises
    :class:`~detector.card.ModelCardError` for a missing or invalid model. ``multi_crop``: which
    media are scored with :data:`detector.crops.VIEWS` crops per face (:data:`MultiCrop`).
    ``min_face``: look for faces from this box side in pixels instead of the card's
    ``min_face_size`` (:func:`resolve_min_face`: faster, smaller faces are not reported; not with
    ``face_detector``, which keeps its own). Results record it as ``min_face_size``.
    """

    def __init__(
        self,
        model: Classifier | str | os.PathLike[str] | None = None,
        *,
        limits: Limits | None = None,
        face_detector: Any | None = None,
        batch_size: int = 16,
        detect_pixels: int = DETECT_PIXELS,
        threads: int | None = None,
        multi_crop: MultiCrop = DEFAULT_MULTI_CROP,
        min_face: int | None = None,
    ) -> None:
        if multi_crop not in get_args(MultiCrop):
            raise ValueError(f"multi_crop must be one of {get_args(MultiCrop)}, not {multi_crop!r}")
        self.multi_crop: MultiCrop = multi_crop
        if isinstance(model, Classifier):
            self.classifier = model
        else:
            self.classifier = Classifier(resolve_model_path(model), threads=threads)
        self.card: ModelCard = self.classifier.card
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a detector.analyze.Limits, not {type(limits).__name__}")
        self.limits = limits or Limits()
        self._owns_detector = face_detector is None
        if face_detector is None:
            from detector.faces import create_face_detector

            self.min_face_size: int | None = resolve_min_face(self.card, min_face)
            face_detector = create_face_detector(
                min_face_size=self.min_face_size, pyramid_face_size=self.card.min_face_size, threads=threads
            )
        elif min_face is not None:
            raise ValueError("min_face sets the analyzer's own face detector: pass it to your face_detector")
        else:
            own = getattr(face_detector, "min_face_size", None)
            known = isinstance(own, numbers.Real) and not isinstance(own, bool) and math.isfinite(own)
            self.min_face_size = math.ceil(own) if known else None
        self.face_detector = face_detector
        self.batch_size = max(1, int(batch_size))
        self.detect_pixels = max(1, int(detect_pixels))
        self.model_info = ModelInfo(
            name=self.card.name,
            version=self.card.version,
            threshold_balanced=self.card.threshold_balanced,
            threshold_strict=self.card.threshold_strict,
        )

    # -- public API --------------------------------------------------------------------
    def close(self) -> None:
        """Stop the detection threads of the face detector this analyzer made (one passed in is
        the caller's to close). Safe while other threads analyse; a later call starts new ones."""
        close = getattr(self.face_detector, "close", None) if self._owns_detector else None
        if close is not None:
            close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def analyze_path(
        self,
        path: str | os.PathLike[str],
        *,
        sampling: Sampling | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        face_crops: FaceCrops | None = None,
    ) -> AnalysisResult:
        """Analyse one file (image or video, recognised by its content); see :data:`FaceCrops`."""
        path = Path(path)
        timer = _Timer()
        base = self._base(str(path))
        try:
            before = self._read_file_facts(path, base)
            base.media_type = _file_kind(path)
            if base.media_type == "image":
                result = self._image(path.read_bytes(), str(path), base, timer, face_crops, cancel)
            else:
                result = self._video(
                    path, str(path), base, timer, sampling, progress, cancel, face_crops
                )
            _unchanged(path, before)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status
            result = self._failed(base, exc, timer)
        return result

    def analyze_bytes(
        self,
        data: bytes,
        name: str,
        *,
        sampling: Sampling | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        face_crops: FaceCrops | None = None,
    ) -> AnalysisResult:
        """Analyse an in-memory file (bytes, bytearray, memoryview or a uint8 array of them);
        videos go through a temporary file, always removed."""
        timer = _Timer()
        data, name = _as_bytes(data), _as_name(name)
        base = self._bytes_base(data, name)
        try:
            self._check_size(len(data))
            base.media_type = _media_kind(data[:SNIFF_BYTES], lambda: data)
            if base.media_type == "image":
                return self._image(data, name, base, timer, face_crops, cancel)
            suffix = re.sub(r"[^A-Za-z0-9.]", "", Path(name).suffix)[:16]
            fd, tmp = tempfile.mkstemp(prefix="facetrust-", suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                return self._video(
                    Path(tmp), name, base, timer, sampling, progress, cancel, face_crops
                )
            finally:
                os.unlink(tmp)
        except Exception as exc:  # noqa: BLE001
            return self._failed(base, exc, timer)

    def analyze_image(
        self,
        data: bytes,
        name: str,
        *,
        cancel: Cancel | None = None,
        face_crops: FaceCrops | None = None,
    ) -> AnalysisResult:
        """Analyse an encoded still image (JPEG, PNG, ... as allowed by :func:`sniff`); see
        :data:`FaceCrops`."""
        timer = _Timer()
        data, name = _as_bytes(data), _as_name(name)
        base = self._bytes_base(data, name)
        try:
            self._check_size(len(data))
            if _media_kind(data[:SNIFF_BYTES], lambda: data) != "image":
                raise MediaError(Status.unsupported, "this is a video, not a still image")
            base.media_type = "image"  # from the magic bytes, even if decoding then fails
            return self._image(data, name, base, timer, face_crops, cancel)
        except Exception as exc:  # noqa: BLE001
            return self._failed(base, exc, timer)

    def analyze_video(
        self,
        path: str | os.PathLike[str],
        *,
        sampling: Sampling | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        name: str | None = None,
        face_crops: FaceCrops | None = None,
    ) -> AnalysisResult:
        """Analyse a video file; ``name`` is reported as the result's path (default: ``path``)."""
        path = Path(path)
        timer = _Timer()
        base = self._base(_as_name(name) if name is not None else str(path))
        try:
            before = self._read_file_facts(path, base)
            if _file_kind(path) == "image":
                base.media_type = "image"
                raise MediaError(Status.unsupported, "this is a still image, not a video")
            base.media_type = "video"
            result = self._video(path, base.path, base, timer, sampling, progress, cancel, face_crops)
            _unchanged(path, before)
            return result
        except Exception as exc:  # noqa: BLE001
            return self._failed(base, exc, timer)

    # -- internals ---------------------------------------------------------------------
    def _check_size(self, size: int) -> int:
        """``size`` if within ``limits.max_file_bytes``; else ``MediaError('too_large')``."""
        if size > self.limits.max_file_bytes:
            limit = self.limits.max_file_bytes
            raise MediaError(Status.too_large, f"file is {size:,} bytes, over the {limit:,}-byte limit")
        return size

    def _base(self, name: str) -> AnalysisResult:
        return AnalysisResult(path=name, status=Status.error, model=self.model_info)

    def _bytes_base(self, data: bytes, name: str) -> AnalysisResult:
        """A result skeleton for in-memory bytes: size and SHA-256 filled in."""
        base = self._base(name)
        base.size_bytes = len(data)
        base.sha256 = hashlib.sha256(data).hexdigest()
        return base

    def _read_file_facts(self, path: Path, base: AnalysisResult) -> tuple[int, ...]:
        """Fill ``base``'s size and SHA-256 from the file; ``MediaError`` if unreadable or too big.
        Returns the file's :func:`_fingerprint` from before it was hashed."""
        try:
            if not path.is_file():
                raise MediaError(Status.unreadable, f"not a readable file: {path}")
            before = _fingerprint(path)
            base.size_bytes = self._check_size(before[2])
            base.sha256 = sha256_file(path)
            return before
        except OSError as exc:  # permission denied (the file, or a folder on the way), I/O error
            raise MediaError(Status.unreadable, f"cannot read {path}: {exc.strerror or exc}") from exc

    def _failed(self, base: AnalysisResult, exc: BaseException, timer: _Timer) -> AnalysisResult:
        if isinstance(exc, MediaError):
            status, message = _media_status(exc), str(exc)
        elif isinstance(exc, _Timeout):
            status, message = Status.timeout, str(exc)
        elif isinstance(exc, _Cancelled):
            status, message = Status.cancelled, "cancelled by the caller"
        else:
            status, message = Status.error, f"{type(exc).__name__}: {exc}"
        return base.model_copy(
            update={
                "status": Status(status).value,
                "error": message,
                "fake_probability": None,
                "label": None,
                "label_strict": None,
                "aggregation": None,
                "timings": timer.done(),
                **({"sha256": None} if isinstance(exc, _FileChanged) else {}),
            }
        )

    def _still_going(self, timer: _Timer, cancel: Cancel | None) -> None:
        """Between the stages of a still image: cancelled, or over the time limit?"""
        if cancel is not None and cancel():
            raise _Cancelled()
        if time.perf_counter() - timer.t0 > self.limits.time_limit:
            raise _Timeout(f"analysis exceeded the {self.limits.time_limit:g} s time limit")

    def _from(self) -> str:
        """The end of a ``no_face`` message: from which face size faces were looked for."""
        size = self.min_face_size
        return f" (faces are looked for from a box side of {size} px)" if size is not None else ""

    def views(self, media_type: str) -> int:
        """Crops scored per face for ``media_type`` (``image`` or ``video``): 1 or :data:`VIEWS`."""
        wanted = {"all": True, "images": media_type == "image", "none": False}[self.multi_crop]
        return VIEWS if wanted else 1

    def _crops(self, image: np.ndarray, faces: Sequence[Any], views: int) -> np.ndarray:
        """THE crop (card's margin and size) of each face, or its ``views`` crops
        (:func:`detector.crops.crop_boxes`)."""
        return crop_boxes(
            image, [f.box for f in faces], self.card.crop_margin, self.card.input_size, views,
            orientations=[getattr(f, "orientation", 0) for f in faces],
        )

    def _score(self, crops: Sequence[np.ndarray], views: int) -> ScoreBatch:
        """One classifier call for all ``crops``: arrays of :meth:`_crops` (chunked by the
        classifier if very many)."""
        s = self.card.input_size
        stack = np.concatenate(crops) if len(crops) else np.zeros((0, s, s, 3), np.uint8)
        return self.classifier.score(stack, views=views)

    def _face(self, det: Any, scores: ScoreBatch, i: int, track_id: int | None = None) -> Face:
        p = float(scores.probabilities[i])
        heads = None
        if scores.head_probabilities is not None:
            heads = {
                n: float(v) for n, v in zip(self.card.head_names, scores.head_probabilities[i], strict=True)
            }
        return Face(
            box=[float(v) for v in det.box],
            landmarks=[[float(x), float(y)] for x, y in det.landmarks],
            detection_score=float(det.score),
            orientation=int(getattr(det, "orientation", 0)),
            fake_probability=p,
            label=self.card.label_for(p),
            label_strict=self.card.label_for(p, strict=True),
            head_probabilities=heads,
            track_id=track_id,
        )

    def _verdict(self, result: AnalysisResult, probability: float, rule: str) -> AnalysisResult:
        result.status = Status.ok.value
        result.fake_probability = probability
        result.label = self.card.label_for(probability)
        result.label_strict = self.card.label_for(probability, strict=True)
        result.aggregation = rule
        return result

    def _image(
        self, data: bytes, name: str, base: AnalysisResult, timer: _Timer,
        face_crops: FaceCrops | None = None, cancel: Cancel | None = None,
    ) -> AnalysisResult:
        result = base.model_copy(update={"path": name, "media_type": "image"})
        t = time.perf_counter()
        image = decode_image(
            data, max_pixels=self.limits.max_image_pixels, max_side=self.limits.max_image_side
        )
        result.height, result.width = int(image.shape[0]), int(image.shape[1])
        t = timer.add("decode", t)
        self._still_going(timer, cancel)
        detections = list(self.face_detector.detect(image))
        t = timer.add("detect", t)
        views = self.views("image")
        self._still_going(timer, cancel)
        crops = self._crops(image, detections, views)
        scores = self._score([crops], views)
        timer.add("classify", t)
        self._still_going(timer, cancel)
        if face_crops is not None and detections:
            face_crops(None, _read_only(crops if views == 1 else self._crops(image, detections, 1)))
        result.crop_views, result.min_face_size = views, self.min_face_size
        result.faces = [self._face(d, scores, i) for i, d in enumerate(detections)]
        verdict = aggregate.image_verdict([f.fake_probability for f in result.faces])
        if verdict is None:
            result.status, result.error = Status.no_face.value, "no face found in the image" + self._from()
        else:
            self._verdict(result, verdict.probability, verdict.rule)
            warning = detail_warning([_side(result.faces[verdict.decided_by])], self.card)
            result.warnings += [warning] if warning else []
        appended = trailing_warning(sniff(data[:SNIFF_BYTES]), data=data)
        result.warnings += [appended] if appended else []
        result.timings = timer.done()
        return result

    def _video(
        self,
        path: Path,
        name: str,
        base: AnalysisResult,
        timer: _Timer,
        sampling: Sampling | None,
        progress: Progress | None,
        cancel: Cancel | None,
        face_crops: FaceCrops | None = None,
    ) -> AnalysisResult:
        if isinstance(sampling, str):
            sampling = Sampling.parse(sampling)
        sampling = sampling or Sampling()
        deadline = time.monotonic() - (time.perf_counter() - timer.t0) + self.limits.time_limit
        result = base.model_copy(
            update={
                "path": name,
                "media_type": "video",
                "crop_views": self.views("video"),
                "min_face_size": self.min_face_size,
            }
        )
        frames: list[Frame] = []
        detections: list[list[Any]] = []
        t = time.perf_counter()
        with iter_sampled_frames(
            path, sampling, limits=self.limits.video_limits(), deadline=deadline
        ) as sampled, Prefetch(sampled, depth=_DECODE_AHEAD) as ahead:
            timer.add("decode", t)
            batch = _FrameBatch(self, timer, frames, detections, face_crops)
            while True:
                if cancel is not None and cancel():
                    raise _Cancelled()
                if time.monotonic() > deadline:
                    raise _Timeout(f"analysis exceeded the {self.limits.time_limit:g} s time limit")
                t = time.perf_counter()
                frame = next(ahead, None)
                timer.add("decode", t)
                before = len(frames)
                if frame is None:
                    batch.finish()
                else:
                    batch.add(frame)
                if progress is not None:
                    total = max(sampled.planned, len(frames))
                    for done in range(before + 1, len(frames) + 1):
                        progress(done, total)
                if frame is None:
                    break
            meta = sampled.meta
            result.video = VideoInfo(
                width=int(meta.width),
                height=int(meta.height),
                rotation=int(meta.rotation),
                fps=meta.fps,
                duration=meta.duration,
                frames_decoded=int(sampled.frames_decoded),
                frames_sampled=len(frames),
                sampling=sampling.describe(),
                truncated=bool(sampled.truncated),
                decode_errors=int(sampled.decode_errors),
                frames_damaged=int(sampled.frames_damaged),
                frames_skipped=int(sampled.frames_skipped),
            )
            result.warnings = stream_warnings(result.video, frames[-1].time if frames else None)
        result.width, result.height = result.video.width, result.video.height
        if time.monotonic() > deadline:
            raise _Timeout(f"analysis exceeded the {self.limits.time_limit:g} s time limit")

        for frame, ids in zip(frames, link_tracks(detections), strict=True):
            for face, tid in zip(frame.faces, ids, strict=True):
                face.track_id = tid
        result.frames = frames
        result.tracks = _tracks(frames, self.card)
        verdict = aggregate.video_verdict(
            {tr.id: tr.fake_probability for tr in result.tracks},
            {tr.id: len(tr.frames) for tr in result.tracks},
        )
        if verdict is None:
            result.status, result.error = (
                Status.no_face.value, "no face found in any sampled frame" + self._from()
            )
        else:
            self._verdict(result, verdict.probability, verdict.rule)
            sides = [_side(f) for fr in frames for f in fr.faces if f.track_id == verdict.decided_by]
            warning = detail_warning(sides, self.card)
            result.warnings += [warning] if warning else []
        appended = None if result.video.truncated else trailing_warning(sniff_file(path), path=path)
        result.warnings += [appended] if appended else []
        result.timings = timer.done()
        return result


def _read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that cannot be written (callbacks see crops that are still scored)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _video_turn(frame_turns: Sequence[int]) -> int:
    """The turn of a whole video (clockwise degrees) once :data:`ORIENT_PROBE_FRAMES` frames with
    faces were checked and at least half of them show every face turned by that same angle;
    else 0. Later frames are then turned back before detection (MTCNN finds few turned faces)."""
    if len(frame_turns) < ORIENT_PROBE_FRAMES:
        return 0
    turned = [t for t in frame_turns if t > 0]
    if not turned:
        return 0
    angle = max(set(turned), key=turned.count)
    return angle if 2 * turned.count(angle) >= len(frame_turns) else 0


class _FrameBatch:
    """Sampled video frames on their way through detection and classification.

    Frames are detected in batches bounded by ``detect_pixels`` (the detector's memory
    grows with the pixels of a batch) and cropped at once, so decoded frames are dropped
    early; the crops of ``batch_size`` frames are classified in one call.

    The detector's orientation pass (turned faces, see :mod:`detector.faces`) runs on the
    first :data:`ORIENT_PROBE_FRAMES` frames that have faces. When at least half of them show
    every face turned the same way (a wrong or missing rotation tag: a video is turned as a
    whole), the rest of the video is turned back before detection (:func:`_video_turn`);
    otherwise the pass stays on only if one of their faces was turned, and is left off (its
    cost saved) when none was.
    """

    def __init__(
        self, analyzer: Analyzer, timer: _Timer, frames: list[Frame], detections: list[list[Any]],
        face_crops: FaceCrops | None = None,
    ) -> None:
        self.a, self.timer, self.frames, self.detections = analyzer, timer, frames, detections
        self.face_crops = face_crops
        self.pending: list[Any] = []  # decoded, awaiting detection
        self.pending_pixels = 0
        self.waiting: list[tuple[tuple[int, float], list[Any]]] = []  # ((index, time), faces)
        self.crops: list[np.ndarray] = []  # one [faces * views, S, S, 3] array per frame
        self.views = analyzer.views("video")
        self.turned = False  # one of their faces was turned
        self.frame_turns: list[int] = []  # per probed frame with faces: its faces' common turn, or -1
        self.lock = 0  # the whole video is turned this far (clockwise): frames are turned back first

    def add(self, frame: Any) -> None:
        pixels = int(frame.image_rgb.shape[0] * frame.image_rgb.shape[1])
        if self.pending and self.pending_pixels + pixels > self.a.detect_pixels:
            self._detect()
        self.pending.append(frame)
        self.pending_pixels += pixels
        if len(self.pending) + len(self.waiting) >= self.a.batch_size:
            self._detect()
        if len(self.waiting) >= self.a.batch_size:
            self._classify()

    def finish(self) -> None:
        self._detect()
        self._classify()

    def _detect(self) -> None:
        if not self.pending:
            return
        t = time.perf_counter()
        detector = self.a.face_detector
        images = [f.image_rgb for f in self.pending]
        probe = not self.lock and (self.turned or len(self.frame_turns) < ORIENT_PROBE_FRAMES)
        if not getattr(detector, "orient", False):  # a detector without the orientation pass
            dets, probe = detector.detect_batch(images), False
        elif self.lock:
            dets = detector.detect_batch(images, orient=False, turn=self.lock)
        else:
            dets = detector.detect_batch(images, orient=probe)
        if probe:
            for faces in dets:
                if faces:
                    turns = {d.orientation for d in faces}
                    self.frame_turns.append(turns.pop() if len(turns) == 1 else -1)
            self.turned = self.turned or any(d.orientation for faces in dets for d in faces)
            self.lock = _video_turn(self.frame_turns)
        t = self.timer.add("detect", t)
        for f, faces in zip(self.pending, dets, strict=True):
            faces = list(faces)
            crops = self.a._crops(f.image_rgb, faces, self.views)
            self.crops.append(crops)
            if self.face_crops is not None and faces:
                one = crops if self.views == 1 else self.a._crops(f.image_rgb, faces, 1)
                self.face_crops(int(f.index), _read_only(one))
            self.waiting.append(((int(f.index), float(f.time)), faces))  # the picture is dropped
        self.timer.add("classify", t)
        self.pending, self.pending_pixels = [], 0

    def _classify(self) -> None:
        if not self.waiting:
            return
        t = time.perf_counter()
        scores = self.a._score(self.crops, self.views)
        self.timer.add("classify", t)
        i = 0
        for (index, t_frame), faces in self.waiting:
            out = [self.a._face(d, scores, i + j) for j, d in enumerate(faces)]
            i += len(faces)
            self.frames.append(
                Frame(
                    index=index,
                    time=t_frame,
                    faces=out,
                    fake_probability=aggregate.frame_score([x.fake_probability for x in out]),
                )
            )
            self.detections.append(faces)
        self.waiting, self.crops = [], []


def stream_warnings(video: VideoInfo, last_time: float | None) -> list[str]:
    """Warnings for a video whose stream was cut off or damaged (the verdict covers less of it).

    ``last_time``: the time of the last analysed frame (None when none was).
    """
    out = []
    if video.frames_damaged and not video.decode_errors:
        out.append(f"{video.frames_damaged} frame(s) cut short at the end of the file were not analysed")
    elif video.decode_errors:
        out.append(
            f"damaged video data: the decoder rejected {video.decode_errors} packet(s); "
            f"{video.frames_damaged} frame(s) lost or built on damaged data were not analysed "
            f"({video.frames_skipped} of them sampled)"
        )
    if video.truncated:
        at = "" if video.duration is None else f" at {video.duration:.2f} s"
        upto = "" if last_time is None else f": frames analysed up to {last_time:.2f} s"
        out.append(f"the video stream breaks off{at} (cut or corrupt file){upto}")
    return out


def _tracks(frames: Sequence[Frame], card: ModelCard) -> list[Track]:
    """Group faces by track id and score each track with :func:`aggregate.track_score`."""
    members: dict[int, list[tuple[Frame, Face]]] = {}
    for frame in frames:
        for face in frame.faces:
            members.setdefault(int(face.track_id or 0), []).append((frame, face))
    tracks = []
    for tid in sorted(members):
        items = members[tid]
        p = aggregate.track_score([face.fake_probability for _, face in items])
        tracks.append(
            Track(
                id=tid,
                frames=[fr.index for fr, _ in items],
                first_time=items[0][0].time,
                last_time=items[-1][0].time,
                fake_probability=p,
                label=card.label_for(p),
                label_strict=card.label_for(p, strict=True),
            )
        )
    return tracks


def _media_kind(head: bytes, whole: Callable[[], bytes]) -> str:
    """``'image'`` or ``'video'`` from the magic bytes (``whole()`` is read only for GIFs and PNGs).

    Raises :class:`MediaError`: ``unreadable`` for an empty file, ``unsupported`` for
    anything outside the allowlist of :mod:`detector.media`.
    """
    if not head:
        raise MediaError(Status.unreadable, "empty file")
    kind = sniff(head)
    if kind is None:
        raise MediaError(
            Status.unsupported,
            f"not an allowed image or video format ({describe_unknown(head)}); allowed: "
            "JPEG, PNG, WebP, BMP, GIF, MP4/MOV, WebM/MKV, AVI",
        )
    return media_type_of(kind, whole() if kind in ANIMATABLE_KINDS else None)


def _file_kind(path: Path) -> str:
    """:func:`_media_kind` of the file at ``path`` (its first bytes; the whole file only for
    GIFs and PNGs)."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    return _media_kind(head, path.read_bytes)


def _media_status(exc: MediaError) -> Status:
    try:
        return Status(exc.status)
    except ValueError:
        return Status.unreadable


def create_analyzer(
    model: Classifier | str | os.PathLike[str] | None = None,
    *,
    limits: Limits | None = None,
    face_detector: Any | None = None,
    batch_size: int = 16,
    detect_pixels: int = DETECT_PIXELS,
    threads: int | None = None,
    multi_crop: MultiCrop = DEFAULT_MULTI_CROP,
    min_face: int | None = None,
) -> Analyzer:
    """Build an :class:`Analyzer` (the shipped default model when ``model`` is None)."""
    return Analyzer(
        model,
        limits=limits,
        face_detector=face_detector,
        batch_size=batch_size,
        detect_pixels=detect_pixels,
        threads=threads,
        multi_crop=multi_crop,
        min_face=min_face,
    )
