"""Self-blended images and cross-identity blends on a real photo with real landmarks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.crops import crop_face, to_crop_coords
from training.blend import (
    cross_blend,
    face_points_from_5,
    hull_mask,
    random_mask,
    self_blend,
    similarity_transform,
)
from training.landmarks import agreement, create_landmarker, dlib_box, five_from_68

SIZE, MARGIN = 256, 2.0


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> dict[str, np.ndarray]:
    """The astronaut's stored-style crop (margin 2, 256 px) with its 5 and 68 landmarks."""
    from detector.faces import create_face_detector

    det = create_face_detector().detect(astronaut)[0]
    crop = crop_face(astronaut, det.box, MARGIN, SIZE)
    lm5 = to_crop_coords(det.landmarks, det.box, MARGIN, SIZE)
    lm68 = create_landmarker()(crop, lm5)
    return {"img": crop, "lm5": lm5, "lm68": lm68.astype(np.float64)}


def _dilated_hull(shape: tuple[int, int], pts: np.ndarray, frac: float) -> np.ndarray:
    span = float((pts.max(0) - pts.min(0)).max())
    k = int(2 * round(frac * span) + 1)
    return cv2.dilate(hull_mask(shape, pts), np.ones((k, k), np.uint8)) > 0


def test_landmarks_fit_the_face(face: dict[str, np.ndarray]) -> None:
    lm68, lm5 = face["lm68"], face["lm5"]
    assert lm68.shape == (68, 2)
    assert agreement(lm68, lm5) < 0.3
    # the 68-point eyes lie left/right of each other, the mouth below the nose, inside the crop
    five = five_from_68(lm68)
    assert five[0, 0] < five[1, 0] and five[3, 1] > five[2, 1] > five[0, 1]
    assert (lm68 > 0).all() and (lm68 < SIZE).all()
    x0, y0, x1, y1 = dlib_box(lm5)
    assert x1 - x0 == pytest.approx(y1 - y0, abs=1) and x0 < lm5[:, 0].min() and x1 > lm5[:, 0].max()


@pytest.mark.parametrize("seed", range(12))
def test_self_blend_mask_and_pixels(face: dict[str, np.ndarray], seed: int) -> None:
    img, lm68 = face["img"], face["lm68"]
    out, mask = self_blend(img, lm68, np.random.default_rng(seed))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert mask.shape == img.shape[:2] and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and mask.max() >= 0.25 - 1e-6
    # the mask stays within the face hull grown by a fifth of the face size
    assert not (mask > 0)[~_dilated_hull(mask.shape, lm68, 0.2)].any()
    # outside the mask the target is untouched, exactly
    assert np.array_equal(out[mask == 0], img[mask == 0])
    # inside it, most pixels changed
    inside = mask >= 0.5 * mask.max()
    assert inside.sum() > 500
    changed = (out != img).any(axis=2)
    assert changed[inside].mean() > 0.5


def test_self_blend_is_reproducible(face: dict[str, np.ndarray]) -> None:
    img, lm68 = face["img"], face["lm68"]
    before = img.copy()
    a = self_blend(img, lm68, np.random.default_rng(7))
    b = self_blend(img, lm68, np.random.default_rng(7))
    c = self_blend(img, lm68, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(img, before)  # the input is not modified


def test_masks_cover_several_regions(face: dict[str, np.ndarray]) -> None:
    shape = face["img"].shape[:2]
    areas = {int((random_mask(shape, face["lm68"], np.random.default_rng(s)) > 0.5).sum()) for s in range(30)}
    assert len(areas) > 10  # different subsets and deformations, not one fixed hull
    full = hull_mask(shape, face["lm68"]).sum()
    assert min(areas) < 0.8 * full < max(areas)


def test_five_point_fallback(face: dict[str, np.ndarray]) -> None:
    pts = face_points_from_5(face["lm5"])
    hull = hull_mask(face["img"].shape[:2], pts) > 0
    # the coarse outline holds the eyes, nose and mouth
    for x, y in face["lm5"]:
        assert hull[int(y), int(x)]
    out, mask = self_blend(face["img"], pts, np.random.default_rng(3))
    assert np.array_equal(out[mask == 0], face["img"][mask == 0]) and (mask > 0.5).sum() > 500


def test_bad_inputs_are_refused(face: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        self_blend(face["img"].astype(np.float32), face["lm68"], rng)
    with pytest.raises(ValueError):
        self_blend(face["img"], np.full((68, 2), np.nan), rng)
    with pytest.raises(ValueError):
        self_blend(face["img"], face["lm68"][:2], rng)
    with pytest.raises(ValueError):
        face_points_from_5(face["lm5"][:4])
    with pytest.raises(ValueError):
        cross_blend(face["img"], face["lm68"], face["img"], face["lm68"][:20], rng)


def _other_face(face: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'different person': the face rotated, shrunk, moved and recoloured, with its landmarks."""
    affine = cv2.getRotationMatrix2D((128.0, 128.0), 12.0, 0.8)
    affine[:, 2] += (10.0, -6.0)
    img = cv2.warpAffine(face["img"], affine, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    img = np.ascontiguousarray(img[..., ::-1])  # swap red and blue: a clearly different skin
    lm = face["lm68"] @ affine[:, :2].T + affine[:, 2]
    return img, lm, affine


def test_similarity_transform_recovers_a_known_one(face: dict[str, np.ndarray]) -> None:
    _, lm, affine = _other_face(face)
    est = similarity_transform(face["lm68"], lm)
    assert np.allclose(est, affine, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_cross_blend(face: dict[str, np.ndarray], seed: int) -> None:
    tgt, tlm = face["img"], face["lm68"]
    src, slm, _ = _other_face(face)
    out, mask = cross_blend(tgt, tlm, src, slm, np.random.default_rng(seed))
    assert out.shape == tgt.shape and out.dtype == np.uint8 and mask.dtype == np.float32
    assert not (mask > 0)[~_dilated_hull(mask.shape, tlm, 0.2)].any()
    assert np.array_equal(out[mask == 0], tgt[mask == 0])
    inside = mask >= 0.5 * mask.max()
    assert inside.sum() > 500
    assert (out != tgt).any(axis=2)[inside].mean() > 0.5
    again = cross_blend(tgt, tlm, src, slm, np.random.default_rng(seed))
    assert np.array_equal(out, again[0]) and np.array_equal(mask, again[1])
    other = cross_blend(tgt, tlm, src, slm, np.random.default_rng(seed + 100))
    assert not np.array_equal(out, other[0])
