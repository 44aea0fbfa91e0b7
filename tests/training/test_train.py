"""Training end to end on CPU: prepared real photos -> 2 steps -> export -> detector."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.training.conftest import tiny_config
from training.config import ConfigError, load_config
from training.train import BEST, LAST, STATE_FILE, TrainError, WarmupCosine, train_main


def test_run_folder_holds_checkpoints_config_and_log(trained_run: Path) -> None:
    for name in ("config.yaml", LAST, BEST, STATE_FILE, "log.jsonl", "model.onnx", "export.json",
                 "calibration.json"):
        assert (trained_run / name).is_file(), name
    saved = load_config(trained_run / "config.yaml")
    assert saved.input_size == 64 and saved.validation.holdout_methods == ["sbi_photo"]
    entries = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert len(entries) == 1
    e = entries[0]
    assert e["epoch"] == 1 and e["images_per_second"] > 0 and np.isfinite(e["train_loss"])
    overall = e["val"]["overall"]
    # validation: real crops plus their self-blended twins; held-out photos reported apart
    assert overall["n_real"] >= 3 and overall["n_fake"] >= 3 and 0.0 <= overall["auc"] <= 1.0
    assert "sbi" in e["val"]["per_method"]
    assert e["val"]["holdout"]["sbi_photo"]["n_fake"] >= 1
    from safetensors import safe_open

    with safe_open(str(trained_run / BEST), "pt") as f:
        assert json.loads(f.metadata()["epoch"]) == 1
        assert "conv_stem.weight" in f.keys()


def test_exported_model_runs_in_the_detector(trained_run: Path, astronaut: np.ndarray,
                                             tmp_path: Path) -> None:
    from detector.analyze import create_analyzer
    from detector.card import read_card

    model = trained_run / "model.onnx"
    card = read_card(str(model))
    assert card.input_size == 64 and card.crop_margin == 1.3
    assert card.mean == (0.5, 0.5, 0.5) and card.std == (0.5, 0.5, 0.5)
    assert card.architecture == "timm/tf_efficientnet_lite0"
    assert card.calibration.method in ("temperature", "isotonic")
    assert 0.0 <= card.threshold_balanced <= card.threshold_strict <= 1.0
    assert "sbi_photo" in card.training_data and card.created
    assert card.metrics["validation"]["n_real"] >= 3
    assert "sbi_photo" in card.metrics["holdout"]
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    result = create_analyzer(model=model).analyze_path(photo)
    assert result.status == "ok"
    assert 0.0 <= result.fake_probability <= 1.0
    assert result.model.name == "facetrust-test" and len(result.faces) == 1
    report = json.loads((trained_run / "export.json").read_text())
    assert report["parity_max_abs_prob_diff"] <= 1e-4 and report["parity_crops"] >= 6


def test_resume_continues_after_the_last_epoch(prepared_corpus: Path, tmp_path: Path,
                                              torch_one_thread: None) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(prepared_corpus, run, export=False, max_steps_per_epoch=1)
    train_main(cfg, progress=False)
    first = torch.load(str(run / STATE_FILE), weights_only=True)
    assert first["epoch"] == 0
    with pytest.raises(TrainError, match="--resume"):
        train_main(cfg, progress=False)
    for changed in ({"input_size": 96}, {"seed": 5}, {"crop_margin": 1.5}):
        with pytest.raises(TrainError, match="different config"):
            train_main(tiny_config(prepared_corpus, run, export=False, max_steps_per_epoch=1, **changed),
                       resume=True, progress=False)
    cfg2 = tiny_config(prepared_corpus, run, export=False, max_steps_per_epoch=1, epochs=2)
    train_main(cfg2, resume=True, progress=False)  # more epochs: allowed, the schedule stretched
    state = torch.load(str(run / STATE_FILE), weights_only=True)
    assert state["epoch"] == 1
    assert state["scheduler"]["last_epoch"] == 2  # one step per epoch, continued
    assert state["scheduler"]["lr_lambdas"][0]["total"] == 2  # over the new two epochs
    epochs = [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert not (run / "model.onnx").exists()


def test_runs_that_cannot_start_are_refused_and_leave_no_folder(prepared_corpus: Path, tmp_path) -> None:
    from training.config import ConfigError

    cases = (({"crop_margin": 3.0}, "wider than"),  # the stored crops have a 2.0 margin
             ({"validation": {"holdout_methods": ["sbi_phto"]}}, "not methods of the data"))
    for extra, message in cases:
        run = tmp_path / f"run{len(message)}"
        with pytest.raises(ConfigError, match=message):
            train_main(tiny_config(prepared_corpus, run, **extra), progress=False)
        assert not run.exists()


def test_samples_are_reproducible_per_seed_epoch_slot(prepared_corpus: Path, tmp_path: Path) -> None:
    from training.data import FaceDataset, Sources, make_splits

    cfg = tiny_config(prepared_corpus, tmp_path / "r", sbi_prob=0.5, cross_blend_prob=0.5)
    sources = Sources([prepared_corpus])
    splits = make_splits(sources.records, cfg)
    a = FaceDataset(sources, cfg, (0.5,) * 3, (0.5,) * 3, train=True, pool=splits.train)
    b = FaceDataset(Sources([prepared_corpus]), cfg, (0.5,) * 3, (0.5,) * 3, train=True, pool=splits.train)
    real = next(i for i in splits.train if sources.records[i].label == 0)
    kinds = set()
    for slot in range(12):
        xa, ya, ra, ka = a[(slot, real)]
        xb, yb, rb, kb = b[(slot, real)]
        assert torch.equal(xa, xb) and float(ya) == float(yb) and ka == kb
        assert xa.shape == (3, 64, 64) and xa.dtype == torch.float32
        assert float(ya) == (1.0 if ka else 0.0)  # blends are fake, the crop itself is real
        kinds.add(ka)
    assert kinds == {1, 2}  # sbi_prob + cross_blend_prob = 1: every sample is a blend
    a.set_epoch(1)
    assert not torch.equal(a[(0, real)][0], b[(0, real)][0])


def test_cli_train_with_overrides_and_errors(prepared_corpus: Path, tmp_path: Path,
                                             torch_one_thread: None) -> None:
    from typer.testing import CliRunner

    from tests.training.conftest import train_cli

    app = train_cli()
    cfg = tiny_config(prepared_corpus, tmp_path / "cli_run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(path), "--set", "export=false", "--set", "max_steps_per_epoch=1",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert Path(res.stdout.strip().splitlines()[-1]) == tmp_path / "cli_run"
    assert yaml.safe_load((tmp_path / "cli_run" / "config.yaml").read_text())["export"] is False
    res = runner.invoke(app, ["train", str(path), "--set", "epochs=zero"])
    assert res.exit_code == 2 and "epochs" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot read config" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg.to_dict(), "out": str(tmp_path / "x"),
                                   "data": [{"path": str(tmp_path)}]}))
    res = runner.invoke(app, ["train", str(bad)])
    assert res.exit_code == 2 and "not a prepared folder" in res.output


def test_config_validation_and_overrides(tmp_path: Path) -> None:
    from training.config import config_from_dict, parse_overrides

    assert parse_overrides(["a.b=3", "c=[1, 2]", "d=null"]) == {"a": {"b": 3}, "c": [1, 2], "d": None}
    cfg = config_from_dict({"data": ["prep"]}, ["augment.jpeg_prob=0.9", "validation.holdout_methods=[x]"])
    assert cfg.augment.jpeg_prob == 0.9 and cfg.validation.holdout_methods == ["x"]
    assert cfg.data[0].path == "prep" and cfg.data[0].weight == 1.0
    for bad in ({"data": []}, {"data": ["p"], "nope": 1},
                {"data": ["p"], "sbi_prob": 0.8, "cross_blend_prob": 0.5},
                {"data": ["p"], "amp": "fp8"}, {"data": ["p"], "epochs": 1.5}, {"data": ["p"], "augment": 3},
                {"data": ["p"], "augment": {"jpeg_quality_min": 99, "jpeg_quality_max": 10}}):
        with pytest.raises(ConfigError):
            config_from_dict(bad)
    with pytest.raises(ConfigError):
        config_from_dict({"data": ["p"]}, ["novalue"])
    # list items by index (as lite0_cpu_quick.yaml documents), a bare path becoming a section
    two = {"data": ["p", {"path": "q", "weight": 2}]}
    cfg = config_from_dict(two, ["data.0.path=mine", "data.1.weight=3"])
    assert [(d.path, d.weight) for d in cfg.data] == [("mine", 1.0), ("q", 3.0)]
    for bad in (["data.2.path=x"], ["data.x.path=x"], ["epochs.1=2"], ["validation.max_items=0"],
                ["samples_per_epoch=-5"]):
        with pytest.raises(ConfigError):
            config_from_dict({"data": ["p"]}, bad)
    # relative data paths resolve against the config file
    (tmp_path / "prep").mkdir()
    (tmp_path / "c.yaml").write_text("data: [prep]\n")
    assert load_config(tmp_path / "c.yaml").data[0].path == str(tmp_path / "prep")


def test_warmup_cosine_schedule() -> None:
    s = WarmupCosine(total=100, warmup=10, min_ratio=0.01)
    assert s(0) < s(5) < s(9) <= 1.0
    assert s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.01 + 0.99 * 0.5, abs=1e-6)
    assert s(100) == pytest.approx(0.01)


def test_sampling_weights_balance_reals_and_fakes(prepared_corpus: Path, tmp_path: Path) -> None:
    from training.data import Sources, sampling_weights, synthetic_prob

    sources = Sources([prepared_corpus])
    idx = list(range(len(sources.records)))
    for p, q in ((0.2, 0.05), (0.3, 0.1), (0.0, 0.0)):
        cfg = tiny_config(prepared_corpus, tmp_path / "w", sbi_prob=p, cross_blend_prob=q)
        w = sampling_weights(sources.records, idx, cfg)
        assert w.sum() == pytest.approx(1.0) and (w > 0).all()
        fake = sum(w[k] * (1.0 if sources.records[i].label else synthetic_prob(sources.records[i], cfg))
                   for k, i in enumerate(idx))
        assert fake == pytest.approx(0.5)


def test_cuda_request_without_cuda_is_a_clear_error(prepared_corpus: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = tiny_config(prepared_corpus, tmp_path / "c", device="cuda")
    with pytest.raises(TrainError, match="CUDA"):
        train_main(cfg, progress=False)


def test_copy_of_run_exports_from_checkpoint_path(trained_run: Path, tmp_path: Path) -> None:
    # a checkpoint file (not the folder) is accepted and the card says which one was used
    from training.release import resolve_run

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert resolve_run(run) == (run, run / BEST)
    assert resolve_run(run / LAST) == (run, run / LAST)
    (run / "config.yaml").unlink()
    with pytest.raises(TrainError, match="config.yaml"):
        resolve_run(run)


def test_cli_train_pretrained_file(prepared_corpus: Path, tmp_path: Path, torch_one_thread: None) -> None:
    """`--pretrained-file` initialises from local weights and is recorded in the run's config."""
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from tests.training.conftest import train_cli
    from training.models import create_backbone

    weights = tmp_path / "lite0.safetensors"
    net = create_backbone("tf_efficientnet_lite0", 1, "imagenet-package")
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("classifier")},
              str(weights))
    cfg = tiny_config(prepared_corpus, tmp_path / "pre_run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    runner = CliRunner()
    res = runner.invoke(app := train_cli(), ["train", str(path), "--pretrained-file", str(weights),
                                             "--set", "export=false", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "pre_run" / "config.yaml").read_text())["pretrained"] == str(weights)
    res = runner.invoke(app, ["train", str(path), "--pretrained-file", str(tmp_path / "none.pth")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_init_from_fine_tunes_every_tensor_of_a_run(trained_run: Path, prepared_corpus: Path,
                                                     tmp_path: Path) -> None:
    """`init_from` starts from a run's checkpoint, classifier included (lr 1e-9: almost nothing
    moves)."""
    from safetensors.torch import save_file

    from training.models import read_state_dict

    tensors = dict(read_state_dict(trained_run / BEST))
    tensors["classifier.weight"] = torch.full_like(tensors["classifier.weight"], 0.123)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(init := tmp_path / "init.safetensors"))
    cfg = tiny_config(prepared_corpus, tmp_path / "ft", init_from=str(init), lr=1e-9, export=False)
    after = read_state_dict(train_main(cfg, progress=False) / BEST)
    assert torch.allclose(after["classifier.weight"], tensors["classifier.weight"], atol=1e-6)
    assert torch.allclose(after["conv_stem.weight"], tensors["conv_stem.weight"], atol=1e-6)
    with pytest.raises(ConfigError, match="not found"):
        train_main(tiny_config(prepared_corpus, tmp_path / "bad", init_from=str(tmp_path / "no.pt")),
                   progress=False)
