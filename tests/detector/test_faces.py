"""MTCNN on ONNX Runtime (detector/faces.py) against facenet-pytorch, and its own contracts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detector import faces as F
from detector.faces import DetectedFace, FaceDetector, create_face_detector, nms

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(max_side=1024)


@pytest.fixture(scope="module")
def mtcnn():
    """facenet-pytorch's MTCNN (torch), the reference implementation."""
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(2)
    return MTCNN(keep_all=True, device="cpu")


def reference(mtcnn, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """facenet-pytorch's boxes [N,4], probabilities [N], landmarks [N,5,2] (empty when none)."""
    from PIL import Image

    boxes, probs, points = mtcnn.detect(Image.fromarray(image), landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return boxes.astype(float), np.asarray(probs, dtype=float), points.astype(float)


def assert_matches_reference(faces: list[DetectedFace], ref, tol_px: float = 2.0) -> None:
    boxes, probs, points = ref
    assert len(faces) == len(boxes), (len(faces), boxes)
    assert len(faces) > 0
    unmatched = set(range(len(boxes)))
    for face in faces:
        d = np.abs(boxes - np.array(face.box)).max(axis=1)
        i = int(np.argmin(d))
        assert i in unmatched, f"two faces matched reference box {i}"
        unmatched.discard(i)
        assert d[i] <= tol_px, (face.box, boxes[i])
        assert np.abs(points[i] - np.array(face.landmarks)).max() <= tol_px
        assert abs(face.score - probs[i]) <= 1e-3


# ---------------------------------------------------------------------------- vs facenet-pytorch
def test_astronaut_matches_facenet(detector, mtcnn, astronaut):
    faces = detector.detect(astronaut)
    assert_matches_reference(faces, reference(mtcnn, astronaut))
    (face,) = faces
    x0, y0, x1, y1 = face.box
    assert 170 < x0 < 200 and 50 < y0 < 80 and 250 < x1 < 290 and 150 < y1 < 190
    assert face.score > 0.99


def _web_images(root: Path) -> list[Path]:
    files = sorted((root / "real-faces" / "web").glob("*.jpg"))
    if len(files) < 3:
        pytest.skip("real-faces/web has fewer than 3 images")
    return [files[0], files[len(files) // 2], files[-1]]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_web_photos_match_facenet(detector, mtcnn, shared_data, which):
    from PIL import Image

    path = _web_images(shared_data)[which]
    image = np.asarray(Image.open(path).convert("RGB"))
    assert_matches_reference(detector.detect(image), reference(mtcnn, image))


def test_street_frame_matches_facenet(detector, mtcnn, shared_data):
    """Several small faces in a street scene, at 960x540 so neither side downscales."""
    import av

    path = shared_data / "videos" / "real" / "facenet_street.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    image = cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA)
    faces = detector.detect(image)
    assert len(faces) >= 3
    assert_matches_reference(faces, reference(mtcnn, image))


# ---------------------------------------------------------------------------- exact resampling
@pytest.mark.parametrize(
    ("h", "w", "oh", "ow"), [(40, 57, 41, 58), (40, 57, 29, 41), (97, 60, 13, 12), (12, 12, 12, 12)]
)
def test_pyramid_level_is_torch_area_interpolation(h, w, oh, ow):
    import torch
    from torch.nn.functional import interpolate

    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = np.empty((3, oh, ow), dtype=np.float32)
    F._pyramid_level(image, F._integral(image), out)
    ref = interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(oh, ow), mode="area")
    np.testing.assert_allclose(out, ref[0].numpy(), rtol=1e-6, atol=1e-4)


def test_crops_are_facenet_crops():
    """Boxes clipped to the image (facenet-pytorch's ``pad``) and area-resized (``imresample``)."""
    import torch
    from facenet_pytorch.models.utils.detect_face import imresample, pad

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    boxes = [[10.7, 5.2, 40.9, 30.1, 1], [-8.5, -3, 20, 25, 1], [60, 40, 90, 70, 1], [80, 5, 95, 9, 1]]
    boxes = np.array(boxes, np.float32)
    for size in (24, 48):
        crops, ok = F._crops(F._integral(image), boxes, size)
        assert ok.tolist() == [True, True, True, False]  # the last box lies right of the image
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        y, ey, x, ex = pad(torch.from_numpy(boxes[:3].copy()), 70, 50)
        for k, crop in enumerate(crops):
            ref = imresample(tensor[:, :, y[k] - 1 : ey[k], x[k] - 1 : ex[k]], (size, size))[0].numpy()
            np.testing.assert_allclose(crop, ref, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------------------------- NMS
box_arrays = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        arrays(np.float64, (n, 2), elements=st.floats(0, 100)),
        arrays(np.float64, (n, 2), elements=st.floats(1, 40)),
        arrays(np.float64, n, elements=st.floats(0, 1), unique=True),
    )
)


def _boxes(xy, wh) -> np.ndarray:
    return np.concatenate([xy, xy + wh], axis=1)


@settings(max_examples=150, deadline=None)
@given(data=box_arrays, threshold=st.sampled_from([0.3, 0.5, 0.7]), method=st.sampled_from(["iou", "min"]))
def test_nms_properties(data, threshold, method):
    xy, wh, scores = data
    boxes = _boxes(xy, wh)
    keep = nms(boxes, scores, threshold, method)
    assert len(set(keep.tolist())) == len(keep) and set(keep.tolist()) <= set(range(len(boxes)))
    assert np.all(np.diff(scores[keep]) <= 0)  # highest score first
    assert keep[0] == np.argmax(scores)  # the best box always survives
    if len(keep) > 1:  # no two kept boxes overlap above the threshold
        o = F._overlap(boxes[keep], boxes[keep], method)
        assert not np.any(np.triu(o > threshold, k=1))
    again = nms(boxes[keep], scores[keep], threshold, method)
    assert again.tolist() == list(range(len(keep)))  # idempotent


@settings(max_examples=100, deadline=None)
@given(data=box_arrays, threshold=st.sampled_from([0.5, 0.7]))
def test_nms_matches_torchvision_and_facenet(data, threshold):
    import torch
    from facenet_pytorch.models.utils.detect_face import nms_numpy
    from torchvision.ops import nms as tv_nms

    xy, wh, scores = data
    boxes = _boxes(xy, wh)
    want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    assert nms(boxes, scores, threshold).tolist() == want.tolist()
    want = nms_numpy(boxes, scores, threshold, "Min")
    assert nms(boxes, scores, threshold, "min").tolist() == list(want)


def test_nms_blocks_and_groups(monkeypatch):
    rng = np.random.default_rng(3)
    boxes = _boxes(rng.uniform(0, 200, (300, 2)), rng.uniform(5, 60, (300, 2)))
    scores = rng.uniform(0, 1, 300)
    whole = nms(boxes, scores, 0.5)
    monkeypatch.setattr(F, "_NMS_BLOCK", 7)  # many blocks: same result
    assert nms(boxes, scores, 0.5).tolist() == whole.tolist()
    # the same boxes in two groups do not suppress each other
    groups = np.repeat([0, 1], 300)
    both = nms(np.concatenate([boxes, boxes]), np.concatenate([scores, scores]), 0.5, groups=groups)
    assert sorted(both.tolist()) == sorted(whole.tolist() + (whole + 300).tolist())
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="method"):
        nms(boxes, scores, 0.5, "max")
    with pytest.raises(ValueError, match="scores"):
        nms(boxes, scores[:3], 0.5)


# ---------------------------------------------------------------------------- the detector's contract
def test_detected_face_is_frozen_plain_python(detector, astronaut):
    (face,) = detector.detect(astronaut)
    assert isinstance(face.box, tuple) and len(face.box) == 4
    assert all(type(v) is float for v in face.box)
    assert len(face.landmarks) == 5
    assert all(len(p) == 2 and all(type(v) is float for v in p) for p in face.landmarks)
    assert type(face.score) is float and 0.0 < face.score <= 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.score = 0.5  # type: ignore[misc]
    # eyes above the nose above the mouth, all inside the box
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert lx < rx and max(ly, ry) < ny < min(mly, mry)
    x0, y0, x1, y1 = face.box
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in face.landmarks)


