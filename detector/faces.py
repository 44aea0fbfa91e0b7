"""Face detection: MTCNN (facenet-pytorch 2.6.0's weights and pipeline) on ONNX Runtime.

A numpy/OpenCV port of ``facenet_pytorch.models.utils.detect_face``: an image pyramid through
P-Net (score >= thresholds[0], NMS 0.5 per scale, NMS 0.7 over scales, box regression,
square boxes), R-Net on 24x24 crops (score > thresholds[1], NMS 0.7, regression, square), O-Net
on 48x48 crops (score > thresholds[2], landmarks, regression, NMS 0.7 on intersection over the
smaller box). Pyramid levels and crops (the box clipped to the image) are resampled exactly as
``torch.nn.functional.interpolate(mode="area")`` does, from an integral image: the detections
match facenet-pytorch's (``cv2.INTER_AREA`` weighs pixels differently and moved boxes by up to
tens of pixels on a few faces).

Frames whose longer side exceeds ``max_side`` (default :data:`DEFAULT_MAX_SIDE`) are first
downscaled so the longer side equals ``max_side``; boxes and landmarks are mapped back to the
original pixels. That is skipped when the pyramid's first level is no larger than ``max_side``
anyway (``12 / pyramid_face_size <= max_side / longer side``, e.g. 1080p frames with a 40 px
minimum face): the pyramid is the same size and is resampled from the original pixels.
``min_face_size`` and ``pyramid_face_size`` (below; by default equal) are in original pixels;
after a downscale by ``s`` the pyramid starts at faces of ``max(12, pyramid_face_size * s)``
detection pixels, so the smallest face that can be found is ``max(min_face_size, 12 / s)``
original pixels.

**Pyramid anchor.** MTCNN's boxes depend on its pyramid: a face's final box comes from whichever
P-Net window survives the non-maximum suppressions, so a pyramid that starts at another scale
gives the same face a box a few pixels off (on the 1080p street clip, starting at 60 px instead
of 40 px: median IoU 0.92 with the 40 px boxes, none identical), and a classifier's score follows
its box. ``pyramid_face_size`` (default: ``min_face_size``) fixes the pyramid's scales as if faces
were looked for from that size; a larger ``min_face_size`` then skips the levels before the last
one built for faces of at most ``min_face_size`` (they are built for smaller faces), and drops
the smaller detections. Most faces kept get the very boxes of the full pyramid, not all (a
window from a skipped level can have won a face's NMS): from 60 px on a 40 px pyramid, 109 of
146 faces on that clip, median IoU 1.0. A frame first downscaled to ``max_side`` (longer than
3,200 px with a 40 px anchor: 4K, 12 MP photos) starts its pyramid at 12 detection pixels,
larger than the anchor, so fewer levels are skipped: from 60 px none.

:meth:`FaceDetector.detect_batch` with ``threads > 1`` runs groups of frames on that many worker
threads, or, for a single image, shares its pyramid levels and R-/O-Net crops out among them;
every session is single-threaded (onnxruntime's own intra-op threads left the numpy steps
between network calls on one core).

**Orientation.** MTCNN also fires, with lower confidence, on faces turned sideways or upside
down (a photo without its EXIF tag, a video whose rotation tag is wrong), and its landmarks then
still come out in the upright pattern. Each found face's square box is therefore shown to R-Net
four ways (turned 0, 90, 180 and 270 degrees); where a turned copy comes within
:data:`ORIENT_GATE` in logit, O-Net looks at the four too, and when it finds a turned copy more
face-like by more than :data:`ORIENT_MARGIN` in logit, the face is taken as turned:
:meth:`FaceDetector.detect_batch` detects again on the picture turned back (MTCNN's boxes on
turned faces are poor), maps those faces back, and :attr:`DetectedFace.orientation` says how
far each is turned (clockwise degrees); its crop is turned back before it is scored
(:func:`detector.crops.crop_boxes`). Measured on the shared data (photos and video frames):
no upright face turned (0 of 1,024 with O-Net alone, 0 of 604 with the R-Net gate); on the
same 604 faces' pictures turned by 90/180/270 degrees, 77% / 75% / 78% of the faces found
were turned back right and 10 of 699 wrong. But MTCNN misses most turned faces in still photos
altogether (README, "Turned faces"). Videos: see ``detector.analyze`` (a video found turned as a
whole is turned back before detection, :meth:`FaceDetector.detect_batch` ``turn``).

The ONNX files are exported by ``python -m training.export_mtcnn`` (they take raw 0..255 pixel
values: facenet-pytorch's input normalisation is folded into their first convolution). No torch
at run time.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import onnxruntime as ort

MODELS_DIR = Path(__file__).resolve().parent / "models"
PNET_FILE, RNET_FILE, ONET_FILE = "mtcnn_pnet.onnx", "mtcnn_rnet.onnx", "mtcnn_onet.onnx"

#: Logit by which a turned copy of a face must beat the face as found, for O-Net, before the face
#: is taken as turned (see "Orientation" above: at 4, no upright face of 1,024 was turned).
ORIENT_MARGIN = 4.0
#: Only faces for which R-Net rates a turned copy within this logit of the face as found go on
#: to O-Net's check (R-Net costs about a tenth as much; measured: 11% of upright faces pass, and
#: the turned faces O-Net turns back are the same but for 1 in 200).
ORIENT_GATE = -2.0

#: Longer side (pixels) above which frames are downscaled before detection. 960 halves a 1080p
#: frame exactly (a quarter for 4K): faces from 24 px (original pixels) up can still be found.
#: On facenet_street.mp4 (1080p, 32 frames) full resolution found 184 faces; 1280 missed 11,
#: 960 missed 22 (16 of them at most 36 px tall), 640 missed 28; 960 took about 0.7x the CPU
#: time of full resolution and 640 about 0.4x (see benchmarks/bench_faces.py).
DEFAULT_MAX_SIDE = 960

#: P-Net looks at 12x12 windows: the smallest face (detection pixels) the pyramid can start at.
PNET_CELL = 12
# Bounds on one network call, for memory: onnxruntime keeps each call's activations, and conv1's
# output dominates them (P-Net: about 64 bytes per input pixel; R-Net about 62 kB and O-Net about
# 270 kB per crop). Measured on 2 cores, 256 R-Net crops per call cost 8% more time per crop than
# 768 and 64 O-Net crops the same as 128; before these bounds, detection alone grew the process
# by about 300 MB on a 1080p clip.
_PNET_PIXELS_PER_CALL = 600_000
_RNET_CROPS_PER_CALL = 64
_ONET_CROPS_PER_CALL = 16
#: Bound on the detection pixels of the frames processed together by ``detect_batch``.
_FRAMES_PIXELS_PER_CHUNK = 8_000_000


@dataclass(frozen=True)
class DetectedFace:
    """One face: box ``(x0, y0, x1, y1)`` and 5 landmarks in original image pixels.

    Landmarks are left eye, right eye, nose, left mouth corner, right mouth corner (as seen in the
    image: "left" is the person's right). ``score`` is the O-Net face probability. The box may
    extend past the image borders. ``orientation`` (0, 90, 180, 270) is how far the face is
    turned clockwise in the image (see "Orientation" in the module doc): its crop is turned back
    by as much before scoring.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float
    orientation: int = 0


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    method: str = "iou",
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    ``boxes`` is ``[N, 4]`` ``(x0, y0, x1, y1)``. A box is dropped when its overlap with a kept,
    higher-scoring box of the same group exceeds ``threshold``. ``method="iou"`` is intersection
    over union with continuous areas (``torchvision.ops.nms``); ``method="min"`` is intersection
    over the smaller area with the ``+1`` pixel convention of the original MTCNN code. ``groups``
    (``[N]`` ints, e.g. image indices) keeps boxes of different groups from suppressing each other.
    """
    dtype = np.float32 if np.asarray(boxes).dtype == np.float32 else np.float64  # float32 as facenet
    boxes = np.asarray(boxes, dtype=dtype).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if method not in ("iou", "min"):
        raise ValueError(f"unknown NMS method {method!r} (use 'iou' or 'min')")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if groups is None:
        return _nms_one(boxes, scores, threshold, method)
    groups = np.asarray(groups).reshape(-1)
    keep = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        keep.append(idx[_nms_one(boxes[idx], scores[idx], threshold, method)])
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]


_NMS_BLOCK = 1024


def _overlap(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """``[len(a), len(b)]`` IoU (``"iou"``) or intersection over the smaller box (``"min"``, +1)."""
    inter, area_a, area_b = _intersection(a, b, method)
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "min":
            return inter / np.minimum(area_a[:, None], area_b[None, :])
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def _intersection(a: np.ndarray, b: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    one = a.dtype.type(1.0 if method == "min" else 0.0)
    w = np.minimum(a[:, None, 2], b[None, :, 2])
    w -= np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3])
    h -= np.maximum(a[:, None, 1], b[None, :, 1])
    if one:
        w += one
        h += one
    np.maximum(w, 0, out=w)
    np.maximum(h, 0, out=h)
    w *= h
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    return w, area_a, area_b


def _suppresses(a: np.ndarray, b: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """``[len(a), len(b)]``: would a kept box of ``a`` drop the box of ``b``?

    ``"iou"``: IoU above the threshold (torchvision; a 0/0 IoU drops nothing). ``"min"``: not
    ``overlap <= threshold`` (facenet-pytorch's nms_numpy; a 0/0 overlap drops).
    """
    if method == "min":
        with np.errstate(divide="ignore", invalid="ignore"):
            return ~(_overlap(a, b, method) <= threshold)
    inter, area_a, area_b = _intersection(a, b, method)
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    union *= union.dtype.type(threshold)
    return inter > union  # inter / union > t, without the division


def _nms_one(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str) -> np.ndarray:
    # "iou" visits boxes as torchvision does (descending score, ties in input order); "min" as
    # facenet-pytorch's nms_numpy (last of numpy's ascending argsort first), so that boxes with
    # equal scores (same clipped crop) resolve the same way.
    order = np.argsort(-scores, kind="stable") if method == "iou" else np.argsort(scores)[::-1]
    b = boxes[order]
    n = len(b)
    kept = np.zeros(n, dtype=bool)
    # Greedy NMS, a block of boxes at a time: first drop what the boxes kept in earlier blocks
    # overlap, then resolve the block in order from its overlap matrix (only rows that overlap
    # anything need a Python step).
    for start in range(0, n, _NMS_BLOCK):
        stop = min(n, start + _NMS_BLOCK)
        blk = b[start:stop]
        dropped = np.zeros(stop - start, dtype=bool)
        prev = b[:start][kept[:start]]
        if len(prev):
            dropped |= _suppresses(prev, blk, threshold, method).any(axis=0)
        over = np.triu(_suppresses(blk, blk, threshold, method), k=1)
        for i in np.flatnonzero(over.any(axis=1)):
            if not dropped[i]:
                dropped |= over[i]
        kept[start:stop] = ~dropped
    return order[kept]


def _square(boxes: np.ndarray) -> np.ndarray:
    """MTCNN ``rerec``: the square of side ``max(w, h)`` on each box's centre (in place)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """MTCNN ``bbreg``: shift box edges by ``reg`` times the (+1) box size (in place)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _area_bins(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins of ``adaptive_avg_pool`` (= ``interpolate(mode="area")``) from ``length`` pixels to
    ``size``: output ``i`` averages ``[start + floor(i*n/size), start + ceil((i+1)*n/size))``.
    Returns ``lo, hi`` of shape ``[N, size]``."""
    i = np.arange(size, dtype=np.int64)
    n = np.asarray(length, dtype=np.int64)[:, None]
    lo = np.asarray(start, dtype=np.int64)[:, None] + (i * n) // size
    hi = np.asarray(start, dtype=np.int64)[:, None] + ((i + 1) * n + size - 1) // size
    return lo, hi


def _integral(image: np.ndarray) -> np.ndarray:
    """Planar integral image ``[3, H+1, W+1]`` int32 of an ``H x W x 3`` uint8 image (exact)."""
    h, w = image.shape[:2]
    out = np.empty((3, h + 1, w + 1), dtype=np.int32)
    for c, plane in enumerate(cv2.split(image)):
        cv2.integral(plane, out[c], sdepth=cv2.CV_32S)
    return out


def _pyramid_level(image: np.ndarray, integral: np.ndarray, out: np.ndarray) -> None:
    """Write ``interpolate(image, out.shape[1:], mode="area")`` (planar float32) into ``out``.

    Exactly facenet-pytorch's pyramid resampling. Growing by one pixel (the pyramid's first level
    at scale 1) averages each 2x2 neighbourhood of the edge-replicated image; otherwise sums come
    from the integral image.
    """
    h, w = image.shape[:2]
    out_h, out_w = out.shape[1:]
    if (out_h, out_w) == (h + 1, w + 1):
        for c, plane in enumerate(cv2.split(image)):
            padded = cv2.copyMakeBorder(plane, 1, 0, 1, 0, cv2.BORDER_REPLICATE)
            cv2.boxFilter(padded, cv2.CV_32F, (2, 2), out[c], (0, 0), True, cv2.BORDER_REPLICATE)
        return
    (r0, r1), (c0, c1) = _area_bins([0], [h], out_h), _area_bins([0], [w], out_w)
    r0, r1, c0, c1 = r0[0], r1[0], c0[0], c1[0]
    rows = np.take(integral, r1, axis=1)
    rows -= np.take(integral, r0, axis=1)
    sums = np.take(rows, c1, axis=2)
    sums -= np.take(rows, c0, axis=2)
    inv = 1.0 / ((r1 - r0)[:, None] * (c1 - c0)[None, :]).astype(np.float32)
    np.multiply(sums, inv, out=out, dtype=np.float32, casting="unsafe")


def _crops(integral: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 3, size, size]`` float32 crops of ``boxes`` and the mask of boxes that had one.

    As facenet-pytorch's ``pad``: coordinates truncate toward zero, the box is clipped to the
    image and the clipped region (not a padded square) is area-resized to ``size``.
    ``integral`` is the image's :func:`_integral`.
    """
    h, w = integral.shape[1] - 1, integral.shape[2] - 1
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x = np.maximum(b[:, 0], 1) - 1
    y = np.maximum(b[:, 1], 1) - 1
    ex = np.minimum(b[:, 2], w)
    ey = np.minimum(b[:, 3], h)
    ok = (ex > x) & (ey > y)
    x, y, ex, ey = x[ok], y[ok], ex[ok], ey[ok]
    r0, r1 = _area_bins(y, ey - y, size)
    c0, c1 = _area_bins(x, ex - x, size)
    inv = 1.0 / ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).astype(np.float32)
    r0, r1 = (r0 * (w + 1))[:, :, None], (r1 * (w + 1))[:, :, None]
    c0, c1 = c0[:, None, :], c1[:, None, :]
    i11, i01, i10, i00 = r1 + c1, r0 + c1, r1 + c0, r0 + c0
    out = np.empty((len(x), 3, size, size), dtype=np.float32)
    for c, flat in enumerate(integral.reshape(3, -1)):
        sums = (flat[i11] - flat[i01]) - (flat[i10] - flat[i00])
        np.multiply(sums, inv, out=out[:, c], dtype=np.float32, casting="unsafe")
    return out, ok


