"""68-point face landmarks (dlib's shape predictor) for self-blended images.

Computed once, at preparation time, on the stored crop, starting from MTCNN's 5 landmarks
(mapped into crop pixels; see :func:`dlib_box`). The model file
``shape_predictor_68_face_landmarks.dat`` comes from the ``face_recognition_models`` package,
located without importing it (its ``__init__`` needs ``pkg_resources``). The predictor is
trained on iBUG 300-W, whose licence excludes commercial use: it is only used to *make
training data*, never at serving time.

If dlib or the model file is missing, :func:`create_landmarker` raises :class:`LandmarkError`
with the fix; ``facetrust prepare`` then stores ``landmarks68: null`` and the blends fall back
to the coarse 5-point outline (:func:`training.blend.face_points_from_5`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_FILE = "shape_predictor_68_face_landmarks.dat"

#: iBUG-68 points that correspond to MTCNN's 5 (eye centres are averages of the eye contours).
_LEFT_EYE, _RIGHT_EYE = tuple(range(36, 42)), tuple(range(42, 48))
_NOSE_TIP, _MOUTH_L, _MOUTH_R = 30, 48, 54

# Where dlib's predictor expects the 5 points (eye centres, nose tip, mouth corners) inside
# the square box it was trained with (its HOG detector's), in box units: the median over 307
# UTKFace and web faces of the shared data detected by dlib's HOG detector. The box given to
# the predictor is the square that best puts these points on MTCNN's 5 landmarks (least
# squares), which starts the predictor's cascade where it expects the face.
DLIB_TEMPLATE5 = np.array(
    [[0.2978, 0.3086], [0.7802, 0.3097], [0.5419, 0.5677], [0.3256, 0.7806], [0.7419, 0.7767]]
)


class LandmarkError(RuntimeError):
    """dlib or its 68-point model is not available."""


def model_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat``; raises :class:`LandmarkError`."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / "models" / MODEL_FILE
        if p.is_file():
            return p
    raise LandmarkError(
        f"{MODEL_FILE} not found: install the training extra (pip install 'facetrust[train]', "
        "which brings face_recognition_models)"
    )


def dlib_box(lm5: np.ndarray | Sequence[Sequence[float]]) -> tuple[int, int, int, int]:
    """Square ``(left, top, right, bottom)`` box that best maps :data:`DLIB_TEMPLATE5` onto ``lm5``."""
    p = np.asarray(lm5, dtype=np.float64).reshape(5, 2)
    t = DLIB_TEMPLATE5
    # unknowns (x0, y0, s): x = x0 + s * tx, y = y0 + s * ty
    a = np.zeros((10, 3))
    a[0::2, 0], a[0::2, 2] = 1.0, t[:, 0]
    a[1::2, 1], a[1::2, 2] = 1.0, t[:, 1]
    (x0, y0, side), *_ = np.linalg.lstsq(a, p.reshape(-1), rcond=None)
    side = max(float(side), 4.0)
    return int(round(x0)), int(round(y0)), int(round(x0 + side)), int(round(y0 + side))


class Landmarker:
    """dlib's 68-point shape predictor, fed with a face box."""

    def __init__(self, path: str | Path | None = None) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise LandmarkError("dlib is not installed: pip install dlib-bin (training extra)") from exc
        p = Path(path) if path else model_path()
        try:
            self._predictor = dlib.shape_predictor(str(p))
        except RuntimeError as exc:
            raise LandmarkError(f"cannot load {p}: {exc}") from exc
        self._dlib = dlib

    def __call__(self, image: np.ndarray, lm5: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """``(68, 2)`` float32 landmarks in ``image`` pixels of the face with MTCNN points ``lm5``.

        The predictor starts from the box :func:`dlib_box` fits to the 5 points.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("image must be HxWx3 uint8 RGB")
        rect = self._dlib.rectangle(*dlib_box(lm5))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def create_landmarker() -> Landmarker:
    """A :class:`Landmarker` with the packaged model; raises :class:`LandmarkError`."""
    return Landmarker()


def five_from_68(lm68: np.ndarray) -> np.ndarray:
    """MTCNN-style 5 points (eye centres, nose tip, mouth corners) from 68 landmarks."""
    p = np.asarray(lm68, dtype=np.float64)
    return np.stack(
        [p[list(_LEFT_EYE)].mean(0), p[list(_RIGHT_EYE)].mean(0), p[_NOSE_TIP], p[_MOUTH_L], p[_MOUTH_R]]
    )


def agreement(lm68: np.ndarray, lm5: np.ndarray) -> float:
    """Mean distance between the 68-point model's 5 points and MTCNN's, over the eye distance.

    MTCNN's own points are noisy (on 302 shared-data crops the median was 0.17, the 99th
    percentile 0.35 even for fits started from dlib's own detector), so prepare only drops gross
    failures: 68-point landmarks above :data:`MAX_DISAGREEMENT` are stored as null.
    """
    a, b = five_from_68(lm68), np.asarray(lm5, dtype=np.float64).reshape(5, 2)
    eye = float(np.hypot(*(b[1] - b[0]))) or 1.0
    return float(np.hypot(*(a - b).T).mean() / eye)


MAX_DISAGREEMENT = 0.5
