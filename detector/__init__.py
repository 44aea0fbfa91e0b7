"""FaceTrust inference core (no torch): find every face, score it, aggregate a verdict.

Typical use::

    from detector import create_analyzer
    analyzer = create_analyzer("model.onnx")
    result = analyzer.analyze_path("clip.mp4")
    print(result.status, result.fake_probability, result.label)

The names below are re-exported explicitly; each is imported on first use, so that
``import detector.card`` (used by training) does not load PyAV or the face detector.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "create_analyzer": "detector.analyze",
    "Analyzer": "detector.analyze",
    "Limits": "detector.analyze",
    "MultiCrop": "detector.analyze",
    "Sampling": "detector.video",
    "VideoLimits": "detector.video",
    "Classifier": "detector.classifier",
    "ScoreBatch": "detector.classifier",
    "default_model_path": "detector.classifier",
    "ModelCard": "detector.card",
    "ModelCardError": "detector.card",
    "Calibration": "detector.card",
    "read_card": "detector.card",
    "AnalysisResult": "detector.schema",
    "Face": "detector.schema",
    "Frame": "detector.schema",
    "Track": "detector.schema",
    "VideoInfo": "detector.schema",
    "ModelInfo": "detector.schema",
    "Status": "detector.schema",
    "MediaType": "detector.schema",
    "MediaError": "detector.media",
    "DetectedFace": "detector.faces",
    "FaceDetector": "detector.faces",
    "create_face_detector": "detector.faces",
    "crop_face": "detector.crops",
    "crop_views": "detector.crops",
    "link_tracks": "detector.tracks",
    "Report": "detector.report",
}

__all__ = [
    "AnalysisResult",
    "Analyzer",
    "Calibration",
    "Classifier",
    "DetectedFace",
    "Face",
    "FaceDetector",
    "Frame",
    "Limits",
    "MediaError",
    "MediaType",
    "ModelCard",
    "ModelCardError",
    "ModelInfo",
    "MultiCrop",
    "Report",
    "Sampling",
    "ScoreBatch",
    "Status",
    "Track",
    "VideoInfo",
    "VideoLimits",
    "create_analyzer",
    "create_face_detector",
    "crop_face",
    "crop_views",
    "default_model_path",
    "link_tracks",
    "read_card",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from detector.analyze import Analyzer, Limits, MultiCrop, create_analyzer
    from detector.card import Calibration, ModelCard, ModelCardError, read_card
    from detector.classifier import Classifier, ScoreBatch, default_model_path
    from detector.crops import crop_face, crop_views
    from detector.faces import DetectedFace, FaceDetector, create_face_detector
    from detector.media import MediaError
    from detector.report import Report
    from detector.schema import AnalysisResult, Face, Frame, MediaType, ModelInfo, Status, Track, VideoInfo
    from detector.tracks import link_tracks
    from detector.video import Sampling, VideoLimits


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detector' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