def _check_image(image: object, index: int | None = None) -> np.ndarray:
    where = "image" if index is None else f"image {index}"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{where}: expected an HxWx3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: empty image (shape {image.shape})")
    return image


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_Pool = ThreadPoolExecutor | None


class _Nets(NamedTuple):
    """P-, R- and O-Net sessions (single-threaded: each call runs on the calling thread)."""

    pnet: ort.InferenceSession
    rnet: ort.InferenceSession
    onet: ort.InferenceSession


@dataclass
class _Frame:
    """One image on its way through the cascade (detection pixels until :meth:`faces`)."""

    image: np.ndarray  # detection image (downscaled copy or the original), uint8
    sx: float  # original / detection, per axis
    sy: float
    integral: np.ndarray | None = None
    boxes: np.ndarray | None = None  # [N, 5]: x0, y0, x1, y1, score
    points: np.ndarray | None = None  # [N, 5, 2]
    turns: np.ndarray | None = None  # [N] quarter turns clockwise of each face (0..3)

    def integral_image(self) -> np.ndarray:
        if self.integral is None:
            self.integral = _integral(self.image)
        return self.integral


def _split_levels(scales: Sequence[float], pixels: int, parts: int) -> list[list[float]]:
    """``scales`` cut into at most ``parts`` contiguous groups of about equal P-Net pixels."""
    cost = [pixels * s * s for s in scales]
    share = sum(cost) / max(1, parts)
    groups: list[list[float]] = [[]]
    done = 0.0
    for scale, c in zip(scales, cost, strict=True):
        if groups[-1] and len(groups) < parts and done + c / 2 >= share * len(groups):
            groups.append([])
        groups[-1].append(scale)
        done += c
    return groups


