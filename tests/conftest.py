"""Fixtures shared by every test package: real photos, a real tiny ONNX model, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACETRUST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $FACETRUST_SHARED_DATA); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FACETRUST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (one real face), RGB uint8 512x512."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def make_tiny_model(
    path: Path, *, input_size: int = 64, seed: int = 0, version: str = "0.0.1", min_face_size: int = 20
) -> Path:
    """Export a small random CNN with a valid model card to ``path`` (a real ONNX model)."""
    import torch

    from detector.card import Calibration, ModelCard
    from training.export import export_classifier

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 1),
    )
    card = ModelCard(
        name="tiny-test",
        version=version,
        architecture="tiny-cnn",
        input_size=input_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_margin=1.3,
        min_face_size=min_face_size,
        calibration=Calibration("temperature", temperature=0.05),
        threshold_balanced=0.5,
        threshold_strict=0.9,
        training_data="none (random weights, tests only)",
        licence="Apache-2.0",
    )
    export_classifier(net, card, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny, real ONNX classifier with an embedded model card."""
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")
