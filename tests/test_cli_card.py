"""`facetrust card`: prints the embedded model card, exit 2 for a file without one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from detector.card import read_card


def _card(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facetrust", "card", *args], capture_output=True, text=True, timeout=120
    )


def test_card_prints_the_embedded_card(tiny_model: Path) -> None:
    proc = _card(str(tiny_model))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == read_card(str(tiny_model)).to_dict()


def test_card_refuses_a_file_without_card(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not onnx at all")
    proc = _card(str(bad))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
