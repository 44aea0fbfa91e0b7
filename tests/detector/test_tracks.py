"""Linking faces across sampled frames into tracks."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from detector.tracks import iou, link_tracks


@dataclass(frozen=True)
class _Face:
    box: tuple[float, float, float, float]


def _box(cx: float, cy: float, side: float = 50.0) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def test_iou_basics() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_one_still_face_is_one_track_and_objects_with_box_work() -> None:
    frames = [[_Face(_box(100, 100))] for _ in range(6)]
    assert link_tracks(frames) == [[0]] * 6


def test_two_people_keep_their_ids_whatever_the_detection_order() -> None:
    frames = []
    for t in range(8):
        a, b = _box(100 + 3 * t, 100), _box(400 - 3 * t, 120)
        frames.append([a, b] if t % 2 == 0 else [b, a])
    ids = link_tracks(frames)
    for t, frame_ids in enumerate(ids):
        assert frame_ids == ([0, 1] if t % 2 == 0 else [1, 0])


def test_gaps_are_bridged_up_to_max_gap() -> None:
    face = _box(200, 200)
    frames = [[face], [], [], [face]]
    assert link_tracks(frames, max_gap=2) == [[0], [], [], [0]]
    assert link_tracks(frames, max_gap=1) == [[0], [], [], [1]]


def test_fast_motion_uses_the_centre_fallback_and_size_change_breaks_it() -> None:
    # no overlap between frames (moves 60 px, side 50) but within one face size+ -> same track
    frames = [[_box(100, 100)], [_box(140, 100)], [_box(180, 100)]]
    assert [f for f in link_tracks(frames, iou_threshold=0.9)] == [[0], [0], [0]]
    # a far face or a face of very different size starts a new track
    assert link_tracks([[_box(100, 100)], [_box(400, 100)]]) == [[0], [1]]
    assert link_tracks([[_box(100, 100, 50)], [_box(100, 100, 200)]], iou_threshold=0.9) == [[0], [1]]


def test_new_person_appearing_gets_a_new_id_and_ids_are_deterministic() -> None:
    frames = [[_box(100, 100)], [_box(101, 100)], [_box(102, 100), _box(500, 300)]]
    first = link_tracks(frames)
    assert first == [[0], [0], [0, 1]]
    assert link_tracks(frames) == first


@settings(max_examples=60, deadline=None)
@given(
    n_frames=st.integers(2, 12),
    x0=st.floats(0, 200),
    sep=st.floats(1.5, 6.0),
    side=st.floats(20, 100),
    vx=st.floats(-0.5, 0.5),
    vy=st.floats(-0.5, 0.5),
    swap=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_parallel_faces_never_swap_ids(n_frames, x0, sep, side, vx, vy, swap) -> None:
    """Two same-size faces moving in parallel (``sep`` and per-frame motion in face sides)."""
    frames = []
    for t in range(n_frames):
        a = _box(x0 + vx * side * t, 300 + vy * side * t, side)
        b = _box(x0 + (sep + vx * t) * side, 300 + vy * side * t, side)
        frames.append([b, a] if swap[t] else [a, b])
    ids = link_tracks(frames)
    id_a = {f[1] if swap[t] else f[0] for t, f in enumerate(ids)}
    id_b = {f[0] if swap[t] else f[1] for t, f in enumerate(ids)}
    assert len(id_a) == 1 and len(id_b) == 1 and id_a != id_b


_boxes = st.lists(
    st.tuples(st.floats(0, 500), st.floats(0, 500), st.floats(5, 150), st.floats(5, 150)).map(
        lambda v: (v[0], v[1], v[0] + v[2], v[1] + v[3])
    ),
    max_size=5,
)


@settings(max_examples=80, deadline=None)
@given(frames=st.lists(_boxes, max_size=10), gap=st.integers(0, 3))
def test_every_face_gets_exactly_one_id_unique_within_its_frame(frames, gap) -> None:
    ids = link_tracks(frames, max_gap=gap)
    assert [len(f) for f in ids] == [len(f) for f in frames]
    for frame_ids in ids:
        assert len(set(frame_ids)) == len(frame_ids)
    seen = sorted({i for f in ids for i in f})
    assert seen == list(range(len(seen)))  # ids are 0..n-1 in order of appearance
    order = [i for f in ids for i in f]
    assert [i for n, i in enumerate(order) if i not in order[:n]] == seen  # numbered by first appearance
    assert link_tracks(frames, max_gap=gap) == ids
