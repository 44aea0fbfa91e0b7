"""End-to-end analyzer tests: real MTCNN, a real tiny ONNX classifier, real photos and videos."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import detector
from detector.analyze import Analyzer, Limits, create_analyzer
from detector.card import ModelCardError
from detector.crops import VIEWS, crop_face, crop_views
from detector.faces import FaceDetector
from detector.schema import AnalysisResult
from detector.video import Sampling
from tests.detector import media_factory as mf
from tests.detector.scan_media import HEAD, face_video, jpeg_bytes, no_face_image, png_bytes


@pytest.fixture(scope="module")
def detector_() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def analyzer(tiny_model: Path, detector_: FaceDetector) -> Analyzer:
    return create_analyzer(tiny_model, face_detector=detector_)


@pytest.fixture(scope="module")
def one_person(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return face_video(tmp_path_factory.mktemp("v") / "one.mp4", astronaut, people=1, frames=24)


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return face_video(tmp_path_factory.mktemp("v") / "two.mp4", astronaut, people=2, frames=24)


def _assert_no_verdict(r: AnalysisResult, status: str) -> None:
    assert r.status == status and type(r.status) is str, (r.status, r.error)
    assert r.fake_probability is None and r.label is None and r.label_strict is None
    assert r.error


def test_package_reexports_everything_it_lists() -> None:
    assert {"create_analyzer", "Analyzer", "Limits", "Sampling", "AnalysisResult", "ModelCard"} <= set(
        detector.__all__
    )
    for name in detector.__all__:
        assert getattr(detector, name) is not None
    assert set(detector.__all__) == set(detector._EXPORTS)


def test_astronaut_photo_one_face_scored(analyzer: Analyzer, astronaut: np.ndarray) -> None:
    data = jpeg_bytes(astronaut)
    r = analyzer.analyze_bytes(data, "astronaut.jpg")
    assert r.status == "ok" and r.error is None and r.media_type == "image"
    assert type(r.status) is str and f"{r.status}" == "ok"  # plain values, as in the JSON
    assert (r.width, r.height) == (512, 512)
    assert r.sha256 == hashlib.sha256(data).hexdigest() and r.size_bytes == len(data)
    assert r.faces is not None and len(r.faces) == 1
    face = r.faces[0]
    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert 190 < cx < 260 and 80 < cy < 160 and 60 < x1 - x0 < 140  # on her face
    assert len(face.landmarks) == 5 and face.detection_score > 0.9
    assert 0.0 <= r.fake_probability <= 1.0 and r.fake_probability == face.fake_probability
    card = analyzer.card
    assert r.label == ("fake" if r.fake_probability >= card.threshold_balanced else "real")
    assert r.label_strict == ("fake" if r.fake_probability >= card.threshold_strict else "real")
    assert r.aggregation == "max_face"
    assert r.model is not None and r.model.name == card.name and r.model.version == card.version
    assert set(r.timings) == {"decode", "detect", "classify", "total"}
    assert r.timings["total"] >= r.timings["detect"] > 0
    # a photo's face is scored as the calibrated mean logit of the 4 views of THE crop (card
    # margin and size) of the decoded image
    from detector.media import decode_image

    assert analyzer.multi_crop == "images" and r.crop_views == VIEWS == 4
    image = decode_image(data)
    views = crop_views(image, face.box, card.crop_margin, card.input_size)
    assert views.shape == (4, card.input_size, card.input_size, 3)
    one_each = analyzer.classifier.score(views).logits
    expected = card.calibration(np.array([one_each.astype(np.float64).mean()]))[0]
    assert face.fake_probability == pytest.approx(float(expected), abs=1e-5)


def test_multi_crop_none_scores_the_single_crop(tiny_model: Path, detector_, astronaut) -> None:
    from detector.media import decode_image

    single = create_analyzer(tiny_model, face_detector=detector_, multi_crop="none")
    data = jpeg_bytes(astronaut)
    r = single.analyze_bytes(data, "astronaut.jpg")
    assert r.status == "ok" and r.crop_views == 1 and r.faces is not None
    card, face = single.card, r.faces[0]
    crop = crop_face(decode_image(data), face.box, card.crop_margin, card.input_size)
    expected = single.classifier.score(crop[None]).probabilities[0]
    assert face.fake_probability == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(ValueError, match="multi_crop must be one of"):
        create_analyzer(tiny_model, face_detector=detector_, multi_crop="some")  # type: ignore[arg-type]


def test_path_image_and_bytes_agree(analyzer: Analyzer, astronaut: np.ndarray, tmp_path: Path) -> None:
    data = png_bytes(astronaut)
    path = tmp_path / "astro.png"
    path.write_bytes(data)
    a = analyzer.analyze_path(path)
    b = analyzer.analyze_image(data, "astro.png")
    assert a.status == b.status == "ok"
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    assert a.fake_probability == pytest.approx(b.fake_probability)
    assert a.path == str(path)


def test_two_faces_in_one_image_are_scored_in_one_call(analyzer: Analyzer, astronaut: np.ndarray) -> None:
    x0, y0, x1, y1 = HEAD
    head = astronaut[y0:y1, x0:x1]
    canvas = np.full((300, 500, 3), 80, np.uint8)
    canvas[40 : 40 + head.shape[0], 20 : 20 + head.shape[1]] = head
    canvas[40 : 40 + head.shape[0], 270 : 270 + head.shape[1]] = head[:, ::-1]
    calls: list[int] = []
    clf = analyzer.classifier
    real = clf.score

    def counting(crops: np.ndarray, views: int = 1):
        calls.append(len(crops))
        return real(crops, views=views)

    clf.score = counting  # type: ignore[method-assign]
    try:
        r = analyzer.analyze_bytes(png_bytes(canvas), "pair.png")
    finally:
        del clf.score
    assert r.status == "ok" and r.faces is not None and len(r.faces) == 2
    assert calls == [2 * VIEWS]  # both faces' views in one call
    assert r.fake_probability == max(f.fake_probability for f in r.faces)


def test_faces_smaller_than_the_card_allows_are_not_scored(astronaut: np.ndarray, tmp_path: Path) -> None:
    """The analyzer's own detector looks for faces of at least the card's min_face_size: the
    astronaut's ~100 px face is too small for a card that says 160 px, not once upscaled 2x."""
    import cv2

    from tests.conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "big_faces.onnx", min_face_size=160)
    a = create_analyzer(model, threads=1)
    assert a.face_detector.min_face_size == 160 and a.face_detector.threads == 1
    small = a.analyze_bytes(jpeg_bytes(astronaut), "small.jpg")
    _assert_no_verdict(small, "no_face")
    big = a.analyze_bytes(jpeg_bytes(cv2.resize(astronaut, (1024, 1024))), "big.jpg")
    assert big.status == "ok" and len(big.faces) == 1
    assert big.faces[0].box[2] - big.faces[0].box[0] >= 160


