"""Synthetic fakes from real faces: self-blended images and cross-identity blends.

Pure numpy/OpenCV (no torch), so dataloader workers can call it; every random choice comes
from the ``numpy.random.Generator`` passed in, so a seed reproduces a sample bit for bit.

* :func:`self_blend` follows the recipe of Self-Blended Images (Shiohara & Yamasaki, CVPR
  2022), re-implemented here: a *source* copy of the face is perturbed (colour; blur, sharpen
  or down-up resize; a slight translation/scale), a mask is drawn from the convex hull of a
  random landmark subset, deformed (elastic or erode/dilate), blurred and scaled by a random
  blend ratio, and ``blended = source * mask + target * (1 - mask)``.
* :func:`cross_blend` (Face X-ray style, Li et al. CVPR 2020): another person's face is
  warped onto the target by a similarity transform fitted to the landmarks, colour-matched
  inside the mask, and blended with the same mask machinery.

The target is never altered outside the mask: where ``mask == 0`` the output equals the input
exactly. Landmarks are ``(68, 2)`` dlib/iBUG points in the image's pixels; any other ``(N, 2)``
array (e.g. :func:`face_points_from_5`, the coarse fallback when no 68-point landmarks exist)
is used as a plain hull, which only gives whole-face masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# iBUG-68 index ranges.
JAW = tuple(range(0, 17))
BROWS = tuple(range(17, 27))
NOSE = tuple(range(27, 36))
EYES = tuple(range(36, 48))
MOUTH = tuple(range(48, 68))

#: Landmark subsets whose convex hull makes a blend region, with their sampling weights.
REGIONS: dict[str, tuple[tuple[int, ...], float]] = {
    "whole": (JAW + BROWS, 0.4),  # the hull of all 68 points: jaw line + eyebrows
    "inner": (BROWS + NOSE + EYES + MOUTH, 0.2),  # brows, eyes, nose and mouth
    "lower": (JAW[1:16] + (28,), 0.2),  # cheeks, nose, mouth and chin
    "no_brows": (JAW + EYES, 0.2),  # jaw line and eyes, eyebrows left out
}

_MIN_MASK = 1.0 / 512.0  # mask values below this are set to 0 (exactly untouched pixels)


def _check_image(img: np.ndarray, name: str = "image") -> None:
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f"{name} must be an HxWx3 uint8 array")


def _check_points(points: np.ndarray, name: str = "landmarks") -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise ValueError(f"{name} must be an (N>=3, 2) array of finite pixel coordinates")
    return pts


def face_points_from_5(lm5: np.ndarray | Sequence[Sequence[float]], n: int = 24) -> np.ndarray:
    """Coarse face outline (``n`` points on an ellipse) from MTCNN's 5 points.

    Fallback when no 68-point landmarks exist: the ellipse is centred between the eyes and the
    mouth, its axes proportional to the eye distance and the eye-mouth distance and tilted with
    the eye line. It roughly covers brows to chin and cheek to cheek; much coarser than a real
    hull (no regions, no jaw shape), so self-blends made from it are less varied.
    """
    p = _check_points(np.asarray(lm5, dtype=np.float64).reshape(-1, 2), "lm5")
    if len(p) != 5:
        raise ValueError("lm5 must hold 5 points: l-eye, r-eye, nose, l-mouth, r-mouth")
    eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    eye_vec = p[1] - p[0]
    d_eye = float(np.hypot(*eye_vec)) or 1.0
    down = mouth - eyes
    d_em = float(np.hypot(*down)) or d_eye
    centre = eyes + 0.45 * down
    ux = eye_vec / d_eye
    uy = np.array([-ux[1], ux[0]])
    if np.dot(uy, down) < 0:
        uy = -uy
    a, b = 1.05 * d_eye, 1.45 * d_em
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return centre + np.outer(a * np.cos(t), ux) + np.outer(b * np.sin(t), uy)


def hull_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """float32 ``HxW`` mask: 1 inside the convex hull of ``points``, 0 outside."""
    mask = np.zeros(shape[:2], dtype=np.float32)
    hull = cv2.convexHull(np.round(_check_points(points)).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0)
    return mask


def _region_points(landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(landmarks) != 68:
        return landmarks
    names = list(REGIONS)
    w = np.array([REGIONS[k][1] for k in names])
    name = names[int(rng.choice(len(names), p=w / w.sum()))]
    return landmarks[list(REGIONS[name][0])]


def _odd(x: float) -> int:
    k = max(1, int(round(x)))
    return k if k % 2 else k + 1


def _face_scale(points: np.ndarray) -> float:
    span = points.max(axis=0) - points.min(axis=0)
    return float(max(span.max(), 8.0))


def _elastic(mask: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    h, w = mask.shape
    sigma = max(2.0, 0.08 * scale)
    alpha = 0.06 * scale
    field = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
    dx = cv2.GaussianBlur(field[0], (0, 0), sigma)
    dy = cv2.GaussianBlur(field[1], (0, 0), sigma)
    norm = float(max(np.abs(dx).max(), np.abs(dy).max(), 1e-6))
    dx, dy = dx * (alpha / norm), dy * (alpha / norm)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def random_mask(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deformed, blurred hull mask in [0, 1] (before the blend ratio).

    A random landmark region's hull, then either an elastic deformation or a random
    erosion/dilation, then a Gaussian blur (sometimes thresholded and blurred again so the
    soft edge falls inside the hull). Sizes scale with the face.
    """
    pts = _check_points(landmarks)
    region = _region_points(pts, rng)
    scale = _face_scale(pts)
    mask = hull_mask(shape, region)
    if rng.random() < 0.5:
        mask = _elastic(mask, scale, rng)
    else:
        k = _odd(rng.uniform(0.02, 0.08) * scale)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.erode(mask, kernel) if rng.random() < 0.5 else cv2.dilate(mask, kernel)
        if not mask.any():  # eroded away on a tiny face: keep the plain hull
            mask = hull_mask(shape, region)
    k1 = _odd(rng.uniform(0.05, 0.2) * scale)
    mask = cv2.GaussianBlur(mask, (k1, k1), 0)
    if rng.random() < 0.5:
        inner = (mask >= 0.999).astype(np.float32)
        if inner.any():
            k2 = _odd(rng.uniform(0.05, 0.2) * scale)
            mask = cv2.GaussianBlur(inner, (k2, k2), 0)
    mask[mask < _MIN_MASK] = 0.0
    return np.clip(mask, 0.0, 1.0)


