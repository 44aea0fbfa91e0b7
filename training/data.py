"""Training and validation samples over prepared face crops (``facetrust prepare`` output).

Each sample is built the same way:

1. the stored crop of a record (``PreparedIndex.load_crop``);
2. for a real record, with probability ``sbi_prob`` its **self-blended** twin
   (:func:`training.blend.self_blend`) or with probability ``cross_blend_prob`` another
   identity's face **blended** onto it (:func:`training.blend.cross_blend`), label 1;
   labelled fakes from the index keep label 1;
3. THE crop, :func:`detector.crops.crop_face` with the card's margin and input size,
   around the record's face box (exactly what serving does);
4. for training, the real-world degradations of :mod:`training.augment`, the same for
   reals and fakes;
5. the card's normalisation (:func:`detector.crops.to_model_input`).

Randomness comes only from ``numpy.random.default_rng([seed, epoch, slot])``, so a
sample depends on (seed, epoch, position in the epoch), not on workers or processes.

Balance: :func:`sampling_weights` gives real and labelled-fake records masses such that,
in expectation, half of every batch is fake (real records turned into blends count as
fakes). Sources are mixed by their configured weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detector.crops import crop_face, to_model_input
from training.augment import augment, cut_edges, jitter_box, lose_detail
from training.cards import hash_unit
from training.config import TrainConfig

log = logging.getLogger(__name__)

#: Sample kinds (the third element of a batch): as stored, self-blended, cross-blended.
AS_IS, SBI, CROSS = 0, 1, 2
KIND_METHOD = {SBI: "sbi", CROSS: "cross_blend"}
_VAL_EPOCH = 2**31 - 1  # rng stream of validation samples (never a training epoch)


@dataclass(frozen=True)
class Rec:
    """A record of one prepared source (``source`` indexes the list of sources)."""

    source: int
    data: dict[str, Any]

    @property
    def label(self) -> int:
        return int(self.data["label"])

    @property
    def method(self) -> str:
        return str(self.data.get("method") or ("fake" if self.label else "real"))

    @property
    def group(self) -> str:
        return str(self.data.get("group") or self.data.get("id") or self.data.get("file"))

    @property
    def lm68(self) -> np.ndarray | None:
        """68 iBUG landmarks in stored-crop pixels, or None."""
        return _points(self.data.get("landmarks68"), 68)

    @property
    def lm5(self) -> np.ndarray | None:
        """MTCNN's 5 landmarks in stored-crop pixels, or None."""
        return _points(self.data.get("landmarks5"), 5)

    def blend_points(self, allow_5: bool = True, prefer_68: bool = True) -> np.ndarray | None:
        """Points whose hull bounds a blend: the 68 landmarks, else (``allow_5``) the coarse
        face outline from the 5 landmarks (:func:`training.blend.face_points_from_5`)."""
        lm = self.lm68 if prefer_68 else None
        if lm is not None or not allow_5:
            return lm
        lm5 = self.lm5
        if lm5 is None:
            return None
        from training.blend import face_points_from_5

        return face_points_from_5(lm5).astype(np.float32)


