"""Held-out-method probes: what they can and cannot generalise to, and the feature path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import tiny_config
from training.probe import extract_features, held_out_probe, main


def _features(seed: int = 0) -> dict[str, np.ndarray]:
    """Reals of 20 groups; fakes 'a' and 'b' shifted along axis 0, fakes 'c' only along axis 1."""
    rng = np.random.default_rng(seed)
    n_real, n_fake = 200, 60
    reals = rng.normal(size=(n_real, 8))
    fakes = {m: rng.normal(size=(n_fake, 8)) for m in "abc"}
    fakes["a"][:, 0] += 4.0
    fakes["b"][:, 0] += 4.0
    fakes["c"][:, 1] += 4.0
    x = np.concatenate([reals, *fakes.values()])
    labels = np.r_[np.zeros(n_real), np.ones(3 * n_fake)].astype(int)
    methods = np.array(["real"] * n_real + [m for m in "abc" for _ in range(n_fake)])
    groups = np.array([f"r{i % 20}" for i in range(n_real)] + [f"f{i}" for i in range(3 * n_fake)])
    video = np.r_[np.arange(n_real) % 2 == 0, np.zeros(3 * n_fake, bool)]
    return {"features": x, "labels": labels, "methods": methods, "groups": groups, "video_real": video}


def test_probe_generalises_only_along_what_other_fakes_teach() -> None:
    d = _features()
    out = held_out_probe(d["features"], d["labels"], d["methods"], d["groups"], d["video_real"], ["a", "c"])
    # 'b' teaches axis 0, so held-out 'a' is found; nothing teaches axis 1, so 'c' is not
    assert out["a"]["vs_all_reals"]["auc"] > 0.9 and out["a"]["vs_video_reals"]["auc"] > 0.9
    assert out["c"]["vs_all_reals"]["auc"] < 0.7
    assert out["a"]["n_fake"] == 60 and out["a"]["vs_all_reals"]["n_real"] == 200
    assert out["a"]["vs_video_reals"]["n_real"] == 100


def test_held_out_fakes_never_train_the_probe() -> None:
    d = _features()
    # 'c' fakes sit exactly on 'a' fakes' shift too: if 'c' leaked into training when held
    # out, 'c' would be found; with 'a' and 'b' made unlike 'c', it must not be.
    d["features"][d["methods"] == "a", 0] -= 8.0
    d["features"][d["methods"] == "b", 0] -= 8.0
    out = held_out_probe(d["features"], d["labels"], d["methods"], d["groups"], d["video_real"], ["c"])
    assert out["c"]["vs_all_reals"]["auc"] < 0.7


def test_probe_refuses_bad_input() -> None:
    d = _features()
    with pytest.raises(ValueError, match="differ in length"):
        held_out_probe(d["features"][:-1], d["labels"], d["methods"], d["groups"], d["video_real"], ["a"])
    with pytest.raises(ValueError, match="no labelled fakes of method 'z'"):
        held_out_probe(d["features"], d["labels"], d["methods"], d["groups"], d["video_real"], ["z"])
    few = np.array(["g0"] * len(d["labels"]))
    with pytest.raises(ValueError, match="real groups"):
        held_out_probe(d["features"], d["labels"], d["methods"], few, d["video_real"], ["a"])


def test_extract_features_on_prepared_crops(
    prepared_corpus: Path, tmp_path: Path, torch_one_thread: None
) -> None:
    cfg = tiny_config(prepared_corpus, tmp_path / "run")
    feats = extract_features(cfg, "imagenet-package", photos=1000)
    n = len(feats["labels"])
    assert feats["features"].shape == (n, 1280) and np.isfinite(feats["features"]).all()
    assert set(feats["labels"]) == {0, 1} and set(feats["methods"]) == {"real", "sbi_photo"}
    assert feats["imagenet"] is True
    # the corpus's reals are photos and the frames of one clip
    assert 0 < feats["video_real"].sum() < (feats["labels"] == 0).sum()
    again = extract_features(cfg, "imagenet-package", photos=1000)
    np.testing.assert_allclose(again["features"], feats["features"], rtol=1e-5, atol=1e-5)
    args = (feats["features"], feats["labels"], feats["methods"], feats["groups"], feats["video_real"])
    with pytest.raises(ValueError, match="leaves no labelled fakes"):  # the corpus has one fake method
        held_out_probe(*args, ["sbi_photo"], folds=3)
    methods = feats["methods"].copy()
    fakes = np.flatnonzero(feats["labels"] == 1)
    methods[fakes[::2]] = "sbi_other"  # two "methods": each held out in turn
    out = held_out_probe(args[0], args[1], methods, args[3], args[4], ["sbi_photo", "sbi_other"], folds=3)
    for res in out.values():
        assert 0.0 <= res["vs_all_reals"]["auc"] <= 1.0 and res["n_fake"] > 0


def test_cli_refuses_a_bad_config_or_method(
    prepared_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], torch_one_thread: None
) -> None:
    out = tmp_path / "probe.json"
    assert main([str(tmp_path / "absent.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    import yaml

    config = tmp_path / "tiny.yaml"
    cfg = tiny_config(prepared_corpus, tmp_path / "run")
    config.write_text(yaml.safe_dump({"data": [{"path": str(prepared_corpus)}], "model": cfg.model,
                                      "pretrained": cfg.pretrained, "input_size": cfg.input_size}))
    assert main([str(config), "--held-out", "nosuch", "--out", str(out)]) == 2
    assert "no labelled fakes of method 'nosuch'" in capsys.readouterr().err and not out.exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for bad in (blocker / "probe.json", tmp_path):  # under a file; a folder
        assert main([str(config), "--out", str(bad)]) == 2
        assert "not a file path that can be written" in capsys.readouterr().err


def test_pack_and_export_mtcnn_command_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training import export_mtcnn, pack

    with pytest.raises(SystemExit) as info:
        pack.main(["--help"])
    assert info.value.code == 0 and "prepared" in capsys.readouterr().out
    assert pack.main([str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert "not a prepared folder" in capsys.readouterr().err and not (tmp_path / "out").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as info:
        export_mtcnn.main(["--out", str(blocker)])
    assert info.value.code == 2 and "error: --out" in capsys.readouterr().err