def _blend_ratio(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else float(rng.uniform(0.25, 1.0))


def perturb_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random RGB shift (p=0.3), hue/saturation/value jitter and brightness/contrast."""
    x = img.astype(np.float32)
    if rng.random() < 0.3:
        x += rng.uniform(-20, 20, size=3).astype(np.float32)
    x = np.clip(x, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-5, 5), 180)  # OpenCV hue is 0..179
    hsv[..., 1] *= rng.uniform(0.85, 1.15)
    hsv[..., 2] *= rng.uniform(0.85, 1.15)
    x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    alpha, beta = 1.0 + rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1) * 255
    mean = x.mean()
    x = (x - mean) * alpha + mean + beta
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def perturb_frequency(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of: down-up resize (x2 or x4), sharpen, Gaussian blur."""
    h, w = img.shape[:2]
    choice = int(rng.integers(3))
    if choice == 0:
        r = int(rng.choice([2, 4]))
        small = cv2.resize(img, (max(1, w // r), max(1, h // r)), interpolation=cv2.INTER_NEAREST)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if choice == 1:
        amount = rng.uniform(0.2, 0.6)
        blur = cv2.GaussianBlur(img, (0, 0), 1.0).astype(np.float32)
        out = img.astype(np.float32) * (1 + amount) - blur * amount
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))


def _misalign(scale: float, rng: np.random.Generator, centre: np.ndarray) -> np.ndarray:
    """2x3 affine: scale in [0.95, 1/0.95] about the face centre, shift up to 3 % x / 1.5 % y."""
    s = rng.uniform(0.95, 1 / 0.95)
    tx = rng.uniform(-0.03, 0.03) * scale
    ty = rng.uniform(-0.015, 0.015) * scale
    cx, cy = float(centre[0]), float(centre[1])
    return np.array([[s, 0, (1 - s) * cx + tx], [0, s, (1 - s) * cy + ty]], dtype=np.float64)


def _compose(src: np.ndarray, tgt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    out = src.astype(np.float32) * m + tgt.astype(np.float32) * (1.0 - m)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    out[mask == 0] = tgt[mask == 0]  # exact, whatever the float rounding
    return out


def self_blend(
    img: np.ndarray, landmarks68: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Self-blended image of ``img`` (HxWx3 uint8 RGB) and its blend mask (HxW float32 in [0, 1]).

    ``landmarks68`` are the face's landmarks in ``img`` pixels (68 iBUG points, or any
    ``(N, 2)`` hull points such as :func:`face_points_from_5`).
    """
    _check_image(img)
    pts = _check_points(landmarks68)
    h, w = img.shape[:2]
    scale = _face_scale(pts)
    src = perturb_frequency(perturb_colour(img, rng), rng)
    mask = random_mask((h, w), pts, rng)
    affine = _misalign(scale, rng, pts.mean(axis=0))
    src = cv2.warpAffine(src, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(mask, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = mask * _blend_ratio(rng)
    mask[mask < _MIN_MASK] = 0.0
    return _compose(src, img, mask), mask.astype(np.float32)


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity (rotation, uniform scale, shift) mapping src to dst (Umeyama)."""
    s = _check_points(src_pts, "src_pts")
    d = _check_points(dst_pts, "dst_pts")
    if s.shape != d.shape:
        raise ValueError("point sets must have the same shape")
    ms, md = s.mean(axis=0), d.mean(axis=0)
    sc, dc = s - ms, d - md
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    var = (sc**2).sum() / len(s)
    scale = float(np.trace(np.diag(sig) @ sign) / var) if var > 0 else 1.0
    t = md - scale * rot @ ms
    return np.hstack([scale * rot, t[:, None]])


def match_colour(src: np.ndarray, tgt: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Shift ``src``'s per-channel LAB mean/std to ``tgt``'s inside ``region`` (bool HxW)."""
    if region.sum() < 16:
        return src
    s = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(tgt, cv2.COLOR_RGB2LAB).astype(np.float32)
    sm, ss = s[region].mean(axis=0), s[region].std(axis=0) + 1e-3
    tm, ts = t[region].mean(axis=0), t[region].std(axis=0) + 1e-3
    out = (s - sm) * (ts / ss) + tm
    return cv2.cvtColor(np.clip(np.round(out), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def cross_blend(
    target_img: np.ndarray,
    target_lm68: np.ndarray,
    source_img: np.ndarray,
    source_lm68: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``source_img``'s face onto ``target_img`` (Face X-ray style); returns (blended, mask).

    The source is warped by the similarity transform that best maps its landmarks onto the
    target's, colour-matched to the target inside the mask, sometimes given a frequency
    perturbation, and blended through :func:`random_mask` (drawn on the target's landmarks,
    limited to where the warped source has pixels) times a random blend ratio.
    """
    _check_image(target_img, "target_img")
    _check_image(source_img, "source_img")
    tp, sp = _check_points(target_lm68, "target_lm68"), _check_points(source_lm68, "source_lm68")
    if tp.shape != sp.shape:
        raise ValueError("target and source landmarks must have the same number of points")
    h, w = target_img.shape[:2]
    affine = similarity_transform(sp, tp)
    warped = cv2.warpAffine(source_img, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    valid = cv2.warpAffine(
        np.ones(source_img.shape[:2], np.float32), affine, (w, h), flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    valid = cv2.erode(valid, np.ones((3, 3), np.uint8))
    mask = random_mask((h, w), tp, rng) * valid
    warped = match_colour(warped, target_img, mask > 0.5)
    if rng.random() < 0.5:
        warped = perturb_frequency(warped, rng)
    mask = mask * _blend_ratio(rng)
    mask[mask < _MIN_MASK] = 0.0
    return _compose(warped, target_img, mask), mask.astype(np.float32)
