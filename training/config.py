"""Training configuration: a dataclass tree loaded from YAML, with ``key=value`` overrides.

``facetrust train CONFIG.yaml --set epochs=2 --set augment.jpeg_prob=0.8`` loads the
file, applies the overrides (values parsed as YAML), validates, and the trainer saves
the resolved config as ``config.yaml`` beside its checkpoints. Unknown keys are errors.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """The training configuration is invalid."""


@dataclass
class DataSource:
    """One prepared folder (``prepare`` output) and its sampling weight."""

    path: str
    weight: float = 1.0


@dataclass
class AugmentConfig:
    """Real-world degradations applied identically to real and fake crops."""

    hflip_prob: float = 0.5
    color_prob: float = 0.5
    brightness: float = 0.2  # +- fraction
    contrast: float = 0.2  # +- fraction
    saturation: float = 0.2  # +- fraction
    hue: float = 0.02  # +- fraction of the hue circle
    downscale_prob: float = 0.3
    downscale_min: float = 0.4  # smallest scale factor of the down-up resize
    blur_prob: float = 0.2
    blur_sigma_max: float = 1.5
    noise_prob: float = 0.2
    noise_std_max: float = 8.0  # in 0..255 units
    jpeg_prob: float = 0.6
    jpeg_quality_min: int = 30
    jpeg_quality_max: int = 95
    # Face-box jitter before THE crop (train only): the detector's box moves by a few pixels
    # from frame to frame and between pipelines, and the score must not follow it.
    box_shift: float = 0.0  # max centre shift, fraction of the box's longer side (x and y)
    box_scale: float = 0.0  # max |log| of the box size factor
    # Extra loss of detail for samples made from a real picture (reals and their blends), not for
    # labelled generated fakes: generated clips are often softer than real footage, so without it
    # "blurry / low resolution" stays a cue for "fake" even when both get the same chain below.
    real_source_degrade_prob: float = 0.0
    real_source_scale_min: float = 0.25  # down-up scale drawn from [min, max] (else a blur)
    real_source_scale_max: float = 0.6
    real_source_blur_max: float = 2.0  # Gaussian sigma drawn from [0.8, max]
    # Picture edges near the face (train only; :func:`training.augment.cut_edges`): THE crop pads
    # with black what lies outside the picture. Nearly every UTKFace and web photo crop has such a
    # black border (tight face photos), almost no generated fake has one, so without this a black
    # border reads as "real" (MODEL_CARD.md, "Black borders"). With probability ``edge_prob`` (every
    # sample) or ``edge_prob_labelled_fake`` (labelled generated fakes, which lack the border), each
    # side of the picture independently (p = ``edge_side_prob``) is moved to ``edge_min..edge_max``
    # x the box's longer side beyond that side of the face box (negative: into the face, cutting it).
    edge_prob: float = 0.0
    edge_prob_labelled_fake: float = 0.0
    edge_side_prob: float = 0.5
    edge_min: float = -0.12
    edge_max: float = 0.15


@dataclass
class ValidationConfig:
    """How the group-disjoint validation set is formed."""

    fraction: float = 0.1  # of groups, by hash, when the index has no split field
    holdout_methods: list[str] = field(default_factory=list)  # fake methods never trained on
    synthetic_fakes: bool = True  # add one SBI twin per validation real with landmarks
    max_items: int | None = None  # cap (seeded subset) to keep validation cheap


@dataclass
class TrainConfig:
    """Everything ``facetrust train`` needs; see ``training/configs/*.yaml``."""

    data: list[DataSource] = field(default_factory=list)
    out: str = "runs/facetrust"
    name: str = "facetrust-effnet-lite0"
    version: str = "0.1.0"
    model: str = "tf_efficientnet_lite0"
    pretrained: str | None = "imagenet-package"  # or a local weights file, or null
    # Fine-tune: a run's checkpoint (e.g. runs/default/best.safetensors) whose every tensor,
    # classifier included, replaces the initial weights; ``pretrained`` still sets mean/std.
    init_from: str | None = None
    input_size: int = 192
    crop_margin: float = 1.3  # the crop the model sees; goes into the card
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    samples_per_epoch: int | None = None  # default: number of training records
    max_steps_per_epoch: int | None = None  # cap (smoke tests, quick checks)
    lr: float = 3e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 5.0
    amp: str = "auto"  # auto (bf16 on CUDA if supported, else fp16; off on CPU) | bf16 | fp16 | off
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 2
    cpu_threads: int | None = None  # torch intra-op threads on CPU (default: torch's choice)
    sbi_prob: float = 0.4  # a real crop becomes its self-blended twin
    cross_blend_prob: float = 0.1  # a real crop gets another identity's face blended in
    blend_from_5_points: bool = True  # blend reals without 68 landmarks via a 5-point face outline
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    calibration: str = "auto"  # auto | temperature | isotonic | identity
    export: bool = True  # calibrate + export ONNX at the end of training
    int8: bool = False  # also try INT8 static quantisation at export
    licence: str = "research only (trained on research-only data; see training_data)"
    intended_use: str = (
        "Research and triage of face manipulation; not proof. Scores are calibrated on the "
        "validation data named in training_data and may not transfer to other sources."
    )

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` on inconsistent values; returns ``self``."""
        if not self.data:
            raise ConfigError("config needs at least one data source (data: [{path: ...}])")
        for d in self.data:
            if d.weight <= 0:
                raise ConfigError(f"data weight must be > 0 ({d.path})")
        if not (16 <= self.input_size <= 1024):
            raise ConfigError("input_size must be within 16..1024")
        if not (1.0 <= self.crop_margin <= 3.0):
            raise ConfigError("crop_margin must be within 1.0..3.0")
        for name in ("sbi_prob", "cross_blend_prob"):
            if not (0.0 <= getattr(self, name) <= 1.0):
                raise ConfigError(f"{name} must be a probability")
        if self.sbi_prob + self.cross_blend_prob > 1.0:
            raise ConfigError("sbi_prob + cross_blend_prob must be <= 1")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if self.optimizer not in ("adamw",):
            raise ConfigError(f"unsupported optimizer {self.optimizer!r} (adamw)")
        if self.scheduler not in ("cosine", "constant"):
            raise ConfigError(f"unsupported scheduler {self.scheduler!r} (cosine, constant)")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or off, not {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.calibration not in ("auto", "temperature", "isotonic", "identity"):
            raise ConfigError(f"unknown calibration {self.calibration!r}")
        if not (0.0 < self.validation.fraction < 1.0):
            raise ConfigError("validation.fraction must be in (0, 1)")
        a = self.augment
        if not (1 <= a.jpeg_quality_min <= a.jpeg_quality_max <= 100):
            raise ConfigError("augment: need 1 <= jpeg_quality_min <= jpeg_quality_max <= 100")
        if not (0.05 <= a.downscale_min <= 1.0):
            raise ConfigError("augment.downscale_min must be within 0.05..1")
        for f in dataclasses.fields(a):
            if ("_prob" in f.name) and not (0.0 <= getattr(a, f.name) <= 1.0):
                raise ConfigError(f"augment.{f.name} must be a probability")
        if not (0.05 <= a.real_source_scale_min <= a.real_source_scale_max <= 1.0):
            raise ConfigError("augment: need 0.05 <= real_source_scale_min <= real_source_scale_max <= 1")
        if not (0.8 <= a.real_source_blur_max <= 10.0):
            raise ConfigError("augment.real_source_blur_max must be within 0.8..10")
        if not (0.0 <= a.box_shift <= 0.25 and 0.0 <= a.box_scale <= 0.25):
            raise ConfigError("augment.box_shift and augment.box_scale must be within 0..0.25")
        if not (-0.3 <= a.edge_min <= a.edge_max <= 0.5):
            # measured on the longer side: further in, a narrow box's centre could be cut away
            raise ConfigError("augment: need -0.3 <= edge_min <= edge_max <= 0.5 (x the box's longer side)")
        if self.workers < 0:
            raise ConfigError("workers must be >= 0")
        if self.validation.max_items is not None and self.validation.max_items < 1:
            raise ConfigError("validation.max_items must be >= 1 (or null: no cap)")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ConfigError("samples_per_epoch must be >= 1 (or null: the whole training split)")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError("cpu_threads must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable)."""
        return dataclasses.asdict(self)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` (dataclasses, lists, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is DataSource:
            value = {"path": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``['epochs=2', 'augment.jpeg_prob=0.5']`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from exc
        _set_path(out, key.strip(), value)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``dotted`` (``a.b``; a number indexes a list, e.g. ``data.0.path``) to ``value`` in
    ``data``; a dict value is merged into a dict already there."""
    keys = dotted.split(".")
    node: Any = data
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"override {dotted!r}: {k!r} is not an index of a {len(node)}-item list")
            i = int(k)
            if last:
                node[i] = value
            else:
                if isinstance(node[i], str):  # a data source given as its path alone
                    node[i] = {"path": node[i]}
                node = node[i]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {keys[depth - 1]!r} is not a section")
        if last:
            merge = isinstance(value, dict) and isinstance(node.get(k), dict)
            node[k] = _merge(node[k], value) if merge else value
        else:
            node = node.setdefault(k, {})


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a dict plus ``key=value`` overrides."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping")
    merged = copy.deepcopy(data)
    for item in overrides or []:
        parse_overrides([item])  # the same checks and messages
        key, raw = item.split("=", 1)
        _apply_override(merged, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return _build(TrainConfig, merged).validate()


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (YAML), apply overrides, validate. Relative data paths resolve
    against the config file's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    cfg = config_from_dict(data, overrides)
    for d in cfg.data:
        p = Path(d.path).expanduser()
        if not p.is_absolute() and not p.exists() and (path.parent / p).exists():
            d.path = str((path.parent / p).resolve())
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
