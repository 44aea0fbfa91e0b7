"""`facetrust evaluate`: the detector's own pipeline over a dataset split, frame and video level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.training.conftest import train_cli
from training.evaluate import evaluate_main, plot_roc


def test_evaluate_test_split(trained_run: Path, face_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    card, root = face_corpus
    model = trained_run / "model.onnx"
    report = evaluate_main(model, card, root, split="test", out=tmp_path / "rep", frames=4)
    counts = report["counts"]
    assert counts["items"] == 9  # 6 real (one video, one cat photo, one corrupt file) + 3 fake
    unscored = {u["rel"]: u["status"] for u in report["unscored"]}
    assert unscored["real/cat_1.png"] == "no_face"
    assert unscored["real/corrupt_0.jpg"] == "unreadable"
    assert counts["unscored"] == len(unscored) and counts["scored"] == 9 - len(unscored)
    rows = {r["rel"]: r for r in report["items"]}
    for rel in unscored:
        assert rows[rel]["score"] is None and rows[rel]["frame_scores"] == []
    clip = rows["real/astronaut_clip_1.mp4"]
    assert clip["status"] == "ok" and clip["media"] == "video"
    assert 2 <= len(clip["frame_scores"]) <= 4  # one score per sampled frame with a face
    # frame level counts every sampled video frame; images count once
    assert counts["frames_scored"] == sum(len(r["frame_scores"]) for r in report["items"])
    assert counts["frames_scored"] > counts["scored"]
    video, frame = report["video"]["overall"], report["frame"]["overall"]
    assert video["n"] == counts["scored"] and frame["n"] == counts["frames_scored"]
    assert video["n_fake"] == 3 and 0.0 <= video["auc"] <= 1.0 and 0.0 <= frame["auc"] <= 1.0
    assert "sbi_photo" in report["video"]["per_method"]
    for name in ("balanced", "strict"):
        assert 0.0 <= report["accuracy_at_thresholds"][name]["fpr"] <= 1.0
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["counts"] == counts
    png = (tmp_path / "rep" / "roc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_and_errors(trained_run: Path, face_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    card, root = face_corpus
    model = trained_run / "model.onnx"
    runner = CliRunner()
    res = runner.invoke(train_cli(), ["evaluate", str(model), str(card), str(root), "--split", "val",
                                 "--limit", "4", "--frames", "2", "--out", str(tmp_path / "r"),
                                 "--multi-crop", "none"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "report.json").read_text())["multi_crop"] == "none"
    summary = json.loads(res.stdout)
    assert summary["counts"]["items"] <= 4 and summary["dataset"]["split"] == "val"
    assert (tmp_path / "r" / "roc.png").is_file()
    res = runner.invoke(train_cli(), ["evaluate", str(model), str(card), str(root), "--split", "nope"])
    assert res.exit_code == 2 and "--split" in res.output
    res = runner.invoke(train_cli(), ["evaluate", str(tmp_path / "missing.onnx"), str(card), str(root)])
    assert res.exit_code == 2 and "model file not found" in res.output
    res = runner.invoke(train_cli(), ["evaluate", str(model), "no_such_card", str(root)])
    assert res.exit_code == 2 and "unknown dataset card" in res.output
    res = runner.invoke(train_cli(), ["evaluate", str(model), str(card), str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "not a directory" in res.output


def test_plot_roc_without_both_classes(tmp_path: Path) -> None:
    assert plot_roc({"only reals": ([0, 0], [0.1, 0.2])}, tmp_path / "r.png", "t") is False
    assert (tmp_path / "r.png").is_file()
    rng = np.random.default_rng(0)
    y = [0] * 50 + [1] * 50
    assert plot_roc({"x": (y, rng.random(100).tolist())}, tmp_path / "s.png", "t") is True


@pytest.mark.parametrize("split", ["train", "all"])
def test_evaluate_other_splits_with_limit(trained_run: Path, face_corpus: tuple[Path, Path],
                                          split: str) -> None:
    card, root = face_corpus
    report = evaluate_main(trained_run / "model.onnx", card, root, split=split, limit=3, frames=2)
    assert 2 <= report["counts"]["items"] <= 3  # at most the limit, a real and a fake at least
    assert set(report["counts"]["by_label"]) == {"0", "1"}
    assert "files" not in report
    for bad in (0, 1):
        with pytest.raises(ValueError, match="limit must be >= 2"):
            evaluate_main(trained_run / "model.onnx", card, root, split=split, limit=bad, frames=2)
