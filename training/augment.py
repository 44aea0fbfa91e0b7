"""Real-world degradations for training crops (numpy/OpenCV, seeded by the caller's rng).

Applied identically to real and fake crops, so the classifier cannot use compression,
resolution, blur, noise, colour or the exact face box as a shortcut: the box is jittered
before THE crop (:func:`jitter_box`); the picture may end near the face (:func:`cut_edges`), so a
black border or a cut face is no cue either; crops made from a real picture may lose extra detail
(:func:`lose_detail`); then horizontal flip -> colour jitter -> downscale-upscale -> Gaussian
blur -> noise -> JPEG.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from training.config import AugmentConfig


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Re-compress an RGB uint8 image as JPEG at ``quality`` (OpenCV, 4:2:0)."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                 saturation: float, hue: float) -> np.ndarray:
    """Random brightness, contrast, saturation (multiplicative) and hue shift."""
    x = img.astype(np.float32)
    x *= rng.uniform(1.0 - brightness, 1.0 + brightness)
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    c = rng.uniform(1.0 - contrast, 1.0 + contrast)
    x = (x - gray.mean()) * c + gray.mean()
    s = rng.uniform(1.0 - saturation, 1.0 + saturation)
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    x = gray + (x - gray) * s
    out = np.clip(x, 0, 255).astype(np.uint8)
    if hue > 0:
        shift = int(round(rng.uniform(-hue, hue) * 180.0))
        if shift:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


def jitter_box(box: Sequence[float], shift: float, scale: float,
               rng: np.random.Generator) -> tuple[float, float, float, float]:
    """``box`` (x0, y0, x1, y1) with its centre moved by up to ``shift`` x its longer side in
    x and y, and its size multiplied by ``exp(u)``, ``|u| <= scale`` (uniform draws)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = max(x1 - x0, y1 - y0)
    dx, dy = rng.uniform(-shift, shift, size=2) * side
    f = float(np.exp(rng.uniform(-scale, scale)))
    cx, cy = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy
    hw, hh = (x1 - x0) / 2 * f, (y1 - y0) / 2 * f
    return cx - hw, cy - hh, cx + hw, cy + hh


def cut_edges(img: np.ndarray, box: Sequence[float], cfg: AugmentConfig,
              rng: np.random.Generator) -> np.ndarray:
    """``img`` with each side of the picture, independently with probability
    ``cfg.edge_side_prob``, moved to ``edge_min..edge_max`` x the box's longer side beyond the
    same side of face ``box`` (negative: inside the box): what lies beyond is black, as THE crop
    pads a picture that ends there. At least one side moves."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    side = max(x1 - x0, y1 - y0)
    moved = rng.random(4) < cfg.edge_side_prob
    if not moved.any():
        moved[int(rng.integers(4))] = True
    at = rng.uniform(cfg.edge_min, cfg.edge_max, size=4) * side
    out = np.array(img, copy=True)
    if moved[0]:  # top
        out[: max(0, min(h, int(round(y0 - at[0]))))] = 0
    if moved[1]:  # bottom
        out[max(0, min(h, int(round(y1 + at[1])))):] = 0
    if moved[2]:  # left
        out[:, : max(0, min(w, int(round(x0 - at[2]))))] = 0
    if moved[3]:  # right
        out[:, max(0, min(w, int(round(x1 + at[3])))):] = 0
    return out


def down_up(img: np.ndarray, scale: float) -> np.ndarray:
    """Downscale by ``scale`` (area) and back up (bilinear): a low-resolution source."""
    h, w = img.shape[:2]
    sw, sh = max(4, int(round(w * scale))), max(4, int(round(h * scale)))
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def lose_detail(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Half the time a down-up resize by ``real_source_scale_min..max``, else a Gaussian blur
    of sigma ``0.8..real_source_blur_max`` (see ``AugmentConfig.real_source_degrade_prob``)."""
    if rng.random() < 0.5:
        return down_up(img, rng.uniform(cfg.real_source_scale_min, cfg.real_source_scale_max))
    sigma = rng.uniform(0.8, cfg.real_source_blur_max)
    return cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), sigma)


def augment(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One random real-world degradation chain of ``cfg`` on an RGB uint8 crop."""
    out = img
    if rng.random() < cfg.hflip_prob:
        out = out[:, ::-1]
    if rng.random() < cfg.color_prob:
        out = color_jitter(out, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if rng.random() < cfg.downscale_prob:
        out = down_up(out, rng.uniform(cfg.downscale_min, 1.0))
    if rng.random() < cfg.blur_prob:
        sigma = rng.uniform(0.1, max(0.1, cfg.blur_sigma_max))
        out = cv2.GaussianBlur(np.ascontiguousarray(out), (0, 0), sigma)
    if rng.random() < cfg.noise_prob:
        std = rng.uniform(0.0, cfg.noise_std_max)
        noisy = out.astype(np.float32) + rng.standard_normal(out.shape, dtype=np.float32) * std
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg_prob:
        quality = int(rng.integers(cfg.jpeg_quality_min, cfg.jpeg_quality_max + 1))
        out = jpeg(np.ascontiguousarray(out), quality)
    return np.ascontiguousarray(out)