def test_no_face_image(analyzer: Analyzer) -> None:
    r = analyzer.analyze_bytes(png_bytes(no_face_image()), "gradient.png")
    _assert_no_verdict(r, "no_face")
    assert r.faces == [] and r.sha256 and r.width == 256


def test_one_person_video(analyzer: Analyzer, one_person: Path) -> None:
    seen: list[tuple[int, int]] = []
    r = analyzer.analyze_path(
        one_person, sampling=Sampling("count", 8), progress=lambda d, t: seen.append((d, t))
    )
    assert r.status == "ok" and r.media_type == "video", r.error
    assert seen == [(i, 8) for i in range(1, 9)]
    assert r.frames is not None and len(r.frames) == 8 and r.faces is None
    assert [f.index for f in r.frames] == sorted(f.index for f in r.frames)
    assert all(len(f.faces) == 1 for f in r.frames)
    assert r.tracks is not None and len(r.tracks) == 1
    track = r.tracks[0]
    assert track.frames == [f.index for f in r.frames] and track.first_time == 0.0
    assert r.fake_probability == pytest.approx(track.fake_probability)
    assert 0.0 <= r.fake_probability <= 1.0 and r.label == analyzer.card.label_for(r.fake_probability)
    assert r.aggregation.startswith("max_track(min_faces=3)")
    assert r.crop_views == 1  # videos average each face over frames, not over views (default)
    assert r.video is not None and r.video.frames_sampled == 8 and r.video.sampling == "count=8"
    assert (r.video.width, r.video.height, r.width) == (640, 360, 640)
    assert r.video.fps == pytest.approx(12.0) and r.video.duration == pytest.approx(2.0, abs=0.1)
    assert r.sha256 == hashlib.sha256(one_person.read_bytes()).hexdigest()
    assert set(r.timings) == {"decode", "detect", "classify", "total"}


