"""`facetrust jitter` and `facetrust degrade`: score changes under small face-box moves and under
picture-wide damage (JPEG, resolution, blur), through the detector's pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from detector.media import SNIFF_BYTES, sniff
from tests.training.conftest import train_cli
from training.cards import list_items, load_card
from training.robustness import (
    CODECS,
    DEGRADATIONS,
    EDGE_SIDES,
    OUTSIDE_BINS,
    _Recoded,
    box_stability,
    cut_picture,
    encode_photo,
    moved_boxes,
    quality_shift,
)


@given(st.floats(0, 1000), st.floats(0, 1000), st.floats(4, 500), st.floats(4, 500), st.floats(0.001, 0.25))
def test_moved_boxes_shift_and_scale_by_the_fraction(x0: float, y0: float, w: float, h: float,
                                                     f: float) -> None:
    box = (x0, y0, x0 + w, y0 + h)
    boxes = moved_boxes(box, f)
    assert len(boxes) == 6
    d = f * max(w, h)
    for b, (dx, dy) in zip(boxes[:4], ((-d, 0), (d, 0), (0, -d), (0, d)), strict=True):
        assert b == pytest.approx((x0 + dx, y0 + dy, x0 + w + dx, y0 + h + dy))
    for b, k in zip(boxes[4:], (math.exp(f), math.exp(-f)), strict=True):
        assert (b[2] - b[0]) == pytest.approx(w * k) and (b[3] - b[1]) == pytest.approx(h * k)
        assert (b[0] + b[2]) / 2 == pytest.approx(x0 + w / 2)


def test_box_stability_on_a_split(trained_run: Path, face_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    card, root = face_corpus
    report = box_stability(trained_run / "model.onnx", card, root, split="test", frames=2,
                           fractions=(0.02, 0.1), out=tmp_path / "j")
    # the test split's photos and clip frames with a face (the cat and the corrupt file add none)
    assert report["faces"] >= 4
    assert len(report["unreadable"]) == 1 and "corrupt_0.jpg" in report["unreadable"][0]
    assert report["faces_by_label"]["real"] + report["faces_by_label"]["fake"] == report["faces"]
    small, large = report["fractions"]["0.02"], report["fractions"]["0.1"]
    for row in (small, large):
        assert 0.0 <= row["mean_abs_dprob"] <= 1.0 and 0.0 <= row["p95_abs_dprob"] <= 1.0
        assert 0.0 <= row["label_flip_balanced"] <= 1.0 and 0.0 <= row["label_flip_strict"] <= 1.0
        assert row["mean_abs_dlogit"] > 0.0  # a moved box is a different crop
    assert large["mean_abs_dlogit"] > small["mean_abs_dlogit"]  # bigger moves, bigger changes
    assert json.loads((tmp_path / "j" / "jitter.json").read_text())["faces"] == report["faces"]
    assert report["crop_views"] == 1
    views = box_stability(trained_run / "model.onnx", card, root, split="test", frames=2,
                          fractions=(0.02, 0.1), multi_crop=True)
    assert views["crop_views"] == 4 and views["faces"] == report["faces"]
    assert views["fractions"]["0.1"]["mean_abs_dlogit"] > 0.0
    # the same faces, scored as the mean of 4 views: a different score than one crop
    assert views["fractions"] != report["fractions"]


def test_cli_jitter_and_errors(trained_run: Path, face_corpus: tuple[Path, Path]) -> None:
    card, root = face_corpus
    model = str(trained_run / "model.onnx")
    runner = CliRunner()
    res = runner.invoke(train_cli(), ["jitter", model, str(card), str(root), "--split", "test",
                                      "--limit", "3", "--frames", "1", "--fraction", "0.05", "--multi-crop"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dataset"]["items"] == 3 and list(report["fractions"]) == ["0.05"]
    assert report["crop_views"] == 4
    res = runner.invoke(train_cli(), ["jitter", model, str(card), str(root), "--fraction", "0.9"])
    assert res.exit_code == 2 and "fraction" in res.output
    res = runner.invoke(train_cli(), ["jitter", model, str(card), str(root), "--split", "all"])
    assert res.exit_code == 2 and "--split" in res.output
    res = runner.invoke(train_cli(), ["jitter", model, str(card), str(root), "--limit", "-1"])
    assert res.exit_code == 2 and "--limit must be >= 1" in res.output


def test_degradations_keep_the_picture_shape_and_change_it() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    for name, fn in DEGRADATIONS.items():
        out = fn(image)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - image).mean() > 1.0, name  # noise does not survive any of them


def test_quality_shift_on_a_split(trained_run: Path, face_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    card, root = face_corpus
    report = quality_shift(trained_run / "model.onnx", card, root, split="test", frames=2, max_real=2,
                           out=tmp_path / "q")
    # every fake item of the split is kept, the reals are cut to 2
    labels = [it.label for it in list_items(load_card(card), root) if it.split == "test"]
    assert report["dataset"]["items"] == labels.count(1) + 2
    assert report["faces_by_label"]["fake"] >= 1
    assert list(report["degradations"]) == ["original", *DEGRADATIONS]
    for row in report["degradations"].values():
        for key in ("real", "fake"):
            if row[key] is not None:
                assert 0.0 <= row[key]["mean_probability"] <= 1.0
                assert row[key]["above_strict"] <= row[key]["above_balanced"]
    saved = json.loads((tmp_path / "q" / "degrade.json").read_text())
    assert saved["degradations"] == report["degradations"] and report["crop_views"] == 1
    views = quality_shift(trained_run / "model.onnx", card, root, split="test", frames=2, max_real=2,
                          multi_crop=True)
    assert views["crop_views"] == 4 and views["faces_by_label"] == report["faces_by_label"]
    assert "face_sizes" not in report
    sized = quality_shift(trained_run / "model.onnx", card, root, split="test", frames=2, max_real=2,
                          face_sizes=(60, 40, 60))
    assert sized["degradations"] == report["degradations"] and list(sized["face_sizes"]) == ["40", "60"]
    for row in sized["face_sizes"].values():
        for key in ("real", "fake"):
            assert row[key]["faces"] + row[key]["not_found"] <= sized["faces_by_label"][key]
            if row[key]["faces"]:
                assert 0.0 <= row[key]["above_strict"] <= row[key]["above_balanced"] <= 1.0
    rows = sized["face_sizes"].items()
    at = {size: sum(row[k]["faces"] for k in ("real", "fake")) for size, row in rows}
    lost = {size: sum(row[k]["not_found"] for k in ("real", "fake")) for size, row in rows}
    assert at["60"] >= 1 and at["40"] + lost["40"] >= 1  # at 40 px (the model's min_face_size) most are lost
    assert all(row[k]["too_small"] >= 0 for row in sized["face_sizes"].values() for k in ("real", "fake"))
    with pytest.raises(ValueError, match="min_face_size"):
        quality_shift(trained_run / "model.onnx", card, root, split="test", face_sizes=(8,))
    coded = quality_shift(trained_run / "model.onnx", card, root, split="test", frames=2, max_real=2,
                          codecs=("heic80", "avif80", "jpeg90", "avif80"))
    assert list(coded["degradations"]) == ["original", *DEGRADATIONS, "heic80", "avif80", "jpeg90"]
    assert coded["degradations"]["original"] == report["degradations"]["original"]
    for name in ("heic80", "avif80", "jpeg90"):
        assert 0.0 < coded["degradations"][name]["bits_per_pixel"] < 24.0, name
    assert "bits_per_pixel" not in coded["degradations"]["jpeg30"]
    with pytest.raises(ValueError, match="unknown codec.*webp"):
        quality_shift(trained_run / "model.onnx", card, root, split="test", codecs=("webp",))


@pytest.mark.parametrize("side", EDGE_SIDES)
def test_cut_picture_puts_the_share_of_the_box_beyond_that_edge(side: str) -> None:
    from detector.crops import outside_fraction

    image = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    box = (100.0, 50.0, 180.0, 150.0)  # 80 x 100
    pic, dx, dy = cut_picture(image, box, 0.25, side)
    moved = (box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy)
    assert outside_fraction(moved, pic.shape[1], pic.shape[0]) == pytest.approx(0.25, abs=0.011)
    # the copy is the picture's own pixels, offset as returned
    assert np.array_equal(pic, image[dy:dy + pic.shape[0], dx:dx + pic.shape[1]])
    border, dx, dy = cut_picture(image, box, -0.1, side)  # the picture ends 10% outside the box
    moved = (box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy)
    assert outside_fraction(moved, border.shape[1], border.shape[0]) == 0.0
    assert border.shape[0] * border.shape[1] < image.shape[0] * image.shape[1]
    with pytest.raises(ValueError, match="side"):
        cut_picture(image, box, 0.25, "middle")


def test_edge_cut_check_on_a_split(trained_run: Path, face_corpus: tuple[Path, Path]) -> None:
    card, root = face_corpus
    report = quality_shift(trained_run / "model.onnx", card, root, split="test", frames=1, max_real=2,
                           edge_cuts=(0.3, 0.1, 0.3, -0.15))
    assert list(report["edge_cuts"]) == ["-0.15", "0.1", "0.3"]
    scored = 0
    for share, row in report["edge_cuts"].items():
        for key in ("real", "fake"):
            pooled = row[key]
            for name in ("faces", "not_found", "not_cut"):
                assert pooled[name] == sum(s[name] for s in pooled["sides"].values())
            # four copies per whole face, at most: every face of the split's items, each side
            copies = pooled["faces"] + pooled["not_found"] + pooled["not_cut"]
            assert copies <= 4 * report["faces_by_label"][key]
            scored += pooled["faces"]
            if float(share) > 0:
                assert pooled["not_cut"] == 0  # a whole face can always be cut into
            if pooled["faces"]:
                assert 0.0 <= pooled["above_strict"] <= pooled["above_balanced"] <= 1.0
                if float(share) > 0:
                    assert pooled["median_outside"] > 0.0  # the found box still reaches past the edge
    assert scored >= 1
    bins = report["by_outside"]
    assert len(bins) == len(OUTSIDE_BINS) and list(bins)[:2] == ["0", "0-0.05"]
    # the original copies' faces plus every cut face found
    total = sum(b[k]["faces"] for b in bins.values() for k in ("real", "fake"))
    assert total == sum(report["faces_by_label"].values()) + scored
    with pytest.raises(ValueError, match="--edge-cut"):
        quality_shift(trained_run / "model.onnx", card, root, split="test", edge_cuts=(0.5,))
    with pytest.raises(ValueError, match="--edge-cut"):
        quality_shift(trained_run / "model.onnx", card, root, split="test", edge_cuts=(0.0,))


@pytest.mark.parametrize("name", sorted(CODECS))
def test_phone_codecs_round_trip_through_the_upload_decoder(name: str, astronaut: np.ndarray) -> None:
    fmt, quality = CODECS[name]
    data = encode_photo(astronaut, fmt, quality)
    assert sniff(data[:SNIFF_BYTES]) == fmt
    back = _Recoded(fmt, quality)(astronaut)
    assert back.shape == astronaut.shape and back.dtype == np.uint8
    assert 0.0 < np.abs(back.astype(int) - astronaut).mean() < 8.0  # lossy, but the same photo


def test_cli_degrade_and_errors(trained_run: Path, face_corpus: tuple[Path, Path]) -> None:
    card, root = face_corpus
    model = str(trained_run / "model.onnx")
    runner = CliRunner()
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--frames", "1",
                                      "--max-real", "1"])
    assert res.exit_code == 0, res.output
    assert "jpeg30" in json.loads(res.stdout)["degradations"]
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--frames", "1",
                                      "--max-real", "1", "--face-size", "48"])
    assert res.exit_code == 0 and list(json.loads(res.stdout)["face_sizes"]) == ["48"], res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--frames", "1",
                                      "--max-real", "1", "--codec", "avif80"])
    assert res.exit_code == 0 and "avif80" in json.loads(res.stdout)["degradations"], res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--frames", "1",
                                      "--max-real", "1", "--edge-cut", "0.2"])
    assert res.exit_code == 0 and list(json.loads(res.stdout)["edge_cuts"]) == ["0.2"], res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--edge-cut", "0"])
    assert res.exit_code == 2 and "--edge-cut" in res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--codec", "png"])
    assert res.exit_code == 2 and "unknown codec" in res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--face-size", "5"])
    assert res.exit_code == 2 and "--face-size" in res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--max-real", "0"])
    assert res.exit_code == 2 and "--max-real" in res.output
    res = runner.invoke(train_cli(), ["degrade", model, str(card), str(root), "--split", "nope"])
    assert res.exit_code == 2 and "--split" in res.output
