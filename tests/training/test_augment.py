"""Training augmentations: face-box jitter before THE crop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.training.conftest import tiny_config
from training.augment import jitter_box
from training.config import ConfigError, config_from_dict

coords = st.floats(0, 2000, allow_nan=False)
sizes = st.floats(8, 800, allow_nan=False)
fractions = st.floats(0, 0.25, allow_nan=False)


@given(coords, coords, sizes, sizes, fractions, fractions, st.integers(0, 2**32 - 1))
def test_jitter_box_stays_within_its_bounds(x0: float, y0: float, w: float, h: float, shift: float,
                                            scale: float, seed: int) -> None:
    box = (x0, y0, x0 + w, y0 + h)
    out = jitter_box(box, shift, scale, np.random.default_rng(seed))
    side = max(w, h)
    cx, cy = (out[0] + out[2]) / 2, (out[1] + out[3]) / 2
    assert abs(cx - (x0 + w / 2)) <= shift * side + 1e-6
    assert abs(cy - (y0 + h / 2)) <= shift * side + 1e-6
    fw, fh = (out[2] - out[0]) / w, (out[3] - out[1]) / h
    assert fw == pytest.approx(fh, rel=1e-6)  # aspect ratio kept
    assert math.exp(-scale) - 1e-6 <= fw <= math.exp(scale) + 1e-6


def test_zero_jitter_is_the_box_itself() -> None:
    box = (10.0, 20.0, 110.0, 140.0)
    assert jitter_box(box, 0.0, 0.0, np.random.default_rng(0)) == pytest.approx(box)


def test_jitter_moves_boxes_by_different_amounts() -> None:
    rng = np.random.default_rng(1)
    outs = {tuple(round(v, 3) for v in jitter_box((0, 0, 100, 100), 0.05, 0.05, rng)) for _ in range(20)}
    assert len(outs) == 20


def test_box_jitter_config_is_validated() -> None:
    cfg = config_from_dict({"data": ["p"]}, ["augment.box_shift=0.04", "augment.box_scale=0.06"])
    assert (cfg.augment.box_shift, cfg.augment.box_scale) == (0.04, 0.06)
    assert config_from_dict({"data": ["p"]}).augment.box_shift == 0.0  # old configs: no jitter
    for bad in ("augment.box_shift=-0.1", "augment.box_scale=0.5"):
        with pytest.raises(ConfigError, match="box_shift"):
            config_from_dict({"data": ["p"]}, [bad])


def test_training_crops_jitter_and_validation_crops_do_not(prepared_corpus: Path, tmp_path: Path) -> None:
    from training.data import AS_IS, FaceDataset, Sources, make_splits

    off = {k: 0.0 for k in ("hflip_prob", "color_prob", "downscale_prob", "blur_prob", "noise_prob",
                            "jpeg_prob")}
    sources = Sources([prepared_corpus])

    def crops(shift: float, train: bool) -> list[torch.Tensor]:
        cfg = tiny_config(prepared_corpus, tmp_path / "r", sbi_prob=0.0, cross_blend_prob=0.0,
                          augment=off | {"box_shift": shift})
        pool = make_splits(sources.records, cfg).train
        if train:
            ds = FaceDataset(sources, cfg, (0.5,) * 3, (0.5,) * 3, train=True, pool=pool)
            return [ds[(slot, pool[0])][0] for slot in range(4)]
        ds = FaceDataset(sources, cfg, (0.5,) * 3, (0.5,) * 3, train=False, items=[(pool[0], AS_IS)] * 4)
        return [ds[k][0] for k in range(4)]

    still = crops(0.0, True)
    assert all(torch.equal(still[0], x) for x in still)  # no augmentation at all: one crop
    moved = crops(0.1, True)
    assert not all(torch.equal(moved[0], x) for x in moved)
    assert all(torch.equal(a, still[0]) for a in crops(0.1, False))  # validation crops never move


def _sharpness(img: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_lose_detail_blurs_or_shrinks_and_keeps_the_shape() -> None:
    from skimage import data

    from training.augment import lose_detail
    from training.config import AugmentConfig

    img = np.ascontiguousarray(data.astronaut()[:160, 180:340])
    cfg = AugmentConfig(real_source_degrade_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(8):
        out = lose_detail(img, cfg, rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert _sharpness(out) < 0.6 * _sharpness(img)


def test_real_source_detail_loss_is_validated() -> None:
    for bad in (["augment.real_source_scale_min=0.7", "augment.real_source_scale_max=0.5"],
                ["augment.real_source_blur_max=0.5"], ["augment.real_source_degrade_prob=1.5"]):
        with pytest.raises(ConfigError):
            config_from_dict({"data": ["p"]}, bad)


def test_only_crops_of_real_pictures_lose_detail(prepared_corpus: Path, tmp_path: Path) -> None:
    """Reals lose detail; labelled fakes (here the corpus' stored fakes) are left as they are."""
    from training.data import FaceDataset, Sources, make_splits

    off = {k: 0.0 for k in ("hflip_prob", "color_prob", "downscale_prob", "blur_prob", "noise_prob",
                            "jpeg_prob")}
    sources = Sources([prepared_corpus])

    def first_crops(prob: float) -> dict[int, torch.Tensor]:
        cfg = tiny_config(prepared_corpus, tmp_path / "r", sbi_prob=0.0, cross_blend_prob=0.0,
                          augment=off | {"real_source_degrade_prob": prob})
        pool = make_splits(sources.records, cfg).train
        ds = FaceDataset(sources, cfg, (0.5,) * 3, (0.5,) * 3, train=True, pool=pool)
        picked = {lab: next(i for i in pool if sources.records[i].label == lab) for lab in (0, 1)}
        return {lab: ds[(0, i)][0] for lab, i in picked.items()}

    plain, damaged = first_crops(0.0), first_crops(1.0)
    assert torch.equal(plain[1], damaged[1])  # a labelled fake is untouched
    assert not torch.equal(plain[0], damaged[0])
    assert damaged[0].diff(dim=2).abs().mean() < plain[0].diff(dim=2).abs().mean()  # less detail


@given(st.integers(0, 2**32 - 1), st.floats(-0.3, 0.0), st.floats(0.0, 0.3))
def test_cut_edges_blackens_beyond_moved_picture_sides(seed: int, lo: float, hi: float) -> None:
    from training.augment import cut_edges
    from training.config import AugmentConfig

    img = np.full((120, 100, 3), 200, np.uint8)
    box = (30.0, 20.0, 70.0, 80.0)  # longer side 60
    cfg = AugmentConfig(edge_side_prob=0.5, edge_min=lo, edge_max=hi)
    out = cut_edges(img, box, cfg, np.random.default_rng(seed))
    assert out.shape == img.shape and img.min() == 200  # a copy; the input is untouched
    assert ((out == 0) | (out == 200)).all()
    kept = (out == 200).all(axis=2)
    rows, cols = np.nonzero(kept.any(axis=1))[0], np.nonzero(kept.any(axis=0))[0]
    assert len(rows) and len(cols)  # the picture never vanishes: the box centre is kept
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    inner = np.zeros_like(kept)
    inner[r0:r1, c0:c1] = True
    assert (kept == inner).all()  # what stays is one rectangle: the picture, its sides moved
    # each side stays where it was or ends between lo and hi x 60 px outside the box's side
    for edge, at, sign, limit in ((r0, 20, -1, 0), (r1, 80, 1, 120), (c0, 30, -1, 0), (c1, 70, 1, 100)):
        outward = sign * (edge - at)
        assert edge == limit or lo * 60 - 1 <= outward <= hi * 60 + 1


def test_cut_edges_moves_at_least_one_side() -> None:
    from training.augment import cut_edges
    from training.config import AugmentConfig

    img = np.full((200, 200, 3), 90, np.uint8)
    cfg = AugmentConfig(edge_side_prob=0.0, edge_min=0.05, edge_max=0.05)
    for seed in range(8):
        out = cut_edges(img, (80.0, 80.0, 120.0, 120.0), cfg, np.random.default_rng(seed))
        assert (out == 0).all(axis=2).sum() > 0  # one side moved to 2 px outside the box


def test_edge_config_is_validated() -> None:
    cfg = config_from_dict({"data": ["p"]}, ["augment.edge_prob=0.3", "augment.edge_prob_labelled_fake=0.75"])
    assert (cfg.augment.edge_prob, cfg.augment.edge_prob_labelled_fake) == (0.3, 0.75)
    assert config_from_dict({"data": ["p"]}).augment.edge_prob == 0.0  # old configs: no edges
    for bad in (["augment.edge_min=0.2", "augment.edge_max=0.1"], ["augment.edge_max=0.9"],
                ["augment.edge_min=-0.4"],
                ["augment.edge_prob_labelled_fake=2"]):
        with pytest.raises(ConfigError):
            config_from_dict({"data": ["p"]}, bad)


def test_labelled_fakes_get_picture_edges_more_often(prepared_corpus: Path, tmp_path: Path) -> None:
    """With edge_prob 0 and edge_prob_labelled_fake 1 only the labelled fake's crop changes, and
    what changed became black."""
    from training.data import FaceDataset, Sources, make_splits

    off = {k: 0.0 for k in ("hflip_prob", "color_prob", "downscale_prob", "blur_prob", "noise_prob",
                            "jpeg_prob")}
    sources = Sources([prepared_corpus])

    def first_crops(prob_fake: float) -> dict[int, torch.Tensor]:
        cfg = tiny_config(prepared_corpus, tmp_path / "r", sbi_prob=0.0, cross_blend_prob=0.0,
                          augment=off | {"edge_prob_labelled_fake": prob_fake, "edge_side_prob": 1.0,
                                         "edge_min": -0.05, "edge_max": -0.05})
        pool = make_splits(sources.records, cfg).train
        ds = FaceDataset(sources, cfg, (0.5,) * 3, (0.5,) * 3, train=True, pool=pool)
        picked = {lab: next(i for i in pool if sources.records[i].label == lab) for lab in (0, 1)}
        return {lab: ds[(0, i)][0] for lab, i in picked.items()}

    plain, edged = first_crops(0.0), first_crops(1.0)
    assert torch.equal(plain[0], edged[0])  # the real crop: edge_prob 0, no draw, unchanged
    changed = (plain[1] != edged[1]).any(dim=0)
    assert changed.any()
    # black (-1 after mean = std = 0.5), but for the resize's blend along the new picture edge
    assert (edged[1][:, changed] <= plain[1][:, changed] + 1e-6).all()
    assert (edged[1][:, changed] == -1.0).float().mean() > 0.8
    # all four sides cut 5% into the face box: the crop's border rows and columns are black
    black = torch.tensor(-1.0)
    assert torch.allclose(edged[1][:, 0, :], black) and torch.allclose(edged[1][:, :, -1], black)


def test_card_training_data_names_the_augmentations_and_the_start(prepared_corpus: Path,
                                                                  tmp_path: Path) -> None:
    """The card's training_data paragraph says what a fine-tune started from and which
    label-dependent augmentations it used; a plain run's paragraph does not."""
    from training.release import training_data_summary
    from training.train import load_data

    plain = tiny_config(prepared_corpus, tmp_path / "a")
    text = training_data_summary(plain, load_data(plain))
    assert "Fine-tuned" not in text and "Picture edges" not in text
    tuned = tiny_config(prepared_corpus, tmp_path / "b", init_from=str(tmp_path / "a" / "best.safetensors"),
                        augment={"edge_prob": 0.3, "edge_prob_labelled_fake": 0.75})
    text = training_data_summary(tuned, load_data(tuned))
    assert "Picture edges near the face (black beyond): p=0.3, labelled fakes p=0.75." in text
    assert text.endswith(f"Fine-tuned from every tensor of {tmp_path / 'a' / 'best.safetensors'}.")
