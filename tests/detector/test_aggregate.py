"""Named aggregation rules: frame, track, image and video verdicts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.aggregate import (
    IMAGE_RULE,
    MIN_TRACK_FACES,
    TRACK_RULE,
    frame_score,
    image_verdict,
    track_score,
    trimmed_mean,
    video_rule,
    video_verdict,
)


def test_frame_and_image_take_the_most_suspicious_face() -> None:
    assert frame_score([0.1, 0.9, 0.3]) == 0.9
    assert frame_score([]) is None
    v = image_verdict([0.2, 0.7, 0.7, 0.1])
    assert v is not None and v.probability == 0.7 and v.decided_by == 1 and v.rule == IMAGE_RULE
    assert image_verdict([]) is None


def test_track_score_trims_outliers_symmetrically() -> None:
    assert track_score([0.4]) == 0.4
    assert track_score([0.2, 0.4]) == pytest.approx(0.3)  # < 5 faces: plain mean
    # 10 faces: drop 2 lowest and 2 highest
    probs = [0.0, 0.01, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.99, 1.0]
    assert track_score(probs) == pytest.approx(0.3)
    # one mis-scored frame barely moves a long track
    assert track_score([0.1] * 9 + [0.99]) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        trimmed_mean([])
    assert TRACK_RULE == "trimmed_mean_20"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_track_score_is_bounded_and_order_free(probs) -> None:
    s = track_score(probs)
    assert min(probs) - 1e-12 <= s <= max(probs) + 1e-12
    assert track_score(list(reversed(probs))) == pytest.approx(s)


def test_video_verdict_ignores_short_tracks_unless_nothing_else() -> None:
    scores = {0: 0.2, 1: 0.95, 2: 0.4}
    sizes = {0: 20, 1: 2, 2: 10}  # track 1 is a 2-face blip
    v = video_verdict(scores, sizes)
    assert v is not None and v.decided_by == 2 and v.probability == 0.4
    assert v.rule == video_rule(MIN_TRACK_FACES) and "min_faces=3" in v.rule
    only_short = video_verdict({0: 0.3, 1: 0.8}, {0: 1, 1: 2})
    assert only_short is not None and only_short.decided_by == 1 and "all_short" in only_short.rule
    assert video_verdict({}, {}) is None
    tie = video_verdict({3: 0.5, 1: 0.5}, {3: 5, 1: 5})
    assert tie is not None and tie.decided_by == 1
