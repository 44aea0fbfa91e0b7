"""The fake-face classifier: one onnxruntime session, its model card, batched scoring.

A model is refused unless it carries a valid :class:`~detector.card.ModelCard` and its
input/output shapes agree with the card. Scores are raw logits (positive = fake) turned
into calibrated probabilities with the card's calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.card import ModelCard, ModelCardError, card_from_session
from detector.crops import to_model_input

DEFAULT_MODEL_NAME = "facetrust_default.onnx"
#: Faces per onnxruntime call; larger batches are split into chunks of this size. It bounds the
#: activation memory (measured for an EfficientNet-lite0 at 160 px: ~+95 MB RSS at 16, ~+305 MB at 64;
#: on the 1080p benchmark clip, 8 instead of 16 lowered the peak by about 60 MB at the same speed).
MAX_CHUNK = 8


def default_model_path() -> Path:
    """Path of the model shipped with the package (``detector/models/facetrust_default.onnx``).

    The file may be absent (no trained model shipped yet); :func:`resolve_model_path`
    turns that into a clear error.
    """
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """``model`` as a path, or the shipped default; raises :class:`ModelCardError` if missing."""
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise ModelCardError(
                f"no default model found at {path}: pass a FaceTrust ONNX classifier "
                "with --model FILE (or model=... in Python)"
            )
        return path
    path = Path(model)
    if not path.is_file():
        raise ModelCardError(f"model file not found: {path}")
    return path


@dataclass(frozen=True)
class ScoreBatch:
    """Scores of ``N`` face crops.

    ``logits``: ``[N]`` raw fake logits; ``probabilities``: ``[N]`` calibrated fake
    probabilities; ``head_probabilities``: ``[N, K]`` sigmoid of the per-detector head
    logits when the model has heads (names in ``card.head_names``), else ``None``.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    head_probabilities: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.logits.shape[0])


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _dim_ok(dim: object, expected: int) -> bool:
    """A static ONNX dim must equal ``expected``; symbolic/unknown dims are accepted."""
    return not isinstance(dim, int) or dim == expected


class Classifier:
    """An ONNX fake-face classifier with its model card.

    ``threads``: intra-op threads (default: the CPU cores available to this process).
    Raises :class:`ModelCardError` when the file is missing, is not a loadable ONNX
    model, has no card, or its graph does not match the card.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelCardError(f"model file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads else _cpu_count()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle onnxruntime threads would spin after each call, taking the cores the face detector's
        # threads need next: measured on 2 cores, the 1 MP photo took 53 ms instead of 68 ms end to
        # end without spinning and the 1080p clip 3.8 s instead of 4.5 s.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelCardError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.card: ModelCard = card_from_session(self.session, str(self.path))
        self._check_graph()
        self._outputs = [self.card.output_name] + (
            [self.card.heads_output_name] if self.card.head_names else []
        )

    def _check_graph(self) -> None:
        card, where = self.card, self.path.name
        inputs = {i.name: i for i in self.session.get_inputs()}
        if card.input_name not in inputs:
            raise ModelCardError(
                f"{where}: card input {card.input_name!r} not in the graph inputs {sorted(inputs)}"
            )
        shape = list(inputs[card.input_name].shape)
        s = card.input_size
        if len(shape) != 4 or not all(_dim_ok(d, e) for d, e in zip(shape[1:], (3, s, s), strict=True)):
            raise ModelCardError(
                f"{where}: graph input shape {shape} does not match the card's [N, 3, {s}, {s}]"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        if card.output_name not in outputs:
            raise ModelCardError(
                f"{where}: card output {card.output_name!r} not in the graph outputs {sorted(outputs)}"
            )
        if len(outputs[card.output_name].shape) != 1:
            raise ModelCardError(
                f"{where}: output {card.output_name!r} has shape {outputs[card.output_name].shape}, "
                "expected [N] logits"
            )
        if card.head_names:
            heads = outputs.get(card.heads_output_name)
            if heads is None:
                raise ModelCardError(
                    f"{where}: card lists heads {list(card.head_names)} but the graph has no "
                    f"output {card.heads_output_name!r}"
                )
            hs = list(heads.shape)
            if len(hs) != 2 or not _dim_ok(hs[1], len(card.head_names)):
                raise ModelCardError(
                    f"{where}: heads output shape {hs} does not match {len(card.head_names)} head names"
                )

    @property
    def input_size(self) -> int:
        """Side of the square crops the model takes."""
        return self.card.input_size

    def score(self, crops: np.ndarray, views: int = 1) -> ScoreBatch:
        """Score ``[N, S, S, 3]`` uint8 RGB crops (made by :func:`detector.crops.crop_face`).

        ``views > 1``: the crops come in consecutive groups of ``views`` per face (as made by
        :func:`detector.crops.crop_views`); each face's logit (and head logits) is the mean over
        its group, calibrated once, so the batch holds ``N / views`` faces. One onnxruntime call
        per batch of up to :data:`MAX_CHUNK` crops; ``N = 0`` returns empty arrays without
        running the model.
        """
        crops = np.asarray(crops)
        s, k = self.card.input_size, len(self.card.head_names)
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops [N, {s}, {s}, 3], got {crops.dtype} {crops.shape}")
        views = int(views)
        n = crops.shape[0]
        if views < 1 or n % views:
            raise ValueError(f"{n} crops cannot be split into groups of {views} views")
        logits = np.empty(n, dtype=np.float32)
        heads = np.empty((n, k), dtype=np.float32) if k else None
        for start in range(0, n, MAX_CHUNK):
            chunk = to_model_input(crops[start : start + MAX_CHUNK], self.card.mean, self.card.std)
            out = self.session.run(self._outputs, {self.card.input_name: chunk})
            m = chunk.shape[0]
            logits[start : start + m] = np.asarray(out[0], dtype=np.float32).reshape(m)
            if heads is not None:
                heads[start : start + m] = np.asarray(out[1], dtype=np.float32).reshape(m, k)
        if views > 1:
            logits = logits.reshape(n // views, views).mean(axis=1, dtype=np.float64).astype(np.float32)
            if heads is not None:
                heads = heads.reshape(n // views, views, k).mean(axis=1, dtype=np.float64).astype(np.float32)
        probabilities = np.asarray(self.card.calibration(logits), dtype=np.float64)
        head_p = None
        if heads is not None:
            head_p = 1.0 / (1.0 + np.exp(-np.clip(heads.astype(np.float64), -60.0, 60.0)))
        return ScoreBatch(logits=logits, probabilities=probabilities, head_probabilities=head_p)
