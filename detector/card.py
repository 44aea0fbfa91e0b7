"""The model card: everything inference needs to know about a classifier.

The card is a frozen dataclass serialised as JSON into the ONNX file's
``metadata_props`` under :data:`CARD_METADATA_KEY`. ``detector/`` reads the
crop margin, input size, smallest scored face, normalisation, calibration and
thresholds from here and nowhere else; a model without a valid card is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: The largest ``min_face_size`` of a card, and ``min_face`` of :func:`resolve_min_face` (pixels).
MAX_MIN_FACE = 4096

CARD_METADATA_KEY = "facetrust.model_card"
CARD_SCHEMA_VERSION = 1


class ModelCardError(ValueError):
    """The model carries no card, or the card is invalid."""


@dataclass(frozen=True)
class Calibration:
    """Maps the classifier's raw fake logit to a calibrated probability.

    ``method``:
      - ``"identity"``: ``p = sigmoid(logit)``
      - ``"temperature"``: ``p = sigmoid(logit / temperature)``
      - ``"platt"``: ``p = sigmoid(a * logit + b)``
      - ``"isotonic"``: ``p = interp(logit, xs, ys)`` (piecewise linear, clipped)
    """

    method: Literal["identity", "temperature", "platt", "isotonic"] = "identity"
    temperature: float = 1.0
    a: float = 1.0
    b: float = 0.0
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in ("identity", "temperature", "platt", "isotonic"):
            raise ModelCardError(f"unknown calibration method {self.method!r}")
        if self.method == "temperature" and not self.temperature > 0:
            raise ModelCardError("calibration temperature must be > 0")
        if self.method == "isotonic":
            if len(self.xs) < 2 or len(self.xs) != len(self.ys):
                raise ModelCardError("isotonic calibration needs >= 2 matching xs/ys points")
            if any(b < a for a, b in zip(self.xs, self.xs[1:], strict=False)):
                raise ModelCardError("isotonic calibration xs must be non-decreasing")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated fake probabilities for an array of raw logits."""
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            return np.clip(np.interp(z, self.xs, self.ys), 0.0, 1.0)
        if self.method == "temperature":
            z = z / self.temperature
        elif self.method == "platt":
            z = self.a * z + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


