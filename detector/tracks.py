"""Link faces across sampled video frames into person tracks.

Greedy and deterministic. For each sampled frame, in order:

1. candidate tracks are those seen in one of the last ``max_gap + 1`` sampled frames;
2. (track, face) pairs whose IoU with the track's last box is >= ``iou_threshold`` are
   matched greedily, highest IoU first;
3. the remaining pairs fall back to centre distance: distance between box centres
   divided by the larger side of the track's last box, accepted below
   ``max_centre_distance`` when the two boxes' sizes differ by less than
   ``max_size_ratio``; matched greedily, nearest first;
4. every face left over starts a new track.

Ties are broken by (track id, face index), so the same input always gives the same ids.
Track ids are 0, 1, 2, ... in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Box = tuple[float, float, float, float]


def _as_box(face: Any) -> Box:
    """A face's ``(x0, y0, x1, y1)``: accepts a 4-sequence or anything with ``.box``."""
    box = getattr(face, "box", face)
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return x0, y0, x1, y1


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when disjoint)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(track_box: Box, box: Box) -> float:
    """Centre distance in units of the track box's larger side."""
    side = max(track_box[2] - track_box[0], track_box[3] - track_box[1], 1e-6)
    dx = (track_box[0] + track_box[2] - box[0] - box[2]) / 2.0
    dy = (track_box[1] + track_box[3] - box[1] - box[3]) / 2.0
    return (dx * dx + dy * dy) ** 0.5 / side


def _size_ratio(a: Box, b: Box) -> float:
    sa = max(a[2] - a[0], a[3] - a[1], 1e-6)
    sb = max(b[2] - b[0], b[3] - b[1], 1e-6)
    return max(sa, sb) / min(sa, sb)


def link_tracks(
    frames_faces: Sequence[Sequence[Any]],
    *,
    iou_threshold: float = 0.3,
    max_centre_distance: float = 1.0,
    max_size_ratio: float = 2.0,
    max_gap: int = 2,
) -> list[list[int]]:
    """Track id of every face, frame by frame (same nesting as ``frames_faces``).

    ``frames_faces[i]`` are the faces of the i-th *sampled* frame: boxes
    ``(x0, y0, x1, y1)`` or objects with a ``.box``. A track may skip up to ``max_gap``
    sampled frames. Within one frame two faces never share an id.
    """
    last_box: list[Box] = []  # per track id
    last_seen: list[int] = []  # sampled-frame position where each track was last seen
    result: list[list[int]] = []
    for t, faces in enumerate(frames_faces):
        boxes = [_as_box(f) for f in faces]
        ids: list[int | None] = [None] * len(boxes)
        live = [k for k in range(len(last_box)) if t - last_seen[k] <= max_gap + 1]
        used: set[int] = set()

        pairs = []
        for k in live:
            for j, box in enumerate(boxes):
                v = iou(last_box[k], box)
                if v >= iou_threshold:
                    pairs.append((-v, k, j))
        for _, k, j in sorted(pairs):
            if k not in used and ids[j] is None:
                ids[j] = k
                used.add(k)

        pairs = []
        for k in live:
            if k in used:
                continue
            for j, box in enumerate(boxes):
                if ids[j] is not None or _size_ratio(last_box[k], box) >= max_size_ratio:
                    continue
                d = _centre_distance(last_box[k], box)
                if d < max_centre_distance:
                    pairs.append((d, k, j))
        for _, k, j in sorted(pairs):
            if k not in used and ids[j] is None:
                ids[j] = k
                used.add(k)

        for j, box in enumerate(boxes):
            if ids[j] is None:
                ids[j] = len(last_box)
                last_box.append(box)
                last_seen.append(t)
            else:
                last_box[ids[j]] = box
                last_seen[ids[j]] = t
        result.append([int(i) for i in ids])  # type: ignore[arg-type]
    return result
