"""The result schema: one pydantic model for the CLI's JSON, the Python API and HTTP.

Field names here are a public contract (documented in README.md). Never put a
score where there is no verdict: ``fake_probability`` and ``label`` are null
unless ``status == "ok"``.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Status(str, Enum):
    """Outcome of analysing one file."""

    ok = "ok"  # faces found and scored
    no_face = "no_face"  # decoded, but no face found: no score
    unreadable = "unreadable"  # empty, truncated or corrupt media
    unsupported = "unsupported"  # not an allowed image/video format
    too_large = "too_large"  # over a size, pixel, duration or frame cap
    timeout = "timeout"  # analysis exceeded its time limit
    cancelled = "cancelled"  # job cancelled by the user
    error = "error"  # unexpected internal failure (a bug): reported, never scored


class MediaType(str, Enum):
    image = "image"
    video = "video"


class ModelInfo(BaseModel):
    name: str
    version: str
    threshold_balanced: float
    threshold_strict: float


class Face(BaseModel):
    """One detected face, in original-image pixel coordinates."""

    box: list[float] = Field(description="[x0, y0, x1, y1] in pixels of the original image")
    landmarks: list[list[float]] = Field(
        description="5 points [x, y]: left eye, right eye, nose, left mouth, right mouth"
    )
    detection_score: float
    orientation: int = Field(
        default=0,
        description="how far the face is turned clockwise in the picture (0, 90, 180, 270 degrees); "
        "it is scored turned back upright",
    )
    fake_probability: float = Field(description="calibrated probability that the face is fake")
    label: str = Field(description="'real' or 'fake' at the model's balanced threshold")
    label_strict: str = Field(description="'real' or 'fake' at the strict (~1% FPR) threshold")
    head_probabilities: dict[str, float] | None = Field(
        default=None, description="per-detector probabilities when the model has several heads"
    )
    track_id: int | None = Field(default=None, description="video only: the person track")


class Frame(BaseModel):
    """One sampled video frame."""

    index: int = Field(description="decoded frame index (0-based, presentation order)")
    time: float = Field(description="presentation time in seconds")
    faces: list[Face]
    fake_probability: float | None = Field(
        default=None, description="max over the frame's faces; null with no face"
    )


class Track(BaseModel):
    """One person followed across sampled frames."""

    id: int
    frames: list[int] = Field(description="frame indices where this track has a face")
    first_time: float
    last_time: float
    fake_probability: float = Field(description="robust aggregate over the track's faces")
    label: str
    label_strict: str


class VideoInfo(BaseModel):
    width: int
    height: int
    rotation: int = 0
    fps: float | None = None
    duration: float | None = None
    frames_decoded: int = 0
    frames_sampled: int = 0
    sampling: str = ""
    truncated: bool = Field(
        default=False, description="the stream ended early or broke off: later frames were not analysed"
    )
    decode_errors: int = Field(default=0, description="packets the video decoder rejected (damaged data)")
    frames_damaged: int = Field(
        default=0,
        description="frames lost to rejected packets or decoded from damaged data (after such a packet, "
        "before the next keyframe): never analysed",
    )
    frames_skipped: int = Field(default=0, description="frames the sampling asked for that were damaged")


class AnalysisResult(BaseModel):
    """Result of analysing one file; shared by `facetrust scan --json`, Python and HTTP."""

    model_config = ConfigDict(use_enum_values=True)

    path: str
    sha256: str | None = None
    size_bytes: int | None = None
    media_type: MediaType | None = None
    status: Status
    error: str | None = Field(default=None, description="human-readable reason when not ok")
    fake_probability: float | None = Field(
        default=None, description="calibrated verdict probability; null when there is no verdict"
    )
    label: str | None = Field(default=None, description="'real'/'fake' at the balanced threshold")
    label_strict: str | None = Field(default=None, description="'real'/'fake' at the strict threshold")
    model: ModelInfo | None = None
    aggregation: str | None = Field(default=None, description="rule that produced the verdict")
    crop_views: int | None = Field(
        default=None,
        description="crops scored per face: 1, or 4 (the face box moved by 2% left, right, up and "
        "down, the last two mirrored; the face's logit is their mean)",
    )
    min_face_size: int | None = Field(
        default=None,
        description="smallest face box side looked for, in pixels of the picture: the model card's "
        "min_face_size unless raised (`--min-face`); smaller faces are not reported",
    )
    width: int | None = None
    height: int | None = None
    faces: list[Face] | None = Field(default=None, description="images only")
    frames: list[Frame] | None = Field(default=None, description="videos only")
    tracks: list[Track] | None = Field(default=None, description="videos only")
    video: VideoInfo | None = None
    warnings: list[str] = Field(
        default_factory=list,
        description="what limits this verdict although the status is ok (e.g. a damaged or cut-off "
        "video whose verdict covers only the frames that decoded)",
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds per stage: decode (videos: waiting for frames decoded in the background), "
        "detect, classify, total",
    )
