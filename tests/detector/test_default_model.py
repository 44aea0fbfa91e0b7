"""The shipped default model: its card matches MODEL_CARD.md, and it does better than chance
on the DFDC dev crops and on generated fakes against their real clips (shared data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from detector.card import read_card
from detector.classifier import default_model_path
from detector.video import Sampling

MODEL_CARD_MD = Path(default_model_path()).with_name("MODEL_CARD.md")


def _auc(labels: list[int], scores: list[float]) -> float:
    """Mann-Whitney AUC (ties count half), no sklearn needed."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def analyzer():
    from detector import create_analyzer

    return create_analyzer()


def test_default_model_ships_with_a_valid_card() -> None:
    path = default_model_path()
    assert path.is_file(), "the default model must ship inside the package"
    card = read_card(str(path))
    assert card.name == "facetrust-default"
    assert 0.0 < card.threshold_balanced <= card.threshold_strict < 1.0
    assert card.crop_margin == 1.3 and card.input_size == 160


def test_embedded_card_matches_model_card_md() -> None:
    text = MODEL_CARD_MD.read_text(encoding="utf-8")
    block = re.search(r"<!-- embedded-card -->\s*```json\n(.*?)```", text, re.S)
    assert block, "MODEL_CARD.md must contain the embedded card as a json block"
    documented = json.loads(block.group(1))
    embedded = read_card(str(default_model_path())).to_dict()
    assert documented == embedded
    # The thresholds quoted in the prose are the embedded ones.
    assert f"{embedded['threshold_balanced']:.3f}" in text
    assert f"{embedded['threshold_strict']:.3f}" in text


def test_dfdc_dev_crops_auc_above_chance(analyzer, shared_data: Path) -> None:
    labels, scores = [], []
    for label, folder in ((0, "real"), (1, "fake")):
        for path in sorted((shared_data / "dev/dfdc/crops" / folder).glob("*.png")):
            result = analyzer.analyze_path(path)
            if result.status == "ok":
                labels.append(label)
                scores.append(result.fake_probability)
            else:
                assert result.fake_probability is None
    assert labels.count(0) >= 5 and labels.count(1) >= 5, "faces found in too few dev crops"
    assert _auc(labels, scores) > 0.5


def test_generated_fakes_score_above_their_real_clips(analyzer, shared_data: Path) -> None:
    gen = shared_data / "generated"
    videos = [p for p in sorted(gen.glob("*/*/*")) if p.suffix in (".mp4", ".webm")]
    by_label: dict[str, list[float]] = {"fake": [], "real": []}
    for path in videos:
        result = analyzer.analyze_path(path, sampling=Sampling("count", 4))
        if result.status == "ok":
            by_label[path.parent.name].append(result.fake_probability)
    assert len(by_label["fake"]) >= 10 and len(by_label["real"]) >= 3
    assert np.mean(by_label["fake"]) > np.mean(by_label["real"])
