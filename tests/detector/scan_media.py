"""Test media for the analyzer and `facetrust scan`: real photos and PyAV-written face videos."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

#: The astronaut's head in skimage's 512x512 photo (x0, y0, x1, y1), generous margin.
HEAD = (120, 10, 320, 230)


def head_patch(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut's head and shoulders cut out of the photo (RGB uint8)."""
    x0, y0, x1, y1 = HEAD
    return np.ascontiguousarray(astronaut[y0:y1, x0:x1])


def jpeg_bytes(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def no_face_image(size: int = 256) -> np.ndarray:
    """A smooth colour gradient: decodes fine, contains no face."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x % 256, y % 256, (x + y) // 2 % 256], axis=2).astype(np.uint8)


def face_video(
    path: Path,
    astronaut: np.ndarray,
    *,
    people: int = 1,
    frames: int = 24,
    size: tuple[int, int] = (640, 360),
    fps: int = 12,
    step: int = 2,
) -> Path:
    """Write an H.264 MP4 with ``people`` copies of the astronaut's head drifting ``step`` px/frame.

    The second copy is mirrored and placed on the right half. Returns ``path``.
    """
    w, h = size
    patch = head_patch(astronaut)
    ph, pw = patch.shape[:2]
    container = av.open(str(path), "w")
    try:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            canvas = np.full((h, w, 3), 90, np.uint8)
            for k in range(people):
                img = patch if k == 0 else patch[:, ::-1]
                x = 20 + step * t + k * (w // 2)
                y = (h - ph) // 2
                canvas[y : y + ph, x : x + pw] = img
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path
