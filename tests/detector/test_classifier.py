"""The classifier: real ONNX models, batching, refusal of card-less or mismatched models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from detector import classifier as classifier_mod
from detector.card import ModelCard, ModelCardError
from detector.classifier import Classifier, ScoreBatch, default_model_path, resolve_model_path
from detector.crops import to_model_input


def _identity_logit_model(path: Path, size: int = 32, card: ModelCard | None = None) -> Path:
    """A real ONNX graph: logit = mean of the input over C,H,W (optionally with a card)."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    node = helper.make_node("ReduceMean", ["input", "axes"], ["logit"], keepdims=0)
    graph = helper.make_graph([node], "g", [inp], [out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if card is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "facetrust.model_card", card.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _card(size: int = 32) -> ModelCard:
    return ModelCard(
        name="mean", version="1", architecture="reduce-mean", input_size=size,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )


def test_cardless_model_is_refused(tmp_path: Path) -> None:
    path = _identity_logit_model(tmp_path / "nocard.onnx")
    with pytest.raises(ModelCardError, match="no FaceTrust model card"):
        Classifier(path)


def test_input_shape_must_match_card(tmp_path: Path) -> None:
    path = _identity_logit_model(tmp_path / "bad.onnx", size=32, card=_card(48))
    with pytest.raises(ModelCardError, match="does not match the card"):
        Classifier(path)


def test_missing_and_corrupt_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="not found"):
        Classifier(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelCardError, match="cannot load ONNX model"):
        Classifier(junk)


def test_default_model_path_and_clear_error() -> None:
    path = default_model_path()
    assert path.name == "facetrust_default.onnx" and path.parent.name == "models"
    if not path.is_file():
        with pytest.raises(ModelCardError, match="--model"):
            resolve_model_path(None)


def test_scores_are_calibrated_logits_of_the_graph(tmp_path: Path) -> None:
    clf = Classifier(_identity_logit_model(tmp_path / "m.onnx", card=_card()), threads=1)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    batch = clf.score(crops)
    expected = to_model_input(crops, (0, 0, 0), (1, 1, 1)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(batch.logits, expected, rtol=1e-5)
    np.testing.assert_allclose(batch.probabilities, 1 / (1 + np.exp(-expected)), rtol=1e-5)
    assert batch.head_probabilities is None and len(batch) == 5


def test_views_average_logits_per_face_then_calibrate(tmp_path: Path) -> None:
    clf = Classifier(_identity_logit_model(tmp_path / "m.onnx", card=_card()), threads=1)
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)  # 3 faces x 4 views
    each = clf.score(crops)
    grouped = clf.score(crops, views=4)
    assert len(grouped) == 3
    mean = each.logits.astype(np.float64).reshape(3, 4).mean(axis=1)
    np.testing.assert_allclose(grouped.logits, mean, rtol=1e-5)
    np.testing.assert_allclose(grouped.probabilities, clf.card.calibration(mean), rtol=1e-5)
    with pytest.raises(ValueError, match="groups of 7 views"):
        clf.score(crops, views=7)
    with pytest.raises(ValueError, match="groups of 0 views"):
        clf.score(crops, views=0)


def test_empty_batch_and_bad_crops(tiny_model: Path) -> None:
    clf = Classifier(tiny_model)
    s = clf.input_size
    empty = clf.score(np.zeros((0, s, s, 3), np.uint8))
    assert isinstance(empty, ScoreBatch) and len(empty) == 0 and empty.probabilities.shape == (0,)
    with pytest.raises(ValueError, match="expected uint8 crops"):
        clf.score(np.zeros((1, s + 1, s, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 crops"):
        clf.score(np.zeros((1, s, s, 3), np.float32))


def test_large_batches_are_chunked_one_call_each(tiny_model: Path, monkeypatch) -> None:
    clf = Classifier(tiny_model)
    s = clf.input_size
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (150, s, s, 3), dtype=np.uint8)
    calls: list[int] = []
    real_run = clf.session.run

    def counting_run(outputs, feeds):
        calls.append(next(iter(feeds.values())).shape[0])
        return real_run(outputs, feeds)

    monkeypatch.setattr(clf.session, "run", counting_run, raising=False)
    big = clf.score(crops)
    chunk = classifier_mod.MAX_CHUNK
    assert 1 < chunk < 150 and len(calls) == -(-150 // chunk)
    assert calls == [min(chunk, 150 - i) for i in range(0, 150, chunk)]
    one_by_one = np.concatenate([clf.score(crops[i : i + 1]).probabilities for i in range(150)])
    np.testing.assert_allclose(big.probabilities, one_by_one, atol=1e-6)
    assert np.all((big.probabilities >= 0) & (big.probabilities <= 1))
    # the tiny model's card has a sharp temperature: calibration is applied, not a plain sigmoid
    np.testing.assert_allclose(big.probabilities, clf.card.calibration(big.logits))


def test_model_with_heads_reports_head_probabilities(tmp_path: Path) -> None:
    size = 16
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])
    heads = helper.make_tensor_value_info("head_logits", TensorProto.FLOAT, ["N", 2])
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("minus", TensorProto.FLOAT, [], [-1.0]),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["logit"], keepdims=0),
        helper.make_node("Unsqueeze", ["logit", "one"], ["col"]),
        helper.make_node("Mul", ["col", "minus"], ["neg"]),
        helper.make_node("Concat", ["col", "neg"], ["head_logits"], axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [inp], [out, heads], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    card = ModelCard(
        name="heads", version="1", architecture="x", input_size=size, mean=(0, 0, 0),
        std=(1, 1, 1), head_names=("a", "b"),
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = "facetrust.model_card", card.to_json()
    path = tmp_path / "heads.onnx"
    onnx.save(model, str(path))
    clf = Classifier(path)
    crops = np.full((3, size, size, 3), 200, np.uint8)
    batch = clf.score(crops)
    assert batch.head_probabilities is not None and batch.head_probabilities.shape == (3, 2)
    np.testing.assert_allclose(batch.head_probabilities[:, 0], batch.probabilities, rtol=1e-6)
    np.testing.assert_allclose(batch.head_probabilities.sum(axis=1), 1.0, rtol=1e-6)
    # views: head logits are averaged per face like the main logit
    two = np.stack([np.full((size, size, 3), v, np.uint8) for v in (10, 200, 40, 90, 250, 0, 120, 60)])
    grouped, each = clf.score(two, views=2), clf.score(two)
    assert grouped.head_probabilities is not None and grouped.head_probabilities.shape == (4, 2)
    mean_head = each.logits.astype(np.float64).reshape(4, 2).mean(axis=1)
    np.testing.assert_allclose(grouped.head_probabilities[:, 0], 1 / (1 + np.exp(-mean_head)), rtol=1e-5)
    wrong = ModelCard(**{**card.__dict__, "head_names": ("a", "b", "c")})
    model.metadata_props[0].value = wrong.to_json()
    onnx.save(model, str(path))
    with pytest.raises(ModelCardError, match="head names"):
        Classifier(path)
