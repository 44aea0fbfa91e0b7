"""The model card: round trip through JSON and ONNX metadata, validation, calibration maths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from detector.card import CARD_METADATA_KEY, Calibration, ModelCard, ModelCardError, read_card


def _card(**kw) -> ModelCard:
    base = dict(name="m", version="1", architecture="a", input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    return ModelCard(**{**base, **kw})


def test_json_round_trip_is_exact() -> None:
    card = _card(calibration=Calibration("isotonic", xs=(-2.0, 0.0, 2.0), ys=(0.1, 0.5, 0.9)),
                 head_names=("blend", "synth"), metrics={"auc": 0.9})
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("bad", [
    {"input_size": 8}, {"crop_margin": 0.5}, {"std": (0.5, 0.0, 0.5)}, {"threshold_strict": 1.5},
    {"labels": ("fake", "real")}, {"version": ""}, {"min_face_size": 0}, {"min_face_size": 20.5},
    {"min_face_size": True},
])
def test_invalid_cards_are_refused(bad) -> None:
    with pytest.raises(ModelCardError):
        _card(**bad)


def test_cards_without_min_face_size_keep_the_detector_default() -> None:
    """Cards written before the field existed still load, with MTCNN's default 20 px."""
    data = _card().to_dict()
    del data["min_face_size"]
    assert ModelCard.from_dict(data).min_face_size == 20
    assert ModelCard.from_json(_card(min_face_size=48).to_json()).min_face_size == 48


def test_unknown_fields_newer_schema_and_garbage_are_refused() -> None:
    data = _card().to_dict()
    with pytest.raises(ModelCardError, match="unknown"):
        ModelCard.from_dict({**data, "surprise": 1})
    with pytest.raises(ModelCardError, match="newer"):
        ModelCard.from_dict({**data, "schema_version": 99})
    with pytest.raises(ModelCardError):
        ModelCard.from_json("[1, 2]")
    with pytest.raises(ModelCardError):
        ModelCard.from_json("{not json")


def test_calibrations() -> None:
    z = np.array([-3.0, 0.0, 3.0])
    assert np.allclose(Calibration()(z), 1 / (1 + np.exp(-z)))
    assert np.allclose(Calibration("temperature", temperature=2.0)(z), 1 / (1 + np.exp(-z / 2)))
    assert np.allclose(Calibration("platt", a=2.0, b=1.0)(z), 1 / (1 + np.exp(-(2 * z + 1))))
    iso = Calibration("isotonic", xs=(-1.0, 1.0), ys=(0.2, 0.8))
    assert np.allclose(iso(z), [0.2, 0.5, 0.8])
    with pytest.raises(ModelCardError):
        Calibration("isotonic", xs=(1.0, -1.0), ys=(0.2, 0.8))
    with pytest.raises(ModelCardError):
        Calibration("temperature", temperature=0.0)


def test_labels_follow_thresholds() -> None:
    card = _card(threshold_balanced=0.4, threshold_strict=0.9)
    assert card.label_for(0.5) == "fake" and card.label_for(0.5, strict=True) == "real"
    assert card.label_for(0.39) == "real"


def test_card_is_read_from_onnx_metadata_and_required(tiny_model: Path, tmp_path: Path) -> None:
    card = read_card(str(tiny_model))
    assert card.name == "tiny-test"
    model = onnx.load(str(tiny_model))
    stored = {p.key: p.value for p in model.metadata_props}[CARD_METADATA_KEY]
    assert json.loads(stored) == card.to_dict()
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelCardError, match="no FaceTrust model card"):
        read_card(str(bare))
