"""Reader for a prepared folder (``facetrust prepare`` output), used by the trainer.

Records are the plain dicts of ``index.jsonl`` (see :mod:`training.prepare`); coordinates are
in stored-crop pixels, so ``crop_face(load_crop(r), r["box"], model_margin, model_size)`` is
serving's crop of that face.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.prepare import INDEX, META


class PreparedError(ValueError):
    """The folder is not a (complete) prepared folder, or a crop is missing."""


class PreparedIndex:
    """``index.jsonl`` + ``meta.json`` of a prepared folder.

    ``records``: every record (dict) in index order; ``meta``: the ``meta.json`` contents;
    ``margin``/``size``: the stored crops' margin and side.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / INDEX
        if not index.is_file():
            raise PreparedError(f"{self.path} is not a prepared folder (no {INDEX}); run `facetrust prepare`")
        try:
            self.meta: dict[str, Any] = json.loads((self.path / META).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PreparedError(f"{self.path / META} missing or unreadable: {exc}") from exc
        self.records: list[dict[str, Any]] = []
        with open(index, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PreparedError(f"{index}:{n}: bad JSON ({exc})") from exc
                if not isinstance(rec, dict) or "file" not in rec or "box" not in rec or "label" not in rec:
                    raise PreparedError(f"{index}:{n}: not a crop record")
                self.records.append(rec)
        self.margin = float(self.meta.get("margin", self.meta.get("settings", {}).get("margin", 0.0)))
        self.size = int(self.meta.get("size", self.meta.get("settings", {}).get("size", 0)))

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def select(
        self,
        *,
        split: str | tuple[str, ...] | None = None,
        role: str | tuple[str, ...] | None = None,
        method: str | tuple[str, ...] | None = None,
        label: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every given filter (a value or a tuple of accepted values)."""

        def ok(value: Any, want: Any) -> bool:
            return want is None or (value in want if isinstance(want, tuple) else value == want)

        return [
            r for r in self.records
            if ok(r.get("split"), split) and ok(r.get("role"), role) and ok(r.get("method"), method)
            and (label is None or int(r["label"]) == int(label))
        ]

    def crop_path(self, record: dict[str, Any]) -> Path:
        """Absolute path of a record's stored crop."""
        return self.path / str(record["file"])

    def load_crop(self, record: dict[str, Any]) -> np.ndarray:
        """The stored crop of ``record`` as ``size x size x 3`` RGB uint8."""
        path = self.crop_path(record)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise PreparedError(f"crop {path} is missing or unreadable")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def landmarks(record: dict[str, Any], n: int = 68) -> np.ndarray | None:
    """``(n, 2)`` float32 landmarks of a record (``landmarks68`` or ``landmarks5``), or None."""
    value = record.get("landmarks68" if n == 68 else "landmarks5")
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    return arr if arr.shape == (n, 2) and np.isfinite(arr).all() else None
