"""`prepare_main` end to end on a tiny real tree: photos, a video, broken files; the reader."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.crops import crop_face
from detector.faces import create_face_detector
from detector.media import decode_image
from tests.detector.media_factory import write_video
from training.prepare import INDEX, PrepareError, prepare_main
from training.prepared import PreparedError, PreparedIndex, landmarks

SIZE, MARGIN = 160, 2.0


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _two_faces(astronaut: np.ndarray) -> np.ndarray:
    """A 700x520 canvas with the astronaut at full size and again at 60 %."""
    canvas = np.full((520, 900, 3), 200, np.uint8)
    canvas[:512, :512] = astronaut
    small = cv2.resize(astronaut, (307, 307), interpolation=cv2.INTER_AREA)
    canvas[100:407, 560:867] = small
    return canvas


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    _save(root / "real/astro/photo.jpg", astronaut)
    _save(root / "real/crowd/two.png", _two_faces(astronaut))
    _save(root / "fake/crowd/two_fake.png", _two_faces(astronaut[..., ::-1].copy()))
    _save(root / "real/blank/flat.png", np.full((200, 300, 3), 90, np.uint8))
    (root / "fake/broken").mkdir(parents=True)
    (root / "fake/broken/bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (root / "real/broken").mkdir(parents=True)
    (root / "real/broken/empty.jpg").write_bytes(b"")
    face = cv2.resize(astronaut, (300, 300), interpolation=cv2.INTER_AREA)

    def draw(i: int) -> np.ndarray:
        frame = np.full((300, 400, 3), 128, np.uint8)
        frame[:, 10 * i : 10 * i + 300] = face
        return frame

    (root / "real/astro").mkdir(parents=True, exist_ok=True)
    write_video(root / "real/astro/clip.mp4", n_frames=8, size=(400, 300), fps=8, draw=draw)
    return root


@pytest.fixture(scope="module")
def prepared(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "p"
    meta = prepare_main("folders", tree, out, frames=4, size=SIZE, margin=MARGIN, workers=1, progress=False)
    return out, meta


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / INDEX).read_text().splitlines()]


def test_index_and_crops(prepared: tuple[Path, dict], tree: Path) -> None:
    out, meta = prepared
    recs = _records(out)
    by_source: dict[str, list[dict]] = {}
    for r in recs:
        by_source.setdefault(r["source"], []).append(r)
    assert set(by_source) == {"real/astro/photo.jpg", "real/astro/clip.mp4", "real/crowd/two.png",
                              "fake/crowd/two_fake.png"}
    assert len(by_source["real/astro/photo.jpg"]) == 1
    assert len(by_source["real/crowd/two.png"]) == 2  # real media: every face
    assert len(by_source["fake/crowd/two_fake.png"]) == 1  # fake media: the largest face only
    fake = by_source["fake/crowd/two_fake.png"][0]
    assert fake["image_box"][2] < 560 and fake["label"] == 1 and fake["method"] == "fake"
    video = by_source["real/astro/clip.mp4"]
    assert [r["frame"] for r in video] == [0, 2, 5, 7] and all(r["time"] is not None for r in video)
    assert len({r["id"] for r in recs}) == len(recs)
    for r in recs:
        img = cv2.imread(str(out / r["file"]))
        assert img is not None and img.shape == (SIZE, SIZE, 3)
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        # the face box sits in the middle of the stored crop at 1/margin of its side
        assert max(x1 - x0, y1 - y0) == pytest.approx(SIZE / MARGIN, rel=0.02)
        assert (x0 + x1) / 2 == pytest.approx(SIZE / 2, abs=1.5)
        lm5 = np.array(r["landmarks5"])
        assert ((lm5 >= [x0, y0]) & (lm5 <= [x1, y1])).all()
        assert r["det_score"] >= 0.9 and r["split"] in ("train", "val", "test") and r["role"] == "train"
        assert r["group"].startswith("folders:")
        assert landmarks(r, 68) is not None  # dlib is installed: every face got 68 points
    assert meta["counts"]["crops"] == len(recs) == 8
    assert meta["settings"]["margin"] == MARGIN and meta["size"] == SIZE
    # the detector looks from min_face, as serving looks from the card's min_face_size
    assert meta["detector"]["min_face_size"] == meta["settings"]["min_face"] == 40


def test_failures_are_logged_and_counted(prepared: tuple[Path, dict]) -> None:
    out, meta = prepared
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["source"] for f in failures} == {"fake/broken/bad.mp4", "real/broken/empty.jpg"}
    assert all(f["status"] in ("unreadable", "unsupported") and f["error"] for f in failures)
    c = meta["counts"]
    assert c["failures"] == 2 and c["sources"] == 7 and c["sources_without_face"] == 1
    assert c["crops_by_method_label"] == {"fake/1": 1, "real/0": 7}
    assert json.loads((out / "meta.json").read_text())["counts"] == c


def test_resume_does_nothing_new(prepared: tuple[Path, dict], tree: Path) -> None:
    out, _ = prepared
    before = (out / INDEX).read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")}
    meta = prepare_main("folders", tree, out, frames=4, size=SIZE, margin=MARGIN, workers=1, progress=False)
    assert meta["counts"]["sources_new"] == 0 and meta["counts"]["failures"] == 2
    assert (out / INDEX).read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (out / "crops").rglob("*.jpg")} == stamps
    again = prepare_main("folders", tree, out, frames=4, size=SIZE, margin=MARGIN, workers=1, progress=False,
                         retry_failed=True)
    assert again["counts"]["sources_new"] == 2 and (out / INDEX).read_text() == before
    with pytest.raises(PrepareError, match="other settings"):
        prepare_main("folders", tree, out, frames=4, size=SIZE + 32, margin=MARGIN, workers=1, progress=False)



def test_resume_refuses_another_root_or_detector(prepared: tuple[Path, dict], tree: Path, tmp_path) -> None:
    """An existing folder is only continued from the same media and the same face detector."""
    import shutil

    out, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    other_root = tmp_path / "other_tree"
    shutil.copytree(tree, other_root)
    args = {"frames": 4, "size": SIZE, "margin": MARGIN, "workers": 1, "progress": False}
    with pytest.raises(PrepareError, match="was prepared from"):
        prepare_main("folders", other_root, copy, **args)
    meta = json.loads((copy / "meta.json").read_text())
    meta["detector"]["min_face_size"] = 20  # as folders prepared before the detector looked from min_face
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PrepareError, match="face-detector settings"):
        prepare_main("folders", tree, copy, **args)


def test_parallel_run_gives_the_same_index(prepared: tuple[Path, dict], tree: Path, tmp_path: Path) -> None:
    out, _ = prepared
    meta = prepare_main("folders", tree, tmp_path / "p2", frames=4, size=SIZE, margin=MARGIN, workers=2,
                        progress=False)
    assert meta["counts"]["crops"] == 8
    assert (tmp_path / "p2" / INDEX).read_text() == (out / INDEX).read_text()


def test_limit_role_and_bad_settings(tree: Path, tmp_path: Path) -> None:
    meta = prepare_main("folders", tree, tmp_path / "lim", frames=2, size=64, workers=1, progress=False,
                        limit=2, dense_landmarks=False, detector_min_face=40)
    assert meta["counts"]["sources"] == 2 and meta["detector"]["min_face_size"] == 40
    assert all(r["landmarks68"] is None for r in _records(tmp_path / "lim"))
    with pytest.raises(PrepareError, match="no media"):
        prepare_main("folders", tree, tmp_path / "dev", role="dev", progress=False)
    for bad in ({"frames": 0}, {"margin": 0.5}, {"size": 8}, {"min_score": 2.0}, {"workers": 0},
                {"detector_min_face": 0}, {"role": "judge"}):
        with pytest.raises(PrepareError):
            prepare_main("folders", tree, tmp_path / "bad", progress=False, **bad)


def test_reader_gives_serving_crops(prepared: tuple[Path, dict], tree: Path, astronaut: np.ndarray) -> None:
    out, _ = prepared
    index = PreparedIndex(out)
    assert len(index) == 8 and index.margin == MARGIN and index.size == SIZE
    assert len(index.select(label=1)) == 1 and len(index.select(method=("real", "fake"))) == 8
    assert len(index.select(split="nope")) == 0
    (rec,) = [r for r in index if r["source"] == "real/astro/photo.jpg"]
    stored = index.load_crop(rec)
    assert stored.shape == (SIZE, SIZE, 3) and stored.dtype == np.uint8
    photo = cv2.cvtColor(cv2.imread(str(tree / "real/astro/photo.jpg")), cv2.COLOR_BGR2RGB)
    served = crop_face(photo, rec["image_box"], 1.3, 64).astype(np.float32)
    trained = crop_face(stored, rec["box"], 1.3, 64).astype(np.float32)
    # same face, same framing: JPEG, resampling and the two integer crop windows aside
    assert np.abs(served - trained).mean() < 6.0
    (dx, dy), _ = cv2.phaseCorrelate(served.mean(axis=2), trained.mean(axis=2))
    assert np.hypot(dx, dy) < 1.0
    # the stored box is the one serving finds for a model trained on these crops (its card's
    # min_face_size is prepare's min_face, 40)
    detector = create_face_detector(min_face_size=40, threads=1)
    (face,) = detector.detect(decode_image((tree / "real/astro/photo.jpg").read_bytes()))
    assert np.allclose(face.box, rec["image_box"], atol=0.01)
    with pytest.raises(PreparedError):
        index.load_crop({**rec, "file": "crops/none.jpg"})
    with pytest.raises(PreparedError, match="not a prepared folder"):
        PreparedIndex(tree)


def test_cli_prepare(tree: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from facetrust.cli import _register, app

    _register()
    runner = CliRunner()
    args = ["--frames", "2", "--size", "64", "--limit", "2", "--no-dense-landmarks", "--workers", "1"]
    res = runner.invoke(app, ["prepare", "folders", str(tree), str(tmp_path / "cli"), *args])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"]["sources"] == 2
    res = runner.invoke(app, ["prepare", "folders", str(tree), str(tmp_path / "dev"), "--role", "dev"])
    assert res.exit_code == 2 and "no media" in res.output
    refused = ((["--limit", "0"], "--limit must be >= 1"), (["--role", "judge"], "train, dev or all"))
    for bad, message in refused:
        res = runner.invoke(app, ["prepare", "folders", str(tree), str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and message in res.output and not (tmp_path / "bad").exists()
