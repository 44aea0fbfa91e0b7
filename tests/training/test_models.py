"""The classifier factory: packaged ImageNet weights really load (in-order copy)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from training.models import (
    ModelError,
    create_backbone,
    create_classifier,
    load_weights,
    normalisation,
    package_weights_path,
    read_state_dict,
)

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(size: int) -> torch.Tensor:
    from skimage import data

    img = cv2.resize(data.chelsea(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return torch.from_numpy(((img - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
def test_packaged_imagenet_weights_classify_a_cat(name: str) -> None:
    model = create_backbone(name, 1000, "imagenet-package", skip_classifier=False).eval()
    with torch.no_grad():
        probs = model(_chelsea(224)).softmax(1)[0]
    assert int(probs.argmax()) in CATS
    assert float(probs[list(CATS)].sum()) > 0.8
    # and a random model does not
    rand = create_backbone(name, 1000, None).eval()
    with torch.no_grad():
        assert float(rand(_chelsea(224)).softmax(1)[0][list(CATS)].sum()) < 0.2


def test_classifier_keeps_backbone_and_replaces_head() -> None:
    sd = read_state_dict(package_weights_path("tf_efficientnet_lite0"))
    model = create_classifier("tf_efficientnet_lite0", "imagenet-package")
    own = model.state_dict()
    assert own["conv_stem.weight"].shape == sd["_conv_stem.weight"].shape
    assert torch.equal(own["conv_stem.weight"], sd["_conv_stem.weight"])
    assert torch.equal(own["bn2.running_var"], sd["_bn1.running_var"])
    assert own["classifier.weight"].shape == (1, 1280)
    out = model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1)
    assert normalisation("tf_efficientnet_lite0", "imagenet-package") == ((0.5,) * 3, (0.5,) * 3)


def test_heads_output() -> None:
    model = create_classifier("tf_efficientnet_lite0", None, num_heads=3).eval()
    fused, heads = model(torch.zeros(2, 3, 64, 64))
    assert fused.shape == (2, 1) and heads.shape == (2, 3)


def test_local_weights_by_name_and_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    src = create_classifier("tf_efficientnet_lite0", "imagenet-package")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_classifier("tf_efficientnet_lite0", path)
    key = "blocks.6.0.conv_pw.weight"
    assert torch.equal(model.state_dict()[key], src.state_dict()[key])
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, str(pth))
    again = create_classifier("tf_efficientnet_lite0", pth)
    assert torch.equal(again.state_dict()["conv_head.weight"], src.state_dict()["conv_head.weight"])


def test_weights_that_do_not_fit_are_refused(tmp_path) -> None:
    lite1 = read_state_dict(package_weights_path("tf_efficientnet_lite1"))
    model = create_backbone("tf_efficientnet_lite0", 1, None)
    with pytest.raises(ModelError):
        load_weights(model, lite1, by_name=False)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        create_classifier("tf_efficientnet_lite0", bad)
    with pytest.raises(ModelError):
        create_classifier("tf_efficientnet_lite0", tmp_path / "missing.safetensors")
    with pytest.raises(ModelError):
        create_classifier("resnet18", "imagenet-package")
    with pytest.raises(ModelError):
        create_classifier("no_such_model_xyz")
