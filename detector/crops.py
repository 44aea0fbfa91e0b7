"""THE face crop: one function used by training, evaluation and serving alike.

A crop is the square centred on the face box, with side ``max(w, h) * margin``,
padded with black where it leaves the image, resized to ``size`` x ``size``.
Margin and size come from the :class:`~detector.card.ModelCard`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np


def square_box(box: Sequence[float], margin: float) -> tuple[float, float, float, float]:
    """Square ``(x0, y0, x1, y1)`` centred on ``box`` with side ``max(w, h) * margin``."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    w, h = x1 - x0, y1 - y0
    if not (w > 0 and h > 0):
        raise ValueError(f"degenerate face box {tuple(box)}")
    side = max(w, h) * float(margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0


def crop_window(box: Sequence[float], margin: float) -> tuple[int, int, int]:
    """Integer ``(x0, y0, side)`` of the square that :func:`crop_face` cuts out."""
    sx0, sy0, sx1, _ = square_box(box, margin)
    return int(np.floor(sx0)), int(np.floor(sy0)), max(1, int(round(sx1 - sx0)))


def outside_fraction(box: Sequence[float], width: int, height: int) -> float:
    """Share of the area of face ``box`` that lies outside a ``width`` x ``height`` picture: 0 for
    a face wholly inside, 0.2 for one whose lower fifth (the chin) is cut off by the bottom edge.
    The detector's boxes are not clipped to the picture, so a face cut by an edge shows here."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    area = (x1 - x0) * (y1 - y0)
    if not area > 0:
        raise ValueError(f"degenerate face box {tuple(box)}")
    inside = max(0.0, min(x1, width) - max(x0, 0.0)) * max(0.0, min(y1, height) - max(y0, 0.0))
    return float(min(1.0, max(0.0, 1.0 - inside / area)))


def to_crop_coords(
    points: np.ndarray | Sequence[Sequence[float]], box: Sequence[float], margin: float, size: int
) -> np.ndarray:
    """Map image-pixel points ``[..., 2]`` into the pixels of ``crop_face(image, box, margin, size)``."""
    x0, y0, side = crop_window(box, margin)
    pts = np.asarray(points, dtype=np.float64)
    return (pts - np.array([x0, y0], dtype=np.float64)) * (size / side)


def crop_face(image: np.ndarray, box: Sequence[float], margin: float, size: int) -> np.ndarray:
    """Cut the margin-scaled square around ``box`` out of ``image`` and resize it.

    ``image`` is ``H x W x 3`` uint8 (RGB). Returns ``size x size x 3`` uint8.
    Parts of the square outside the image are black. Downscaling uses area
    interpolation, upscaling bilinear.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    ix0, iy0, side = crop_window(box, margin)
    ix1, iy1 = ix0 + side, iy0 + side
    # Intersection with the image, then pad what lies outside.
    cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        region = np.zeros((side, side, 3), dtype=np.uint8)
    else:
        region = image[cy0:cy1, cx0:cx1]
        pad = (cy0 - iy0, iy1 - cy1, cx0 - ix0, ix1 - cx1)
        if any(pad):
            region = cv2.copyMakeBorder(region, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=interp)


#: How far the extra views of :func:`crop_views` move the face box, as a fraction of its longer side.
VIEW_SHIFT = 0.02
#: Crops :func:`crop_views` makes per face: THE crop of the box moved left, right, up and down,
#: the last two mirrored.
VIEWS = 4


def view_boxes(box: Sequence[float], shift: float = VIEW_SHIFT) -> list[tuple[float, float, float, float]]:
    """``box`` and ``box`` moved by ``shift`` of its longer side left, right, up and down."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    d = float(shift) * max(x1 - x0, y1 - y0)
    return [(x0 + dx, y0 + dy, x1 + dx, y1 + dy) for dx, dy in ((0, 0), (-d, 0), (d, 0), (0, -d), (0, d))]


def crop_views(
    image: np.ndarray, box: Sequence[float], margin: float, size: int, shift: float = VIEW_SHIFT
) -> np.ndarray:
    """The :data:`VIEWS` crops scored for one face in multi-crop mode: THE crop
    (:func:`crop_face`) of the box moved by ``shift`` of its side left, right, up and down
    (:func:`view_boxes` without the box itself), the up and down ones mirrored.

    Returns ``[4, size, size, 3]`` uint8. The classifier averages their logits
    (:meth:`detector.classifier.Classifier.score` with ``views=4``): the network's score moves
    with a few pixels of box, and the mean over a ring of nearby boxes moves about half as much.
    The four views sit symmetrically around the detector's box, and half are mirrored, as half
    of the training crops were. (Measured on test-split faces: adding the box itself and its
    mirror, or mirrors of all five, steadied the mean only a little more for 1.5-2.5x the
    classifier time; see MODEL_CARD.md.)
    """
    crops = [crop_face(image, b, margin, size) for b in view_boxes(box, shift)[1:]]
    crops[2], crops[3] = crops[2][:, ::-1], crops[3][:, ::-1]
    return np.ascontiguousarray(np.stack(crops))


def turn_back(
    image: np.ndarray, box: Sequence[float], orientation: int, points: Sequence[Sequence[float]] = ()
) -> tuple[np.ndarray, tuple[float, float, float, float], list[tuple[float, float]]]:
    """``image`` turned ``orientation`` degrees counter-clockwise (a multiple of 90: it undoes a
    face turned that far clockwise), and ``box`` and ``points`` in the turned image's pixels."""
    turns = (int(orientation) // 90) % 4
    box_t, pts = _turned(image.shape, box, points, turns)
    return np.ascontiguousarray(np.rot90(image, turns)), box_t, pts


def _turned(
    shape: Sequence[int], box: Sequence[float], points: Sequence[Sequence[float]], turns: int
) -> tuple[tuple[float, float, float, float], list[tuple[float, float]]]:
    """``box`` and ``points`` of a picture of ``shape`` after ``turns`` counter-clockwise quarter
    turns (one turn: ``(x, y) -> (y, W - x)``, the picture's sides swapping)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    pts = [(float(x), float(y)) for x, y in points]
    height, width = int(shape[0]), int(shape[1])
    for _ in range(turns):
        x0, y0, x1, y1 = y0, width - x1, y1, width - x0
        pts = [(y, width - x) for x, y in pts]
        height, width = width, height
    return (x0, y0, x1, y1), pts


def crop_boxes(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    margin: float,
    size: int,
    views: int = 1,
    orientations: Sequence[int] | None = None,
) -> np.ndarray:
    """THE crop of each box (``views == 1``) or its :data:`VIEWS` crops (:func:`crop_views`) one
    after the other: ``[len(boxes) * views, size, size, 3]`` uint8, what
    :meth:`detector.classifier.Classifier.score` takes with the same ``views``.

    ``orientations`` (the detector's :attr:`~detector.faces.DetectedFace.orientation` of each
    box, degrees clockwise): a turned face is cropped from the image turned back
    (:func:`turn_back`), so it is scored upright; the crop is exactly the one an upright copy
    of the picture gives.
    """
    if views not in (1, VIEWS):
        raise ValueError(f"views must be 1 or {VIEWS}, not {views}")
    if not len(boxes):
        return np.zeros((0, size, size, 3), np.uint8)
    turned: dict[int, np.ndarray] = {}  # the image turned back, once per angle
    out = []
    for i, box in enumerate(boxes):
        turns = (int(orientations[i]) // 90) % 4 if orientations is not None else 0
        pic = image
        if turns:
            if turns not in turned:
                turned[turns] = np.ascontiguousarray(np.rot90(image, turns))
            pic, box = turned[turns], _turned(image.shape, box, (), turns)[0]
        one = crop_face(pic, box, margin, size)[None] if views == 1 else crop_views(pic, box, margin, size)
        out.append(one)
    return np.concatenate(out)


@functools.lru_cache(maxsize=16)
def _levels(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, 256]`` float32: ``(v / 255 - mean) / std`` of every uint8 level ``v`` per channel,
    computed with the same float32 operations as the formula itself (bit for bit)."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
    table = (levels[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table


def to_model_input(crops: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 RGB crops -> ``[N, 3, S, S]`` float32, ``(crops / 255 - mean) / std``.

    Looked up per channel in a table of the 256 levels, written straight in channel-first order
    (4x faster than computing in float and transposing; the same values)."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be [N, S, S, 3], not {list(crops.shape)}")
    mean = np.broadcast_to(np.asarray(mean, np.float32), (3,))  # ValueError unless 1 or 3 values
    std = np.broadcast_to(np.asarray(std, np.float32), (3,))
    if crops.dtype != np.uint8:  # not crops: the formula itself
        x = crops.astype(np.float32) * np.float32(1.0 / 255.0)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    table = _levels(tuple(mean.tolist()), tuple(std.tolist()))
    n, height, width, _ = crops.shape
    out = np.empty((n, 3, height, width), np.float32)
    for channel in range(3):
        np.take(table[channel], crops[..., channel], out=out[:, channel])
    return out