def test_two_people_two_tracks(analyzer: Analyzer, two_people: Path) -> None:
    r = analyzer.analyze_video(two_people, sampling=Sampling("fps", 4), name="two.mp4")
    assert r.status == "ok" and r.path == "two.mp4", r.error
    assert r.tracks is not None and len(r.tracks) == 2
    n = len(r.frames)
    assert n == 8 and all(len(t.frames) == n for t in r.tracks)
    for frame in r.frames:
        left, right = sorted(frame.faces, key=lambda f: f.box[0])
        assert (left.track_id, right.track_id) == (0, 1)
        assert frame.fake_probability == max(left.fake_probability, right.fake_probability)
    assert r.fake_probability == pytest.approx(max(t.fake_probability for t in r.tracks))


def test_cancel_and_timeout(analyzer: Analyzer, one_person: Path, tiny_model: Path, detector_) -> None:
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    r = analyzer.analyze_path(one_person, sampling=Sampling("count", 8), cancel=cancel)
    _assert_no_verdict(r, "cancelled")
    strict = Analyzer(tiny_model, face_detector=detector_, limits=Limits(time_limit=1e-6))
    _assert_no_verdict(strict.analyze_path(one_person), "timeout")
    # the background decoder stopped with the analysis
    assert not [t for t in threading.enumerate() if t.name == "facetrust-prefetch"]


def test_no_face_video(analyzer: Analyzer, tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "plain.mp4", n_frames=10)  # coded patterns, no face
    r = analyzer.analyze_path(path, sampling=Sampling("count", 4))
    _assert_no_verdict(r, "no_face")
    assert r.tracks == [] and r.frames is not None and len(r.frames) == 4


def test_video_turn_needs_half_the_probed_frames_agreeing() -> None:
    from detector.analyze import _video_turn

    assert _video_turn([90, 90, 90]) == 0  # fewer frames than the probe
    assert _video_turn([90, 90, 0, 0]) == 90 and _video_turn([180, 0, 0, 0]) == 0
    assert _video_turn([270, 270, 90, -1]) == 270 and _video_turn([0, 0, 0, 0, 0]) == 0
    assert _video_turn([-1, -1, 90, 180]) == 0