@dataclass(frozen=True)
class ModelCard:
    """Frozen description of a FaceTrust classifier, embedded in its ONNX file.

    The ONNX graph takes ``input_name``: float32 ``[N, 3, input_size, input_size]``
    RGB, scaled to [0, 1] then normalised with ``mean``/``std``; it returns
    ``output_name``: float32 ``[N]`` raw logits where positive means *fake*.
    If ``head_names`` is non-empty the graph also returns ``heads_output_name``:
    ``[N, len(head_names)]`` logits of the individual detectors (reported per face).
    """

    name: str
    version: str
    architecture: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_margin: float = 1.3
    #: Smallest face side (original pixels) the model scores: the smallest face it was trained on.
    #: The analyzer's face detector does not look for smaller faces. 20 (MTCNN's own default) for
    #: cards written before the field existed.
    min_face_size: int = 20
    input_name: str = "input"
    output_name: str = "logit"
    heads_output_name: str = "head_logits"
    head_names: tuple[str, ...] = ()
    labels: tuple[str, str] = ("real", "fake")
    calibration: Calibration = field(default_factory=Calibration)
    threshold_balanced: float = 0.5
    threshold_strict: float = 0.5
    training_data: str = ""
    licence: str = ""
    intended_use: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    schema_version: int = CARD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ModelCardError("model card needs a name and a version")
        if not (16 <= int(self.input_size) <= 1024):
            raise ModelCardError(f"input_size {self.input_size} out of range 16..1024")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ModelCardError("mean and std must be 3 values, std > 0")
        if not (1.0 <= self.crop_margin <= 3.0):
            raise ModelCardError(f"crop_margin {self.crop_margin} out of range 1.0..3.0")
        if isinstance(self.min_face_size, bool) or not isinstance(self.min_face_size, int) or not (
            1 <= self.min_face_size <= MAX_MIN_FACE
        ):
            raise ModelCardError(
                f"min_face_size {self.min_face_size!r} must be an integer in 1..{MAX_MIN_FACE} pixels"
            )
        for t in (self.threshold_balanced, self.threshold_strict):
            if not (0.0 <= t <= 1.0) or math.isnan(t):
                raise ModelCardError("thresholds are calibrated probabilities in [0, 1]")
        if self.labels != ("real", "fake"):
            raise ModelCardError("labels must be ('real', 'fake'): positive logit means fake")

    # -- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the card."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        """JSON text stored in the ONNX metadata."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from :meth:`to_dict` output; raises :class:`ModelCardError`."""
        try:
            d = dict(data)
            if int(d.get("schema_version", CARD_SCHEMA_VERSION)) > CARD_SCHEMA_VERSION:
                raise ModelCardError(f"model card schema {d['schema_version']} is newer than supported")
            cal = d.pop("calibration", {}) or {}
            cal = Calibration(
                **{**cal, "xs": tuple(cal.get("xs", ())), "ys": tuple(cal.get("ys", ()))}
            )
            for key in ("mean", "std", "labels", "head_names"):
                if key in d:
                    d[key] = tuple(d[key])
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = set(d) - known
            if unknown:
                raise ModelCardError(f"unknown model card fields: {sorted(unknown)}")
            return cls(calibration=cal, **d)
        except ModelCardError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelCardError(f"invalid model card: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse the JSON stored in ONNX metadata."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelCardError("model card JSON must be an object")
        return cls.from_dict(data)

    def label_for(self, probability: float, strict: bool = False) -> str:
        """``'fake'`` if the calibrated probability reaches the chosen threshold."""
        t = self.threshold_strict if strict else self.threshold_balanced
        return "fake" if probability >= t else "real"


def read_card(onnx_path: str) -> ModelCard:
    """Read the model card from an ONNX file's metadata (no torch, no onnx package)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise ModelCardError(f"cannot load ONNX model {onnx_path}: {exc}") from exc
    return card_from_session(sess, str(onnx_path))


def card_from_session(sess: Any, where: str = "model") -> ModelCard:
    """Read the card from an open onnxruntime session's custom metadata."""
    meta = sess.get_modelmeta().custom_metadata_map
    if CARD_METADATA_KEY not in meta:
        raise ModelCardError(
            f"{where} has no FaceTrust model card (metadata key {CARD_METADATA_KEY!r}); "
            "export it with `facetrust export` or embed a card with training.export.embed_card"
        )
    return ModelCard.from_json(meta[CARD_METADATA_KEY])


def resolve_min_face(card: ModelCard, min_face: int | None = None) -> int:
    """The smallest face box side (pixels) to look for: the card's ``min_face_size``, or
    ``min_face`` when it raises it. Raises ``ValueError`` below the card's (the model was never
    trained on smaller faces, so their scores would mean nothing) or above :data:`MAX_MIN_FACE`.

    A larger value is a speed setting: the detector skips the pyramid levels built for smaller
    faces (README, "Speed"), and smaller faces are not reported.
    """
    if min_face is None:
        return int(card.min_face_size)
    if isinstance(min_face, bool) or not isinstance(min_face, numbers.Integral):
        raise ValueError(f"min_face must be a whole number of pixels, got {min_face!r}")
    if not int(card.min_face_size) <= int(min_face) <= MAX_MIN_FACE:
        raise ValueError(
            f"min_face {int(min_face)} px is outside {card.min_face_size}..{MAX_MIN_FACE}: the "
            f"model {card.name} {card.version} scores faces of at least {card.min_face_size} px "
            "(its card's min_face_size, the smallest faces it was trained on)"
        )
    return int(min_face)