def _assert_found_turned_back(detector: FaceDetector, picture: np.ndarray, angle: int) -> None:
    """``picture`` turned ``angle`` degrees clockwise: its one face is found with that
    orientation, and its box, mapped back through the turn, is exactly the upright picture's;
    the crop turned back is the upright crop."""
    from detector.crops import crop_boxes

    (upright,) = detector.detect(picture)
    assert upright.orientation == 0
    turned = np.ascontiguousarray(np.rot90(picture, -angle // 90))  # clockwise
    (face,) = detector.detect(turned)
    assert face.orientation == angle and face.score == pytest.approx(upright.score)
    h, w = picture.shape[:2]
    x0, y0, x1, y1 = upright.box
    corners = {(x, y) for x in (x0, x1) for y in (y0, y1)}
    for _ in range(angle // 90):  # where the upright box's corners go under each clockwise turn
        corners = {(h - y, x) for x, y in corners}
        h, w = w, h
    xs, ys = sorted({x for x, _ in corners}), sorted({y for _, y in corners})
    assert face.box == pytest.approx((xs[0], ys[0], xs[-1], ys[-1]), abs=1e-6)
    crop_turned = crop_boxes(turned, [face.box], 1.3, 160, orientations=[face.orientation])
    assert np.array_equal(crop_turned, crop_boxes(picture, [upright.box], 1.3, 160))


def test_turned_face_is_found_turned_back(detector, astronaut):
    _assert_found_turned_back(detector, astronaut, 90)  # upside down or at 270, MTCNN misses it


@pytest.mark.parametrize(("index", "angle"), [(66, 180), (0, 270)])
def test_turned_video_faces_are_found_turned_back(detector, shared_data, index, angle):
    from detector.video import Sampling, iter_sampled_frames

    clip = shared_data / "videos/real/liveportrait_d0.mp4"
    (frame,) = [f for f in iter_sampled_frames(clip, Sampling("all")) if f.index == index]
    _assert_found_turned_back(detector, frame.image_rgb, angle)


def test_known_turn_detects_on_the_picture_turned_back(detector, astronaut):
    turned = np.ascontiguousarray(np.rot90(astronaut, -1))  # 90 degrees clockwise
    (found,) = detector.detect(turned)  # by the orientation pass
    (given,) = detector.detect_batch([turned], orient=False, turn=90)[0]
    assert given.orientation == found.orientation == 90
    assert given.box == pytest.approx(found.box)
    assert np.allclose(given.landmarks, found.landmarks)


def test_orientation_pass_can_be_switched_off(astronaut):
    plain = FaceDetector(orient=False, threads=1)
    turned = np.ascontiguousarray(np.rot90(astronaut, 2))
    assert all(f.orientation == 0 for f in plain.detect(turned))


def test_downscale_maps_back_to_original_pixels(astronaut):
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    (small,) = FaceDetector(max_side=2048).detect(astronaut)
    (full,) = FaceDetector(max_side=2048).detect(big)  # no downscale
    (scaled,) = FaceDetector(max_side=512).detect(big)  # detected at 512, mapped back
    expect = np.array(small.box) * 2
    assert np.abs(np.array(full.box) - expect).max() < 8
    assert np.abs(np.array(scaled.box) - expect).max() < 8
    assert np.abs(np.array(scaled.landmarks) - np.array(small.landmarks) * 2).max() < 8
    # large face (about 220 px): the downscaled run agrees with the full-size run
    assert np.abs(np.array(scaled.box) - np.array(full.box)).max() < 8


def test_no_downscale_when_the_pyramid_starts_below_max_side(astronaut):
    """With min_face_size 40 the pyramid's first level is 12/40 of the image: for a 1024 px
    image and max_side 512 (ratio 0.5 >= 0.3) the detector skips the downscale and detects on
    the original pixels, exactly as with no max_side at all; with min_face_size 20 (0.6 > 0.5)
    it still downscales."""
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    capped = FaceDetector(min_face_size=40, max_side=512)
    assert capped._prepare(big).image.shape == big.shape
    assert capped.detect(big) == FaceDetector(min_face_size=40, max_side=4096).detect(big)
    assert FaceDetector(min_face_size=20, max_side=512)._prepare(big).image.shape == (512, 512, 3)


def test_downscale_keeps_min_face_size_in_original_pixels(astronaut):
    """min_face_size is in original pixels: after a 4x downscale a 25 px limit cannot be met,
    so the pyramid starts at 12 detection pixels (48 original) and small faces are not found."""
    small = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)  # face about 28 px
    canvas = np.full((1024, 1024, 3), 128, np.uint8)
    canvas[448:576, 448:576] = small
    assert len(FaceDetector(min_face_size=20, max_side=2048).detect(canvas)) == 1
    assert FaceDetector(min_face_size=20, max_side=256).detect(canvas) == []


def test_min_face_size_filters(astronaut):
    """The astronaut's face box is about 87 x 110 px."""
    for m in (20, 60, 100):
        faces = FaceDetector(min_face_size=m).detect(astronaut)
        assert len(faces) == 1
        x0, y0, x1, y1 = faces[0].box
        assert max(x1 - x0, y1 - y0) >= m
    assert FaceDetector(min_face_size=200).detect(astronaut) == []


def test_pyramid_anchor_keeps_the_full_pyramids_boxes(astronaut):
    """A larger min_face_size on a pyramid anchored at 40 px skips the levels that only find
    smaller faces; the faces left keep the full pyramid's boxes where the same window wins (here
    the two large faces), and smaller ones are not reported."""
    canvas = np.full((720, 1800, 3), 120, np.uint8)
    x = 0
    for side in (230, 330, 512, 700):  # faces of about 51, 71, 114 and 153 px
        canvas[:side, x : x + side] = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
        x += side + 2
    full = sorted(FaceDetector(min_face_size=40).detect(canvas), key=lambda d: d.box[0])
    sides = [max(d.box[2] - d.box[0], d.box[3] - d.box[1]) for d in full]
    assert len(full) == 4 and 45 < sides[0] < 60 < sides[1] < 100 < sides[2]
    anchored = FaceDetector(min_face_size=60, pyramid_face_size=40).detect(canvas)
    anchored.sort(key=lambda d: d.box[0])
    assert len(anchored) == 3 and all(
        max(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= 60 for d in anchored
    )
    assert anchored[1:] == full[2:]  # the same boxes, landmarks and scores


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(12, 3000), w=st.integers(12, 3000), anchor=st.integers(12, 80),
    extra=st.floats(0, 10), down=st.sampled_from([1.0, 2.0]),
)
def test_pyramid_anchor_skips_only_levels_for_smaller_faces(h, w, anchor, extra, down):
    """The anchored pyramid is the full one without its first levels: all the skipped ones and
    the first kept one are built for faces of at most min_face_size, the second kept one for larger
    faces (so no level a face of min_face_size or more needs is skipped)."""
    from detector.faces import PNET_CELL, _Frame

    min_face = anchor * (1 + extra)
    frame = _Frame(np.zeros((h, w, 3), np.uint8), down, down)
    full = FaceDetector(min_face_size=anchor)._scales(frame)
    kept = FaceDetector(min_face_size=min_face, pyramid_face_size=anchor)._scales(frame)
    assert kept == full[len(full) - len(kept) :]
    built_for = [PNET_CELL / s * down for s in full]
    skipped = len(full) - len(kept)
    if not full or built_for[0] > min_face:  # (a downscaled frame's pyramid starts at 12 px)
        assert kept == full
    else:
        assert all(size <= min_face * (1 + 1e-9) for size in built_for[: skipped + 1])
        assert skipped + 1 == len(full) or built_for[skipped + 1] > min_face


def test_no_face_images(detector):
    from skimage import data

    coins = np.ascontiguousarray(np.repeat(data.coins()[:, :, None], 3, axis=2))
    assert detector.detect(coins) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.zeros((200, 200, 3), np.uint8)) == []
    assert detector.detect(np.zeros((5, 9, 3), np.uint8)) == []  # smaller than one P-Net window


def test_detect_batch_equals_detect(detector, astronaut):
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    other = np.ascontiguousarray(astronaut[40:400, 100:460])  # another size
    images = [astronaut, other, flipped, np.zeros((64, 64, 3), np.uint8), astronaut]
    batch = detector.detect_batch(images)
    assert batch == [detector.detect(im) for im in images]
    assert [len(faces) for faces in batch] == [1, 1, 1, 0, 1]
    (face,), (mirror,) = batch[0], batch[2]
    assert abs(mirror.box[0] - (512 - face.box[2])) < 8 and abs(mirror.box[1] - face.box[1]) < 8
    assert detector.detect_batch([]) == []


def test_frames_detected_in_parallel_equal_one_thread(astronaut):
    """With threads > 1, detect_batch runs chunks of frames on worker threads (single-threaded
    sessions): the same detections as one thread doing every frame."""
    images = [np.ascontiguousarray(np.roll(astronaut, 16 * k, axis=1)) for k in range(5)]
    images.append(np.zeros((64, 64, 3), np.uint8))
    parallel = FaceDetector(threads=3)
    try:
        got = parallel.detect_batch(images)
        again = parallel.detect_batch(images[:2])  # the worker pool is reused
    finally:
        parallel.close()
    serial = FaceDetector(threads=1)
    want = [serial.detect(im) for im in images]
    assert got == want and again == want[:2]
    assert [len(f) for f in got] == [1, 1, 1, 1, 1, 0]
    assert parallel.detect_batch(images[:2]) == want[:2]  # usable after close: a new pool
    parallel.close()


def test_one_image_shared_out_over_threads_equals_one_thread(astronaut):
    """One image with threads > 1: pyramid levels and R-/O-Net crops are split over worker
    threads and merged in order, giving exactly the single-threaded detections."""
    canvas = np.zeros((720, 1280, 3), np.uint8)
    canvas[:512, :512] = astronaut
    canvas[100:356, 600:856] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    canvas[400:656, 900:1156] = cv2.resize(astronaut[:, ::-1], (256, 256), interpolation=cv2.INTER_AREA)
    shared = FaceDetector(threads=3)
    try:
        got = shared.detect(canvas)
    finally:
        shared.close()
    assert got == FaceDetector(threads=1).detect(canvas)
    assert len(got) == 3


@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_pyramid_levels_split_into_contiguous_balanced_groups(parts):
    from detector.faces import _split_levels

    scales = [0.6 * 0.709**k for k in range(9)]
    groups = _split_levels(scales, 1920 * 1080, parts)
    assert [s for g in groups for s in g] == scales and all(groups) and len(groups) <= parts
    if parts == 2:  # the first level is about half of the pyramid's pixels
        assert groups[0] == scales[:1]


def test_sorted_by_score(detector, astronaut):
    canvas = np.zeros((512, 1280, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[:, 512:1024] = astronaut[:, ::-1]
    canvas[:256, 1024:] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    faces = FaceDetector(max_side=2048).detect(canvas)
    assert len(faces) == 3
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((10, 10), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_input_raises_value_error(detector, image, match):
    with pytest.raises(ValueError, match=match):
        detector.detect(image)
    with pytest.raises(ValueError, match=f"image 1: .*{match}"):
        detector.detect_batch([np.zeros((20, 20, 3), np.uint8), image])


@pytest.mark.parametrize(
    "kwargs",
    [{"min_face_size": 0}, {"thresholds": (0.6, 0.7)}, {"thresholds": (0.6, 0.7, 1.5)}, {"factor": 1.0},
     {"max_side": 4}, {"threads": 0}, {"min_face_size": 40, "pyramid_face_size": 41},
     {"pyramid_face_size": 0}],
)
def test_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        FaceDetector(**kwargs)


def test_create_face_detector_and_models_are_packaged():
    det = create_face_detector(min_face_size=40, threads=1)
    assert isinstance(det, FaceDetector) and det.min_face_size == 40 and det.threads == 1
    for name in (F.PNET_FILE, F.RNET_FILE, F.ONET_FILE):
        assert (REPO / "detector" / "models" / name).is_file()


def test_detector_does_not_import_torch(astronaut):
    code = (
        "import sys, numpy as np; from detector.faces import FaceDetector; "
        "FaceDetector().detect(np.zeros((64, 64, 3), np.uint8)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