class _CountingDetector(FaceDetector):
    """Records, per detection call, how many frames it got and whether it checked orientation."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.calls: list[tuple[int, bool, int]] = []  # (frames, orientation pass, turn)

    def detect_batch(self, images, *, orient=None, turn=0, _upright_pass=False):  # type: ignore[no-untyped-def]
        if not _upright_pass:
            self.calls.append((len(images), bool(self.orient if orient is None else orient), turn))
        return super().detect_batch(images, orient=orient, turn=turn, _upright_pass=_upright_pass)


def test_video_orientation_is_probed_then_left_off_or_kept(tiny_model: Path, astronaut, tmp_path) -> None:
    """Upright video: the orientation pass runs on the first frames with faces only. A video
    turned as a whole (no rotation tag): it stays on and every face is scored turned back."""
    from detector.analyze import ORIENT_PROBE_FRAMES

    detector = _CountingDetector()
    an = create_analyzer(tiny_model, face_detector=detector, batch_size=2)
    upright = face_video(tmp_path / "up.mp4", astronaut, people=1, frames=12)
    r = an.analyze_path(upright, sampling=Sampling("all"))
    assert r.status == "ok" and all(f.orientation == 0 for fr in r.frames for f in fr.faces)
    probed = sum(n for n, orient, _ in detector.calls if orient)
    assert ORIENT_PROBE_FRAMES <= probed < 12 and sum(n for n, _, _ in detector.calls) == 12
    assert all(turn == 0 for _, _, turn in detector.calls)
    detector.calls.clear()
    picture = np.ascontiguousarray(np.rot90(astronaut, -1))  # turned 90 degrees clockwise
    turned = mf.write_video(tmp_path / "turned.mp4", n_frames=12, size=(512, 512), draw=lambda i: picture)
    r = an.analyze_path(turned, sampling=Sampling("all"))
    # the probe frames find every face turned by 90: the rest are turned back before detection
    probed = sum(n for n, orient, turn in detector.calls if orient and not turn)
    locked = sum(n for n, orient, turn in detector.calls if turn == 90 and not orient)
    assert probed >= ORIENT_PROBE_FRAMES and probed + locked == 12 and locked > 0
    assert r.status == "ok" and [f.orientation for fr in r.frames for f in fr.faces] == [90] * 12
    boxes = {tuple(round(v) for v in f.box) for fr in r.frames for f in fr.faces}
    assert len(boxes) <= 2  # the same still picture: the same box, probed or locked


def test_damaged_and_cut_videos_say_so(analyzer: Analyzer, astronaut, tmp_path: Path) -> None:
    """A verdict on part of a video carries a warning; a clean video carries none (its faces,
    27 px for the tiny model's 64 px input, only get the small-face warning)."""
    src = mf.write_video(tmp_path / "clip.mp4", n_frames=40, size=(256, 256), draw=astronaut, gop=10,
                         faststart=True, options={"bf": "0", "sc_threshold": "0"})
    clean = analyzer.analyze_path(src, sampling=Sampling("all"))
    assert clean.status == "ok" and not clean.video.truncated
    assert len(clean.warnings) == 1 and "small faces" in clean.warnings[0]
    bad = mf.damage_packets(src, tmp_path / "damaged.mp4", [13])
    damaged = analyzer.analyze_path(bad, sampling=Sampling("all"))
    assert damaged.status == "ok" and damaged.video.decode_errors >= 1 and not damaged.video.truncated
    assert damaged.video.frames_damaged >= 6 and len(damaged.frames) == 40 - damaged.video.frames_damaged
    assert not any(13 <= f.index < 20 for f in damaged.frames)
    assert len(damaged.warnings) == 2 and "damaged video data" in damaged.warnings[0]
    half = mf.truncate_file(src, tmp_path / "cut.mp4", 0.5)
    cut = analyzer.analyze_path(half, sampling=Sampling("count", 8))
    assert cut.status == "ok" and cut.video.truncated
    assert any("breaks off" in w for w in cut.warnings)
    assert cut.frames[-1].time < 1.6  # 40 frames at 25 fps: the first half or so


def test_rotated_phone_video_is_analysed_upright(analyzer: Analyzer, astronaut, tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "phone.mp4", n_frames=6, size=(360, 640), rotation=90, draw=astronaut)
    r = analyzer.analyze_path(path, sampling=Sampling("all"))
    assert r.status == "ok", r.error
    assert r.video.rotation == 90 and (r.width, r.height) == (360, 640)
    assert len(r.frames) == 6 and all(len(f.faces) == 1 for f in r.frames)
    assert len(r.tracks) == 1


@pytest.mark.parametrize(
    ("name", "make", "status"),
    [
        ("empty.jpg", lambda a, d: b"", "unreadable"),
        ("notes.jpg", lambda a, d: mf.text_bytes(), "unsupported"),
        ("cut.jpg", lambda a, d: mf.truncated(jpeg_bytes(a), 0.5), "unreadable"),
        ("cut.png", lambda a, d: mf.truncated(png_bytes(a), 0.5), "unreadable"),
        ("huge.png", lambda a, d: mf.png_bomb(20000), "too_large"),
        ("cut.mp4", lambda a, d: mf.truncated(d.read_bytes(), 0.5), "unreadable"),
    ],
)
def test_bad_inputs_get_a_status_and_no_score(
    analyzer: Analyzer, astronaut, one_person, tmp_path, monkeypatch, name, make, status
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = make(astronaut, one_person)
    r = analyzer.analyze_bytes(data, name)
    _assert_no_verdict(r, status)
    assert r.sha256 == hashlib.sha256(data).hexdigest()
    assert os.listdir(tmp_path) == []  # the temporary video copy is always removed
    path = tmp_path / name
    path.write_bytes(data)
    _assert_no_verdict(analyzer.analyze_path(path), status)
    assert not [t for t in threading.enumerate() if t.name == "facetrust-prefetch"]


def test_zero_frame_video_missing_file_and_size_cap(
    analyzer: Analyzer, tmp_path: Path, tiny_model: Path, detector_, astronaut
) -> None:
    zero = mf.write_zero_frame_video(tmp_path / "zero.avi")
    _assert_no_verdict(analyzer.analyze_path(zero), "unreadable")
    _assert_no_verdict(analyzer.analyze_path(tmp_path / "absent.jpg"), "unreadable")
    small = Analyzer(tiny_model, face_detector=detector_, limits=Limits(max_file_bytes=1000))
    r = small.analyze_bytes(jpeg_bytes(astronaut), "a.jpg")
    _assert_no_verdict(r, "too_large")
    assert "limit" in r.error


def test_unexpected_failure_is_status_error_not_a_score(tiny_model: Path, astronaut) -> None:
    class BrokenDetector(FaceDetector):
        def detect_batch(self, images):
            raise RuntimeError("detector exploded")

    r = Analyzer(tiny_model, face_detector=BrokenDetector()).analyze_bytes(jpeg_bytes(astronaut), "a.jpg")
    _assert_no_verdict(r, "error")
    assert "detector exploded" in r.error


def test_bad_model_is_refused(tmp_path: Path, detector_) -> None:
    with pytest.raises(ModelCardError, match="not found"):
        Analyzer(tmp_path / "missing.onnx", face_detector=detector_)


@pytest.mark.slow
def test_shared_real_videos(analyzer: Analyzer, shared_data: Path) -> None:
    videos = shared_data / "videos" / "real"
    one = analyzer.analyze_path(videos / "liveportrait_d11.mp4", sampling=Sampling("count", 8))
    assert one.status == "ok", one.error
    long_tracks = [t for t in one.tracks if len(t.frames) >= 3]
    assert len(long_tracks) == 1 and len(long_tracks[0].frames) >= 6
    street = analyzer.analyze_path(videos / "facenet_street.mp4", sampling=Sampling("count", 8))
    assert street.status == "ok", street.error
    assert street.video.height == 1080 and street.video.frames_sampled == 8
    assert len([t for t in street.tracks if len(t.frames) >= 3]) >= 2  # several people
    assert 0.0 <= street.fake_probability <= 1.0


def test_video_batching_detects_by_pixel_budget_and_classifies_per_group(
    tiny_model: Path, detector_: FaceDetector, one_person: Path
) -> None:
    a = Analyzer(tiny_model, face_detector=detector_, batch_size=4, detect_pixels=2 * 640 * 360)
    detect_sizes: list[int] = []
    score_sizes: list[int] = []
    real_detect, real_score = detector_.detect_batch, a.classifier.score

    def spy_detect(images):
        detect_sizes.append(len(images))
        return real_detect(images)

    def spy_score(crops, views=1):
        score_sizes.append(len(crops))
        return real_score(crops, views=views)

    a.face_detector = type("Spy", (), {"detect_batch": staticmethod(spy_detect)})()
    a.classifier.score = spy_score  # type: ignore[method-assign]
    r = a.analyze_path(one_person, sampling=Sampling("count", 10))
    assert r.status == "ok" and len(r.frames) == 10
    assert detect_sizes == [2, 2, 2, 2, 2]
    assert score_sizes == [4, 4, 2]  # one face per frame, 4 frames per classifier call


def test_animated_gif_is_a_video_and_a_still_gif_an_image(analyzer: Analyzer, astronaut, tmp_path) -> None:
    small = astronaut[::2, ::2]
    anim = mf.animated_gif([np.roll(small, 3 * i, axis=1) for i in range(5)])
    r = analyzer.analyze_bytes(anim, "anim.gif", sampling=Sampling("all"))
    assert r.status == "ok" and r.media_type == "video", r.error
    assert len(r.frames) == 5 and len(r.tracks) == 1
    still = analyzer.analyze_bytes(mf.encode_image(small, "gif"), "still.gif")
    assert still.status == "ok" and still.media_type == "image" and len(still.faces) == 1


def test_multi_crop_all_scores_video_faces_as_the_mean_of_their_views(
    tiny_model: Path, detector_, one_person: Path
) -> None:
    every = create_analyzer(tiny_model, face_detector=detector_, multi_crop="all")
    assert every.views("video") == every.views("image") == VIEWS
    r = every.analyze_path(one_person, sampling=Sampling("count", 3))
    assert r.status == "ok" and r.crop_views == VIEWS and r.frames is not None
    frame = r.frames[0]
    image = next(iter(_decoded_frames(one_person, frame.index)))
    card, face = every.card, frame.faces[0]
    logits = every.classifier.score(crop_views(image, face.box, card.crop_margin, card.input_size)).logits
    expected = card.calibration(np.array([logits.astype(np.float64).mean()]))[0]
    assert face.fake_probability == pytest.approx(float(expected), abs=1e-5)


def _decoded_frames(path: Path, index: int):
    from detector.video import iter_sampled_frames

    with iter_sampled_frames(path, Sampling("count", 3)) as frames:
        for f in frames:
            if f.index == index:
                yield f.image_rgb


# -- from an audit of the Python API --------------------------------------------------------
def test_a_file_changed_during_analysis_gets_no_verdict(
    analyzer: Analyzer, astronaut: np.ndarray, one_person: Path, tmp_path: Path
) -> None:
    """The SHA-256 and the scores must come from the same bytes: a file replaced while it is
    analysed (here from the face_crops callback, mid-analysis) is refused."""
    other = tmp_path / "other.jpg"
    other.write_bytes(jpeg_bytes(np.ascontiguousarray(astronaut[:, ::-1])))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(astronaut))
    video = tmp_path / "clip.mp4"
    video.write_bytes(one_person.read_bytes())
    for target, replacement in ((photo, other), (video, other)):
        swapped: list[bool] = []

        def swap(_i: int | None, _c: np.ndarray, target: Path = target, new: Path = replacement,
                 swapped: list[bool] = swapped) -> None:
            if not swapped:
                swapped.append(True)
                os.replace(new, target) if new.exists() else target.write_bytes(b"x" * 10)

        r = analyzer.analyze_path(target, sampling=Sampling("count", 4), face_crops=swap)
        assert swapped and r.status == "unreadable" and "changed while it was analysed" in (r.error or "")
        assert r.sha256 is None and r.fake_probability is None and r.faces is None and r.frames is None
    assert analyzer.analyze_path(photo).status == "ok"  # unchanged now: analysed as usual


def test_still_images_obey_cancel_time_and_size_limits(tiny_model: Path, detector_: FaceDetector,
                                                        astronaut: np.ndarray) -> None:
    data = jpeg_bytes(astronaut)
    a = create_analyzer(tiny_model, face_detector=detector_)
    assert a.analyze_bytes(data, "a.jpg", cancel=lambda: True).status == "cancelled"
    assert a.analyze_image(data, "a.jpg", cancel=lambda: True).status == "cancelled"
    seen: list[tuple[int | None, int]] = []
    r = a.analyze_image(data, "a.jpg", face_crops=lambda i, c: seen.append((i, len(c))))
    assert r.status == "ok" and seen == [(None, len(r.faces or []))]
    quick = create_analyzer(tiny_model, face_detector=detector_, limits=Limits(time_limit=1e-9))
    r = quick.analyze_bytes(data, "a.jpg")
    assert r.status == "timeout" and r.fake_probability is None
    small = create_analyzer(tiny_model, face_detector=detector_, limits=Limits(max_file_bytes=1000))
    assert small.analyze_image(data, "a.jpg").status == "too_large"


def test_arguments_are_taken_or_refused_clearly(analyzer: Analyzer, astronaut: np.ndarray,
                                                one_person: Path) -> None:
    data = jpeg_bytes(astronaut)
    assert analyzer.analyze_bytes(data, None).path == "upload"  # e.g. an upload without a name
    assert analyzer.analyze_bytes(data, Path("a/b.jpg")).path == "a/b.jpg"
    assert analyzer.analyze_bytes(bytearray(data), b"c.jpg").path == "c.jpg"
    as_array = analyzer.analyze_bytes(np.frombuffer(data, np.uint8), "d.jpg")  # cv2.imencode's output
    assert as_array.status == "ok" and as_array.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(TypeError, match="data must be bytes"):
        analyzer.analyze_bytes(5, "e.jpg")  # type: ignore[arg-type]
    video = analyzer.analyze_bytes(one_person.read_bytes(), "x.mp\x004", sampling="count=3")  # type: ignore[arg-type]
    assert video.status == "ok" and len(video.frames or []) == 3 and video.path == "x.mp\x004"
    named = analyzer.analyze_video(one_person, name=Path("q.mp4"), sampling=Sampling("count", 2))
    assert named.path == "q.mp4"
    with pytest.raises(ValueError, match="time_limit"):
        Limits(time_limit=-1)
    with pytest.raises(ValueError, match="max_video_seconds"):
        Limits(max_video_seconds=0)
    with pytest.raises(TypeError, match="Limits"):
        create_analyzer(analyzer.classifier, limits={"time_limit": 5})  # type: ignore[arg-type]


def test_media_errors_pickle() -> None:
    import pickle

    from detector.media import MediaError, MediaTimeout

    for exc in (MediaError("unreadable", "cut"), MediaTimeout("slow")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and back.status == exc.status and str(back) == str(exc)


def test_analyzer_closes_safely_while_in_use(tiny_model: Path, astronaut: np.ndarray) -> None:
    import time

    data = jpeg_bytes(astronaut)

    def pool_threads() -> set[int]:
        return {t.ident or 0 for t in threading.enumerate() if t.name.startswith("facetrust-mtcnn")}

    before = pool_threads()
    with create_analyzer(tiny_model, threads=2) as a:
        expected = a.analyze_bytes(data, "a.jpg").fake_probability
        results: list[AnalysisResult] = []

        def work() -> None:
            results.extend(a.analyze_bytes(data, "a.jpg") for _ in range(6))

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            a.close()  # threads stop when their last user is done; a later call starts new ones
        for t in threads:
            t.join()
    assert len(results) == 18 and {r.status for r in results} == {"ok"}
    assert {r.fake_probability for r in results} == {expected}
    deadline = time.monotonic() + 10  # a pool closed while in use stops after its last call
    while pool_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pool_threads() - before


def test_analyze_video_refuses_a_still_image(
    analyzer: Analyzer, astronaut: np.ndarray, tmp_path: Path
) -> None:
    photo = tmp_path / "x.jpg"
    photo.write_bytes(jpeg_bytes(astronaut))
    r = analyzer.analyze_video(photo)
    assert r.status == "unsupported" and r.media_type == "image" and "still image" in (r.error or "")
    assert r.fake_probability is None


def test_small_deciding_faces_get_a_warning(astronaut: np.ndarray) -> None:
    """Faces whose model crop is enlarged more than LOW_DETAIL_UPSCALE times (shipped model: box
    side under 82 px) decide a verdict only with a warning; the score itself is unchanged."""
    import cv2

    from detector.analyze import LOW_DETAIL_UPSCALE, detail_warning
    from detector.card import read_card
    from detector.classifier import default_model_path

    card = read_card(str(default_model_path()))
    edge = card.input_size / (card.crop_margin * LOW_DETAIL_UPSCALE)
    assert 82 < edge < 82.1
    assert detail_warning([edge], card) is None and detail_warning([], card) is None
    assert detail_warning([float("nan")], card) is None
    warning = detail_warning([60, 61.78, 200, float("nan")], card)  # the median of the finite sides
    assert warning is not None and "box side 61.7 px, under 82.05 px" in warning
    assert "enlarged more than 1.5x" in warning
    assert "box side 82.0 px, under 82.05 px" in (detail_warning([edge - 0.01], card) or "")
    with create_analyzer() as analyzer:
        full = analyzer.analyze_bytes(jpeg_bytes(astronaut), "big.jpg")
        assert full.status == "ok" and full.warnings == []
        side = max(full.faces[0].box[2] - full.faces[0].box[0], full.faces[0].box[3] - full.faces[0].box[1])
        k = 60 / side
        small = cv2.resize(astronaut, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        r = analyzer.analyze_bytes(jpeg_bytes(small), "small.jpg")
        assert r.status == "ok" and len(r.warnings) == 1 and "small faces" in r.warnings[0], r.warnings
        assert r.fake_probability is not None and r.label in ("real", "fake")
        # a video decided by a track of small faces
        with tempfile.TemporaryDirectory() as tmp:
            h, w = small.shape[:2]
            size = ((w + 32) // 2 * 2, h * 2 + 2)  # the picture goes unscaled in the upper half
            clip = mf.write_video(Path(tmp) / "small.mp4", n_frames=8, size=size, draw=small)
            v = analyzer.analyze_path(clip, sampling=Sampling("count", 4))
        assert v.status == "ok" and any("small faces" in w for w in v.warnings), v.warnings


def test_min_face_raises_the_smallest_face_looked_for(
    tiny_model: Path, astronaut: np.ndarray, two_people: Path
) -> None:
    """``min_face`` (``--min-face``): faces are looked for from that box side, the result says
    from which; a face smaller than it is not reported (no score); it cannot go below the card's
    min_face_size (the tiny model's is 20 px)."""
    data = jpeg_bytes(astronaut)  # one face, box sides about 87 x 110 px
    with create_analyzer(tiny_model, multi_crop="none") as default:
        assert default.min_face_size == default.card.min_face_size == 20
        base = default.analyze_bytes(data, "a.jpg")
        video = default.analyze_path(two_people, sampling=Sampling("count", 4))
    assert base.status == "ok" and base.min_face_size == 20 and base.faces is not None
    assert video.status == "ok" and video.min_face_size == 20
    with create_analyzer(tiny_model, multi_crop="none", min_face=60) as raised:
        r = raised.analyze_bytes(data, "a.jpg")
        v = raised.analyze_path(two_people, sampling=Sampling("count", 4))
    assert r.status == "ok" and r.min_face_size == 60 and r.faces is not None and len(r.faces) == 1
    # the detector's pyramid stays anchored at the card's 20 px: the same box, so the same score
    assert r.faces[0].box == base.faces[0].box and r.fake_probability == base.fake_probability
    assert isinstance(raised.face_detector, FaceDetector) and raised.face_detector.pyramid_face_size == 20
    assert v.status == "ok" and v.min_face_size == 60  # its faces are about 110 px: all kept
    assert [len(f.faces) for f in v.frames or []] == [len(f.faces) for f in video.frames or []] == [2] * 4
    small = jpeg_bytes(cv2.resize(astronaut, (230, 230), interpolation=cv2.INTER_AREA))  # face ~48 px
    with create_analyzer(tiny_model, multi_crop="none") as default:
        assert default.analyze_bytes(small, "small.jpg").status == "ok"
    with create_analyzer(tiny_model, min_face=60) as raised:
        r = raised.analyze_bytes(small, "small.jpg")
    _assert_no_verdict(r, "no_face")
    assert r.min_face_size == 60 and r.faces == []
    assert r.error == "no face found in the image (faces are looked for from a box side of 60 px)"
    with create_analyzer(tiny_model, min_face=150) as too_big:
        v = too_big.analyze_path(two_people, sampling=Sampling("count", 4))
    _assert_no_verdict(v, "no_face")
    assert v.min_face_size == 150 and v.tracks == [] and all(f.faces == [] for f in v.frames or [])
    assert v.error and v.error.endswith("(faces are looked for from a box side of 150 px)")
    for bad, message in ((19, "min_face 19 px is outside 20..4096"), (4097, "outside 20..4096"),
                         (60.5, "whole number of pixels"), (True, "whole number of pixels")):
        with pytest.raises(ValueError, match=message):
            create_analyzer(tiny_model, min_face=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass it to your face_detector"):
        create_analyzer(tiny_model, face_detector=FaceDetector(min_face_size=30), min_face=60)
    own = create_analyzer(tiny_model, face_detector=FaceDetector(min_face_size=30))
    assert own.min_face_size == 30 and own.analyze_bytes(data, "a.jpg").min_face_size == 30
    # a fractional limit is recorded rounded up (no face under the recorded size is reported)
    assert create_analyzer(tiny_model, face_detector=FaceDetector(min_face_size=30.2)).min_face_size == 31