def _points(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (n, 2) or not np.isfinite(arr).all():
        return None
    return arr


class Sources:
    """The prepared folders of a config, opened once: records and crop loading."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        from training.prepared import PreparedIndex

        self.paths = [Path(p) for p in paths]
        self.indexes = [PreparedIndex(p) for p in self.paths]
        self.records: list[Rec] = [
            Rec(i, dict(r)) for i, idx in enumerate(self.indexes) for r in _index_records(idx)
        ]

    def load(self, rec: Rec) -> np.ndarray:
        """The stored RGB uint8 crop of ``rec``."""
        return self.indexes[rec.source].load_crop(rec.data)

    def meta(self) -> list[dict[str, Any]]:
        """Each source's ``meta.json`` contents (empty dict when absent)."""
        return [dict(getattr(idx, "meta", {}) or {}) for idx in self.indexes]


def _index_records(index: Any) -> list[dict[str, Any]]:
    recs = getattr(index, "records", None)
    if recs is None:
        recs = list(index)
    return list(recs)


# -- splits -----------------------------------------------------------------------------
def split_of(rec: Rec, fraction: float, seed: int) -> str:
    """``train``/``val`` from the record's split field, or by hashing its group.

    Records whose index split is anything else (``test``, ``dev``, ``excluded``) return
    that value and are used for neither training nor validation.
    """
    s = rec.data.get("split")
    if s:
        return str(s)
    return "val" if hash_unit(f"facetrust-val:{seed}:{rec.group}") < fraction else "train"


@dataclass
class Splits:
    """Record indices of the training set, the validation set and the held-out methods."""

    train: list[int]
    val: list[int]
    holdout: list[int]


def make_splits(records: Sequence[Rec], cfg: TrainConfig) -> Splits:
    """Group-disjoint train/val split; records of ``validation.holdout_methods`` (any label)
    never train and form the held-out set (their train- and val-split records)."""
    holdout_methods = set(cfg.validation.holdout_methods)
    train, val, hold = [], [], []
    groups_by_split: dict[str, set[str]] = {"train": set(), "val": set()}
    for i, r in enumerate(records):
        s = split_of(r, cfg.validation.fraction, cfg.seed)
        if s not in ("train", "val"):
            continue
        if r.method in holdout_methods:
            hold.append(i)
            continue
        (train if s == "train" else val).append(i)
        groups_by_split[s].add(r.group)
    shared = groups_by_split["train"] & groups_by_split["val"]
    if shared:
        # An index with explicit splits that are not group-disjoint: keep validation honest.
        log.warning("%d groups appear in both train and val splits; dropped from training", len(shared))
        train = [i for i in train if records[i].group not in shared]
    return Splits(train, val, hold)


# -- sampling ---------------------------------------------------------------------------
def can_blend(rec: Rec, cfg: TrainConfig) -> bool:
    """A real record with landmarks a blend can use (68, or 5 if ``blend_from_5_points``)."""
    if rec.label != 0:
        return False
    return rec.lm68 is not None or (cfg.blend_from_5_points and rec.lm5 is not None)


def synthetic_prob(rec: Rec, cfg: TrainConfig) -> float:
    """Probability that a training sample of ``rec`` is a blend (0 for fakes and reals
    without usable landmarks)."""
    if not can_blend(rec, cfg):
        return 0.0
    return cfg.sbi_prob + cfg.cross_blend_prob


def sampling_weights(records: Sequence[Rec], idx: Sequence[int], cfg: TrainConfig) -> np.ndarray:
    """Per-record sampling probabilities (sum 1) over ``idx``.

    Within a class, each source gets mass proportional to its ``weight`` and its records
    share it uniformly. Across classes, reals get mass ``M`` with
    ``M * (1 - s) = 1/2`` (``s`` = mean blend probability of the sampled reals) so that
    half the samples are fake in expectation; with no labelled fakes, ``M = 1``; when
    ``s >= 1/2`` and labelled fakes exist, ``M = 1/2`` (more than half fakes).
    """
    src_w = [d.weight for d in cfg.data]
    labels = np.array([records[i].label for i in idx], dtype=np.int64)
    sources = np.array([records[i].source for i in idx], dtype=np.int64)
    w = np.zeros(len(idx), dtype=np.float64)
    for cls in (0, 1):
        in_cls = labels == cls
        present = sorted(set(sources[in_cls].tolist()))
        total = sum(src_w[s] for s in present)
        for s in present:
            sel = in_cls & (sources == s)
            w[sel] = src_w[s] / total / sel.sum()
    real, fake = labels == 0, labels == 1
    if not real.any():
        return w / w.sum()
    if not fake.any():
        return w
    s_bar = float(sum(w[k] * synthetic_prob(records[i], cfg) for k, i in enumerate(idx) if real[k]))
    if s_bar >= 0.5:
        log.warning("blends alone make %.0f%% of the real samples fake: with labelled fakes more than half "
                    "of each batch is fake; lower sbi_prob + cross_blend_prob (e.g. 0.3) to balance",
                    100 * s_bar)
    m = 0.5 / (1.0 - s_bar) if s_bar < 0.5 else 0.5
    w[real] *= m
    w[fake] *= 1.0 - m
    return w / w.sum()


class EpochSampler(Sampler):
    """Draws ``num_samples`` records (with replacement, by ``weights``) per epoch, seeded by
    (seed, epoch); yields ``(slot, record)`` pairs, slot = position in the epoch.

    With ``world > 1`` each rank takes every ``world``-th slot (a distributed sampler:
    equal counts per rank, no overlap).
    """

    def __init__(self, idx: Sequence[int], weights: np.ndarray, num_samples: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.idx = np.asarray(idx, dtype=np.int64)
        self.p = np.asarray(weights, dtype=np.float64)
        self.num_samples = int(num_samples)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples // self.world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7919])
        draw = rng.choice(self.idx.size, size=self.num_samples, replace=True, p=self.p)
        for slot in range(self.rank, len(self) * self.world, self.world):
            yield slot, int(self.idx[draw[slot]])


# -- samples ----------------------------------------------------------------------------
class FaceDataset(Dataset):
    """Samples of a :class:`Sources`.

    Training (``train=True``): keys are ``(slot, record)`` from :class:`EpochSampler`; the
    kind (as stored / SBI / cross-blend) is drawn per sample and the crop augmented.
    Validation (``train=False``): ``items`` fixes ``(record, kind)`` per key, no
    augmentation. Each sample is ``(x [3,S,S] float32, label float32, record int, kind int)``.
    """

    def __init__(self, sources: Sources, cfg: TrainConfig, mean: Sequence[float], std: Sequence[float],
                 *, train: bool, pool: Sequence[int] = (), items: Sequence[tuple[int, int]] = ()) -> None:
        self.sources = sources
        self.cfg = cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.train = train
        self.items = list(items)
        self.epoch = 0
        # partners for cross-identity blends: reals with usable landmarks
        self.partners = np.array([i for i in pool if can_blend(sources.records[i], cfg)], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Seed stream of the next training epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _kind(self, rec: Rec, rng: np.random.Generator) -> int:
        if not can_blend(rec, self.cfg):
            return AS_IS
        u = rng.random()
        if u < self.cfg.sbi_prob:
            return SBI
        if u < self.cfg.sbi_prob + self.cfg.cross_blend_prob:
            return CROSS if self.partners.size > 1 else SBI
        return AS_IS

    def _partner(self, i: int, rng: np.random.Generator) -> int:
        group = self.sources.records[i].group
        j = i
        for _ in range(8):
            j = int(self.partners[rng.integers(self.partners.size)])
            if self.sources.records[j].group != group:
                break
        return j

    def sample(self, i: int, kind: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
        """``(crop uint8 [S,S,3], label, kind)`` for record ``i``; a blend that fails
        (degenerate landmarks) falls back to the real crop, label 0."""
        from training import blend

        rec = self.sources.records[i]
        img = self.sources.load(rec)
        label = rec.label
        if kind != AS_IS:
            allow_5 = self.cfg.blend_from_5_points
            try:
                if kind == SBI:
                    img = blend.self_blend(img, rec.blend_points(allow_5), rng)[0]
                else:
                    other = self.sources.records[self._partner(i, rng)]
                    if rec.lm68 is not None and other.lm68 is not None:
                        tp, sp = rec.lm68, other.lm68
                    else:  # both as coarse 5-point outlines (same number of points)
                        tp, sp = rec.blend_points(allow_5, prefer_68=False), other.blend_points(
                            allow_5, prefer_68=False)
                    img = blend.cross_blend(img, tp, self.sources.load(other), sp, rng)[0]
                label = 1
            except Exception as exc:  # noqa: BLE001 - a failed blend must not stop training
                log.debug("blend of %s failed (%s); using the real crop", rec.data.get("id"), exc)
                kind, label = AS_IS, rec.label
        box = rec.data["box"]
        a = self.cfg.augment
        if self.train and (a.box_shift > 0 or a.box_scale > 0):
            box = jitter_box(box, a.box_shift, a.box_scale, rng)
        if self.train:
            p_edge = a.edge_prob_labelled_fake if rec.label == 1 else a.edge_prob
            if p_edge > 0 and rng.random() < p_edge:  # no draw when off: old runs reproduce
                img = cut_edges(img, box, a, rng)
        crop = crop_face(img, box, self.cfg.crop_margin, self.cfg.input_size)
        if self.train:
            p_lose = a.real_source_degrade_prob if rec.label == 0 else 0.0
            if p_lose > 0 and rng.random() < p_lose:  # no draw when off: old runs reproduce
                crop = lose_detail(crop, a, rng)
            crop = augment(crop, self.cfg.augment, rng)
        return crop, label, kind

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        if self.train:
            slot, i = key
            rng = np.random.default_rng([self.cfg.seed, self.epoch, int(slot)])
            kind = self._kind(self.sources.records[i], rng)
        else:
            i, kind = self.items[key]
            rng = np.random.default_rng([self.cfg.seed, _VAL_EPOCH, int(key)])
        crop, label, kind = self.sample(i, kind, rng)
        x = torch.from_numpy(to_model_input(crop[None], self.mean, self.std)[0])
        return x, torch.tensor(float(label)), int(i), int(kind)


def validation_items(records: Sequence[Rec], idx: Sequence[int], cfg: TrainConfig,
                     synthetic: bool | None = None) -> list[tuple[int, int]]:
    """``(record, kind)`` pairs of a validation set: every record as stored, plus one SBI
    twin per real with landmarks (when enabled); a seeded subset if ``max_items`` is set."""
    synthetic = cfg.validation.synthetic_fakes if synthetic is None else synthetic
    items = [(i, AS_IS) for i in idx]
    if synthetic and cfg.sbi_prob + cfg.cross_blend_prob > 0:
        items += [(i, SBI) for i in idx if can_blend(records[i], cfg)]
    cap = cfg.validation.max_items
    if cap is not None and len(items) > cap:
        keep = np.sort(np.random.default_rng([cfg.seed, 4242]).choice(len(items), cap, replace=False))
        items = [items[k] for k in keep]
    return items


def item_method(records: Sequence[Rec], item: tuple[int, int]) -> str:
    """Method name of a validation item (``sbi``/``cross_blend`` for blends)."""
    i, kind = item
    return KIND_METHOD.get(kind, records[i].method)


def item_label(records: Sequence[Rec], item: tuple[int, int]) -> int:
    """Label of a validation item as built (blends are fake)."""
    i, kind = item
    return 1 if kind != AS_IS else records[i].label


def worker_init(worker_id: int) -> None:
    """DataLoader worker setup: one OpenCV/torch thread per worker (samples are seeded
    by key, so no per-worker seeding is needed for reproducibility)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
