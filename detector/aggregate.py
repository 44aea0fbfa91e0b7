"""Named rules that turn per-face probabilities into frame, track, image and video verdicts.

All inputs are calibrated fake probabilities (see :class:`detector.card.Calibration`).

``max_face`` (frames and images)
    A frame's or an image's score is the highest probability among its faces: one
    manipulated face makes the picture manipulated.

``trimmed_mean_20`` (tracks)
    A track's score is the mean of its face probabilities after dropping the lowest and
    the highest 20 % (``floor(0.2 * n)`` from each end; a plain mean below 5 faces).
    Symmetric, so it keeps the scale the thresholds were chosen on, while single
    mis-scored frames (blur, occlusion, a detector false positive) cannot swing it.

``max_track(min_faces=3)`` (videos)
    The verdict is the most suspicious track's score, among tracks with at least
    ``min_faces`` faces. Shorter tracks (spurious detections, people passing by) only
    decide when no track is that long; the rule name then reads
    ``max_track(all_short)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FRAME_RULE = "max_face"
IMAGE_RULE = "max_face"
TRACK_RULE = "trimmed_mean_20"
TRIM_FRACTION = 0.2
MIN_TRACK_FACES = 3


def max_face(probabilities: Sequence[float]) -> float | None:
    """``max_face``: highest probability among the faces; ``None`` without faces."""
    return float(max(probabilities)) if len(probabilities) else None


def frame_score(probabilities: Sequence[float]) -> float | None:
    """Score of one video frame (rule :data:`FRAME_RULE`)."""
    return max_face(probabilities)


def trimmed_mean(probabilities: Sequence[float], fraction: float = TRIM_FRACTION) -> float:
    """Mean after dropping ``floor(fraction * n)`` values from each end."""
    values = sorted(float(p) for p in probabilities)
    if not values:
        raise ValueError("trimmed mean of no values")
    k = int(math.floor(fraction * len(values)))
    kept = values[k : len(values) - k] if len(values) - 2 * k > 0 else values
    return sum(kept) / len(kept)


def track_score(probabilities: Sequence[float]) -> float:
    """Score of one track (rule :data:`TRACK_RULE`)."""
    return trimmed_mean(probabilities, TRIM_FRACTION)


@dataclass(frozen=True)
class Verdict:
    """An aggregated verdict: its probability, which face/track decided, and the rule."""

    probability: float
    decided_by: int
    rule: str


def image_verdict(face_probabilities: Sequence[float]) -> Verdict | None:
    """Image verdict: the most suspicious face decides (``max_face``); ``None`` without faces."""
    if not len(face_probabilities):
        return None
    best = max(range(len(face_probabilities)), key=lambda i: (face_probabilities[i], -i))
    return Verdict(float(face_probabilities[best]), best, IMAGE_RULE)


def video_rule(min_faces: int = MIN_TRACK_FACES, all_short: bool = False) -> str:
    """Name of the video rule as reported in ``AnalysisResult.aggregation``."""
    which = "all_short" if all_short else f"min_faces={min_faces}"
    return f"max_track({which}) of {TRACK_RULE} per track, {FRAME_RULE} per frame"


def video_verdict(
    track_scores: Mapping[int, float],
    track_sizes: Mapping[int, int],
    min_faces: int = MIN_TRACK_FACES,
) -> Verdict | None:
    """Video verdict: the highest score among tracks with ``>= min_faces`` faces.

    Falls back to all tracks when none is that long; ``None`` when there is no track.
    Ties go to the lowest track id.
    """
    if not track_scores:
        return None
    long_tracks = [k for k in track_scores if track_sizes.get(k, 0) >= min_faces]
    candidates = long_tracks or list(track_scores)
    best = max(sorted(candidates), key=lambda k: track_scores[k])
    return Verdict(float(track_scores[best]), int(best), video_rule(min_faces, not long_tracks))