def _load_nets() -> _Nets:
    """P-, R- and O-Net on single-threaded sessions: each call runs on the calling thread."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3

    def session(name: str) -> ort.InferenceSession:
        path = MODELS_DIR / name
        if not path.is_file():
            raise FileNotFoundError(f"MTCNN model {path} is missing (python -m training.export_mtcnn)")
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    return _Nets(session(PNET_FILE), session(RNET_FILE), session(ONET_FILE))


class FaceDetector:
    """MTCNN face detector on ONNX Runtime (CPU).

    ``min_face_size`` is the smallest face side in original image pixels (smaller detections are
    dropped); ``pyramid_face_size`` (at most ``min_face_size``; default: equal) the face size the
    pyramid's scales are anchored at (module docstring, "Pyramid anchor": a model trained on
    boxes of a pyramid anchored at its card's ``min_face_size`` keeps most of them with a larger
    ``min_face_size``); ``thresholds`` are the P-, R- and O-Net score thresholds; ``factor`` is the pyramid
    scale step; frames with a longer side above ``max_side`` are downscaled to it first (see the
    module docstring and :data:`DEFAULT_MAX_SIDE`); ``orient`` checks each face's orientation
    (module docstring, "Orientation"; False leaves every face at 0); ``threads`` is how many threads detect at
    once (default: the CPUs this process may use): frames side by side, or one image's pyramid
    levels and crops. Call :meth:`close` to stop those threads early (they also end with the
    process).
    """

    def __init__(
        self,
        *,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int = DEFAULT_MAX_SIDE,
        orient: bool = True,
        threads: int | None = None,
        pyramid_face_size: float | None = None,
    ) -> None:
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be 3 probabilities in [0, 1], got {thresholds}")
        if not 0.0 < float(factor) < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if not float(min_face_size) >= 1:
            raise ValueError(f"min_face_size must be >= 1 pixel, got {min_face_size}")
        anchor = min_face_size if pyramid_face_size is None else pyramid_face_size
        if not 1 <= float(anchor) <= float(min_face_size):
            raise ValueError(
                f"pyramid_face_size must be in [1, min_face_size={min_face_size}] pixels, got {anchor}"
            )
        if int(max_side) < PNET_CELL:
            raise ValueError(f"max_side must be >= {PNET_CELL} pixels, got {max_side}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.min_face_size = float(min_face_size)
        self.pyramid_face_size = float(anchor)
        self.thresholds = thresholds
        self.factor = float(factor)
        self.max_side = int(max_side)
        self.orient = bool(orient)
        self.threads = int(threads) if threads is not None else _default_threads()
        # Single-threaded sessions (the calling thread runs each call); with threads > 1, a pool
        # of that many threads runs frames, or one frame's pyramid levels and crops, side by side:
        # measured 1.3x (frames of a 1080p video) and 1.15x (a 1 MP photo) the throughput of
        # onnxruntime's own intra-op threads, which leave the numpy steps between calls on one core.
        self._nets = _load_nets()
        self._pool: ThreadPoolExecutor | None = None
        self._users: dict[ThreadPoolExecutor, int] = {}  # calls using each pool now
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public API
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in one ``H x W x 3`` uint8 RGB image, highest score first."""
        return self.detect_batch([_check_image(image)])[0]

    def detect_batch(
        self,
        images: Sequence[np.ndarray],
        *,
        orient: bool | None = None,
        turn: int = 0,
        _upright_pass: bool = False,
    ) -> list[list[DetectedFace]]:
        """Faces in each image (see :meth:`detect`); same-size images share network calls.

        ``orient`` overrides the detector's own setting for this call (the orientation pass
        costs about 1-2 ms per face on one core). ``turn`` (a multiple of 90): the images are
        known to be turned that far clockwise (a video whose first frames' faces all were):
        faces are looked for in the images turned back, and reported in the images' own pixels
        with that ``orientation``.

        With ``threads > 1`` the images are split into that many groups detected side by side
        (one image: its pyramid levels and crops are); the result does not depend on it.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        quarter = (int(turn) // 90) % 4
        if quarter:
            back = [np.ascontiguousarray(np.rot90(_check_image(im, i), quarter))
                    for i, im in enumerate(images)]
            found = FaceDetector.detect_batch(self, back, orient=orient, _upright_pass=_upright_pass)
            return [
                [_turn_clockwise(d, quarter, b.shape, (90 * quarter + d.orientation) % 360) for d in faces]
                for faces, b in zip(found, back, strict=True)
            ]
        if not isinstance(images, Sequence):
            raise ValueError(f"expected a list of images, got {type(images).__name__}")
        orient = self.orient if orient is None else bool(orient)
        frames = [self._prepare(_check_image(im, i)) for i, im in enumerate(images)]
        workers = min(self.threads, len(frames))
        per_chunk = math.ceil(len(frames) / max(1, workers))
        order = sorted(range(len(frames)), key=lambda i: frames[i].image.shape)
        chunks: list[list[_Frame]] = [[]]
        pixels = 0
        for i in order:
            f = frames[i]
            chunk = chunks[-1]
            if chunk and (
                f.image.shape != chunk[0].image.shape
                or pixels >= _FRAMES_PIXELS_PER_CHUNK
                or len(chunk) >= per_chunk
            ):
                chunks.append([])
                pixels = 0
            chunks[-1].append(f)
            pixels += f.image.shape[0] * f.image.shape[1]
        chunks = [c for c in chunks if c]
        if self.threads <= 1:
            for chunk in chunks:
                self._run(chunk, self._nets, orient=orient)
        elif len(chunks) == 1:  # one frame: its pyramid levels and crops are shared out instead
            with self._parallel() as pool:
                self._run(chunks[0], self._nets, pool, orient=orient)
        else:
            with self._parallel() as pool:
                for _ in pool.map(lambda c: self._run(c, self._nets, orient=orient), chunks):
                    pass
        found = [self._faces(f) for f in frames]
        if orient and not _upright_pass:
            for i, faces in enumerate(found):
                if any(d.orientation for d in faces):
                    found[i] = self._redetect_turned(images[i], faces)
        return found

    def _redetect_turned(self, image: np.ndarray, faces: list[DetectedFace]) -> list[DetectedFace]:
        """Faces of an image where some face is turned: detect again on the image turned back by
        the most common turn, so the turned faces get MTCNN's upright boxes and landmarks (its
        boxes on turned faces are poor), mapped back to ``image`` pixels. Faces found upright at
        first, and turned faces not found again, are kept as they were; overlaps keep the
        higher score."""
        angles = [d.orientation for d in faces if d.orientation]
        angle = max(set(angles), key=angles.count)
        turns = angle // 90
        turned = np.ascontiguousarray(np.rot90(image, turns))
        again = self.detect_batch([turned], _upright_pass=True)[0]
        mapped = [_turn_clockwise(d, turns, turned.shape, angle) for d in again if d.orientation == 0]
        kept = [d for d in faces if d.orientation != angle or not mapped] + mapped
        if not kept:
            return []
        boxes = np.array([d.box for d in kept], np.float64)
        pick = nms(boxes, np.array([d.score for d in kept]), 0.5)
        return sorted((kept[i] for i in pick), key=lambda d: -d.score)

    def close(self) -> None:
        """Stop the detection threads (a later call starts new ones). Safe while other threads
        detect: their calls finish on the old threads, which stop when the last one is done."""
        with self._lock:
            pool, self._pool = self._pool, None
            busy = pool is not None and self._users.get(pool, 0) > 0
        if pool is not None and not busy:
            pool.shutdown(wait=True)

    # ------------------------------------------------------------------ pipeline
    @contextmanager
    def _parallel(self) -> Iterator[ThreadPoolExecutor]:
        """The detection thread pool, kept alive (even through :meth:`close`) while in use."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="facetrust-mtcnn")
            pool = self._pool
            self._users[pool] = self._users.get(pool, 0) + 1
        try:
            yield pool
        finally:
            with self._lock:
                self._users[pool] -= 1
                retired = self._users[pool] == 0 and pool is not self._pool
                if self._users[pool] == 0:
                    del self._users[pool]
            if retired:  # closed while in use: the last user stops it
                pool.shutdown(wait=False)

    def _prepare(self, image: np.ndarray) -> _Frame:
        h, w = image.shape[:2]
        s = self.max_side / max(h, w)
        if s >= 1.0 or PNET_CELL / self.pyramid_face_size <= s:
            # Small enough, or the pyramid starts at or below max_side anyway (faces of
            # pyramid_face_size fill P-Net's cell only after that much downscaling): downscaling first
            # would leave the pyramid's sizes as they are and only cost a resize.
            return _Frame(np.ascontiguousarray(image), 1.0, 1.0)
        dw, dh = max(1, round(w * s)), max(1, round(h * s))
        small = cv2.resize(np.ascontiguousarray(image), (dw, dh), interpolation=cv2.INTER_AREA)
        return _Frame(small, w / dw, h / dh)

    def _scales(self, frame: _Frame) -> list[float]:
        """facenet-pytorch's pyramid, anchored at faces of ``pyramid_face_size`` original pixels,
        without the levels before the last one built for faces of at most ``min_face_size``."""
        h, w = frame.image.shape[:2]
        down = max(frame.sx, frame.sy)
        min_face = max(float(PNET_CELL), self.pyramid_face_size / down)
        m = PNET_CELL / min_face
        min_len = min(h, w) * m
        scales, scale = [], m
        while min_len >= PNET_CELL:
            scales.append(scale)
            scale *= self.factor
            min_len *= self.factor
        if self.min_face_size > self.pyramid_face_size:
            # level i looks for faces of about PNET_CELL / scale detection pixels
            built_for = [PNET_CELL / sc * down for sc in scales]
            below = [i for i, size in enumerate(built_for) if size <= self.min_face_size * (1 + 1e-9)]
            scales = scales[below[-1]:] if below else scales
        return scales

    def _run(
        self, frames: list[_Frame], nets: _Nets, pool: ThreadPoolExecutor | None = None, *,
        orient: bool = False,
    ) -> None:
        """Run the cascade on same-size frames, setting each frame's boxes and points.

        With ``pool`` (and single-threaded ``nets``), the pyramid levels and the R-/O-Net crops
        are split into contiguous groups run on the pool's threads; the groups are merged in
        order, so the result is the same as without.
        """
        for f in frames:
            f.boxes, f.points = np.zeros((0, 5)), np.zeros((0, 5, 2))
            f.integral_image()  # before any thread needs it
        self._stage1(frames, nets.pnet, pool)
        self._stage2(frames, nets.rnet, pool)
        self._stage3(frames, nets.onet, pool)
        if orient:
            self._orientation(frames, nets)
        for f in frames:
            f.integral = None

    def _stage1(self, frames: list[_Frame], pnet: ort.InferenceSession, pool: _Pool) -> None:
        h, w = frames[0].image.shape[:2]
        scales = self._scales(frames[0])
        if not scales:
            return
        if pool is None or len(scales) < 2:
            found = self._pnet_levels(frames, pnet, scales)
        else:
            groups = _split_levels(scales, w * h, self.threads)
            parts = list(pool.map(lambda g: self._pnet_levels(frames, pnet, g), groups))
            found = [[b for part in parts for b in part[i]] for i in range(len(frames))]
        for f, parts in zip(frames, found, strict=True):
            if not parts:
                continue
            boxes = np.concatenate(parts)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            bw = boxes[:, 2] - boxes[:, 0]
            bh = boxes[:, 3] - boxes[:, 1]
            out = np.stack(
                [
                    boxes[:, 0] + boxes[:, 5] * bw,
                    boxes[:, 1] + boxes[:, 6] * bh,
                    boxes[:, 2] + boxes[:, 7] * bw,
                    boxes[:, 3] + boxes[:, 8] * bh,
                    boxes[:, 4],
                ],
                axis=1,
            )
            f.boxes = _square(out)

    def _pnet_levels(
        self, frames: list[_Frame], pnet: ort.InferenceSession, scales: Sequence[float]
    ) -> list[list[np.ndarray]]:
        """P-Net boxes ``[N, 9]`` of each pyramid level in ``scales`` (after NMS 0.5), per frame."""
        h, w = frames[0].image.shape[:2]
        found: list[list[np.ndarray]] = [[] for _ in frames]
        for scale in scales:
            size = (int(w * scale + 1), int(h * scale + 1))
            level = np.empty((len(frames), 3, size[1], size[0]), dtype=np.float32)
            for f, out in zip(frames, level, strict=True):
                _pyramid_level(f.image, f.integral_image(), out)
            per_call = max(1, _PNET_PIXELS_PER_CALL // (size[0] * size[1]))
            for start in range(0, len(frames), per_call):
                batch = level[start : start + per_call]
                reg, prob = pnet.run(None, {"input": batch})
                for j in range(len(batch)):
                    boxes = self._pnet_boxes(reg[j], prob[j, 0], scale)
                    if len(boxes):
                        found[start + j].append(boxes[nms(boxes[:, :4], boxes[:, 4], 0.5)])
        return found

    def _pnet_boxes(self, reg: np.ndarray, prob: np.ndarray, scale: float) -> np.ndarray:
        """MTCNN ``generateBoundingBox`` for one image: ``[N, 9]`` boxes, score, regression."""
        rows, cols = np.nonzero(prob >= self.thresholds[0])
        if rows.size == 0:
            return np.zeros((0, 9), dtype=np.float32)
        stride, cell = 2, PNET_CELL
        xy = np.stack([cols, rows], axis=1).astype(np.float32)
        q1 = np.floor((stride * xy + 1) / np.float32(scale))
        q2 = np.floor((stride * xy + cell) / np.float32(scale))
        return np.concatenate(
            [q1, q2, prob[rows, cols][:, None], reg[:, rows, cols].T], axis=1
        ).astype(np.float32)

    def _refine(
        self,
        frames: list[_Frame],
        net: ort.InferenceSession,
        size: int,
        threshold: float,
        step: int,
        pool: ThreadPoolExecutor | None,
    ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """Crop every frame's boxes, run ``net`` on all crops in one go, keep score > threshold.

        Per frame: the kept boxes ``[M, 5]`` (score replaced by ``net``'s) and ``net``'s other
        outputs for them (regression first).
        """
        crops, kept = [], []
        for f in frames:
            if len(f.boxes):
                c, ok = _crops(f.integral_image(), f.boxes, size)
            else:
                c, ok = np.zeros((0, 3, size, size), np.float32), np.zeros(0, bool)
            crops.append(c)
            kept.append(f.boxes[ok])
        counts = [len(c) for c in crops]
        if sum(counts) == 0:
            return [(np.zeros((0, 5), np.float32), []) for _ in frames]
        allc = np.concatenate(crops)
        if pool is not None:  # at least one call per thread
            step = max(1, min(step, math.ceil(len(allc) / self.threads)))
        starts = range(0, len(allc), step)
        if pool is not None and len(starts) > 1:
            outs = list(pool.map(lambda i: net.run(None, {"input": allc[i : i + step]}), starts))
        else:
            outs = [net.run(None, {"input": allc[i : i + step]}) for i in starts]
        merged = [np.concatenate(parts) for parts in zip(*outs, strict=True)]
        result = []
        parts = zip(*(np.split(m, np.cumsum(counts)[:-1]) for m in merged), strict=True)
        for boxes, part in zip(kept, parts, strict=True):
            score = part[-1][:, 1]
            ok = score > threshold
            boxes = np.concatenate([boxes[ok, :4], score[ok, None]], axis=1).astype(np.float32)
            result.append((boxes, [p[ok] for p in part[:-1]]))
        return result

    def _stage2(self, frames: list[_Frame], rnet: ort.InferenceSession, pool: _Pool) -> None:
        refined = self._refine(frames, rnet, 24, self.thresholds[1], _RNET_CROPS_PER_CALL, pool)
        for f, (boxes, outs) in zip(frames, refined, strict=True):
            if len(boxes):
                pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
                boxes = _square(_regress(boxes[pick], outs[0][pick]))
            f.boxes = boxes

    def _stage3(self, frames: list[_Frame], onet: ort.InferenceSession, pool: _Pool) -> None:
        refined = self._refine(frames, onet, 48, self.thresholds[2], _ONET_CROPS_PER_CALL, pool)
        for f, (boxes, outs) in zip(frames, refined, strict=True):
            if not len(boxes):
                f.boxes = boxes
                continue
            reg, marks = outs
            bw = boxes[:, 2:3] - boxes[:, 0:1] + 1
            bh = boxes[:, 3:4] - boxes[:, 1:2] + 1
            px = bw * marks[:, :5] + boxes[:, 0:1] - 1
            py = bh * marks[:, 5:10] + boxes[:, 1:2] - 1
            points = np.stack([px, py], axis=2)
            boxes = _regress(boxes, reg)
            pick = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
            f.boxes, f.points = boxes[pick], points[pick]

    def _orientation(self, frames: list[_Frame], nets: _Nets) -> None:
        """Set each frame's ``turns``: R-Net, then (for faces where a turned copy comes within
        :data:`ORIENT_GATE` in logit of the face as found) O-Net score each face's square box
        turned 0-3 quarter turns; a turned copy that O-Net prefers by more than
        :data:`ORIENT_MARGIN` in logit wins."""
        todo: list[tuple[_Frame, np.ndarray]] = []
        for f in frames:
            f.turns = np.zeros(len(f.boxes), np.int64)
            if len(f.boxes):
                square = _square(f.boxes.copy())
                _, ok = _crops(f.integral_image(), square, 1)
                if ok.all():  # (a box with no pixel in the frame stays at 0)
                    todo.append((f, square))
        if not todo:
            return
        small = np.concatenate([_crops(f.integral_image(), b, 24)[0] for f, b in todo])
        margin = _turn_margins(nets.rnet, small)
        gated = np.flatnonzero(margin[:, 1:].max(axis=1) > ORIENT_GATE)
        turns = np.zeros(len(small), np.int64)
        if len(gated):
            large = np.concatenate([_crops(f.integral_image(), b, 48)[0] for f, b in todo])[gated]
            m = _turn_margins(nets.onet, large)
            turns[gated] = np.where(m.max(axis=1) > ORIENT_MARGIN, m.argmax(axis=1), 0)
        at = 0
        for f, b in todo:
            f.turns, at = turns[at : at + len(b)], at + len(b)

    def _faces(self, f: _Frame) -> list[DetectedFace]:
        """Map a frame's detections to original pixels, drop small ones, sort by score."""
        faces = []
        scale = np.array([f.sx, f.sy, f.sx, f.sy], dtype=np.float64)
        turns = f.turns if f.turns is not None and len(f.turns) == len(f.boxes) else np.zeros(len(f.boxes))
        for box, pts, turn in zip(f.boxes, f.points, turns, strict=True):
            b = box[:4].astype(np.float64)
            p = pts.astype(np.float64)
            if f.sx != 1.0 or f.sy != 1.0:  # pixel centres: x = (x' + 0.5) * sx - 0.5
                b = (b + 0.5) * scale - 0.5
                p = (p + 0.5) * scale[:2] - 0.5
            if max(b[2] - b[0], b[3] - b[1]) < self.min_face_size:
                continue
            faces.append(
                DetectedFace(
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    landmarks=tuple((float(x), float(y)) for x, y in p),
                    score=float(box[4]),
                    orientation=int(turn) * 90,
                )
            )
        faces.sort(key=lambda d: -d.score)
        return faces


def _turn_margins(net: ort.InferenceSession, crops: np.ndarray) -> np.ndarray:
    """``[N, 4]``: ``net``'s face logit for each crop turned k quarter turns counter-clockwise
    (undoing k clockwise turns), minus its logit for the crop as it is (column 0 is 0)."""
    turned = np.ascontiguousarray(np.concatenate([np.rot90(crops, k, axes=(2, 3)) for k in range(4)]))
    prob = np.concatenate(
        [net.run(None, {"input": turned[i : i + 64]})[-1][:, 1] for i in range(0, len(turned), 64)]
    )
    p = np.clip(prob.reshape(4, -1).T.astype(np.float64), 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    return logit - logit[:, :1]


def _turn_clockwise(face: DetectedFace, turns: int, shape: Sequence[int], angle: int) -> DetectedFace:
    """``face``, found in a picture of ``shape`` (H, W, ...) that was turned ``turns`` quarter turns
    counter-clockwise, in the pixels of the picture before that turn; ``orientation`` ``angle``."""
    x0, y0, x1, y1 = face.box
    points = list(face.landmarks)
    height, width = int(shape[0]), int(shape[1])
    for _ in range(turns % 4):  # one clockwise quarter turn: (x, y) -> (H - y, x)
        x0, y0, x1, y1 = height - y1, x0, height - y0, x1
        points = [(height - y, x) for x, y in points]
        height, width = width, height
    return DetectedFace(box=(x0, y0, x1, y1), landmarks=tuple(points), score=face.score, orientation=angle)


def create_face_detector(**kwargs: object) -> FaceDetector:
    """A :class:`FaceDetector` with the given keyword settings (see its docstring)."""
    return FaceDetector(**kwargs)  # type: ignore[arg-type]
