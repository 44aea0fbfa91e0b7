"""Fixtures of the training tests: a tiny real-photo corpus, prepared, trained and exported once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from tests.training.corpus import make_corpus


@pytest.fixture(scope="session")
def face_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(dataset card path, corpus root)`` of :mod:`tests.training.corpus`."""
    root = tmp_path_factory.mktemp("corpus") / "tiny_faces"
    card = make_corpus(root)
    return card, root


@pytest.fixture(scope="session")
def prepared_corpus(face_corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus through ``prepare_main`` (2 frames, 128 px crops, margin 2)."""
    from training.prepare import prepare_main

    card, root = face_corpus
    out = tmp_path_factory.mktemp("prepared") / "tiny"
    meta = prepare_main(card, root, out, frames=2, size=128, margin=2.0, workers=1, progress=False)
    assert meta["counts"]["crops"] >= 10
    return out


def train_cli() -> typer.Typer:
    """A typer app with only the training subcommands (prepare, train, export, evaluate)."""
    from facetrust import _train

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Training commands under test."""

    _train.register(app)
    return app


def tiny_config(prepared: Path, out: Path, **extra: object):
    """A seconds-long CPU config: lite0 at 64 px, 2 steps of 8."""
    from training.config import config_from_dict

    data = {
        "out": str(out),
        "data": [{"path": str(prepared)}],
        "model": "tf_efficientnet_lite0",
        "pretrained": "imagenet-package",
        "input_size": 64,
        "batch_size": 8,
        "epochs": 1,
        "samples_per_epoch": 16,
        "max_steps_per_epoch": 2,
        "workers": 0,
        "device": "cpu",
        "name": "facetrust-test",
        "version": "0.0.1-test",
    }
    data.update(extra)
    return config_from_dict(data)


@pytest.fixture(scope="session")
def torch_one_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine OpenMP spinning makes 2 threads slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_run(prepared_corpus: Path, tmp_path_factory: pytest.TempPathFactory,
                torch_one_thread: None) -> Path:
    """A run trained for 2 steps and exported (``model.onnx`` in the run folder)."""
    from training.train import train_main

    run = tmp_path_factory.mktemp("runs") / "smoke"
    cfg = tiny_config(prepared_corpus, run, validation={"holdout_methods": ["sbi_photo"]})
    return train_main(cfg, progress=False)
