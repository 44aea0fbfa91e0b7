"""``facetrust train``: fine-tune a timm classifier on prepared face crops.

One command for CPU, one GPU and several GPUs (``torchrun --nproc_per_node=N -m
facetrust train CONFIG``: DistributedDataParallel when ``WORLD_SIZE > 1``; NCCL on CUDA,
gloo on CPU). Per epoch: a seeded, balanced draw of training samples (see
:mod:`training.data`), AdamW with warm-up + cosine learning rate, optional mixed
precision (bf16, or fp16 with a gradient scaler), then validation metrics (AUC, AP, EER,
TPR@1%FPR; per fake method; held-out methods separately) and images/second.

The run folder (``cfg.out``) holds ``config.yaml`` (resolved config), ``last.safetensors``
and ``best.safetensors`` (by validation AUC), ``last_state.pt`` (optimizer, scheduler,
scaler, epoch, RNG: what ``--resume`` needs; saved at the end of each epoch) and
``log.jsonl`` (one line per epoch). Unless ``export: false``, training ends with
calibration, thresholds and the ONNX export of the best checkpoint
(:func:`training.release.export_run`, the same as ``facetrust export RUN_DIR``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.config import ConfigError, TrainConfig, load_config, save_config
from training.data import (
    AS_IS,
    KIND_METHOD,
    EpochSampler,
    FaceDataset,
    Sources,
    make_splits,
    sampling_weights,
    validation_items,
    worker_init,
)
from training.metrics import binary_metrics, format_metrics

log = logging.getLogger(__name__)

STATE_FILE = "last_state.pt"
LAST, BEST = "last.safetensors", "best.safetensors"


class TrainError(RuntimeError):
    """Training cannot start or continue (bad data, run folder conflicts)."""


# -- distributed / device ---------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """Process placement: ``world`` processes, this one is ``rank`` on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> Dist:
    """Pick the device and, under torchrun (``WORLD_SIZE > 1``), join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrainError("device: cuda requested but CUDA is not available")
    if want_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if want_cuda else "gloo")
    return Dist(rank, world, device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on CUDA when supported, else fp16; off on CPU."""
    if cfg.amp == "off":
        return None
    if cfg.amp == "bf16":
        return torch.bfloat16
    if cfg.amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` context for ``dtype`` (a no-op context when None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -- optimisation -----------------------------------------------------------------------
class WarmupCosine:
    """LR multiplier per step: linear warm-up to 1, then cosine down to ``min_ratio``."""

    def __init__(self, total: int, warmup: int, min_ratio: float, cosine: bool = True) -> None:
        self.total, self.warmup = int(total), int(warmup)
        self.min_ratio, self.cosine = float(min_ratio), bool(cosine)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# -- checkpoints ------------------------------------------------------------------------
def save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Model weights as safetensors (atomic replace), ``meta`` stored as strings."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_weights_file(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load safetensors weights saved by :func:`save_weights`; returns their metadata."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        model.load_state_dict(load_file(str(path)))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return {k: json.loads(v) for k, v in meta.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:  # not our weights
        raise TrainError(
            f"{path} is not a weights file of this model ({type(exc).__name__}: {str(exc)[:200]}); "
            f"give a run folder or its {BEST} / {LAST}"
        ) from None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- evaluation -------------------------------------------------------------------------
def fused_logits(out: Any) -> torch.Tensor:
    """``[N]`` fake logits from a classifier output (``[N,1]`` or ``(fused, heads)``)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1)[:, 0]


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device,
            dtype: torch.dtype | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Raw logits of every sample of ``loader`` with labels, record indices and kinds."""
    from tqdm import tqdm

    model.eval()
    out: dict[str, list[np.ndarray]] = {"logits": [], "labels": [], "records": [], "kinds": []}
    for x, y, rec, kind in tqdm(loader, desc="validate", leave=False, disable=not progress):
        with autocast(device, dtype):
            z = fused_logits(model(x.to(device, non_blocking=True)))
        out["logits"].append(z.float().cpu().numpy())
        out["labels"].append(y.numpy().astype(np.int64))
        out["records"].append(np.asarray(rec, dtype=np.int64))
        out["kinds"].append(np.asarray(kind, dtype=np.int64))
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out.items()}


def method_names(sources: Sources, pred: dict[str, np.ndarray]) -> list[str]:
    """Method of each predicted item (blends named ``sbi``/``cross_blend``)."""
    return [KIND_METHOD.get(int(k), sources.records[int(r)].method)
            for r, k in zip(pred["records"], pred["kinds"], strict=True)]


def validation_report(sources: Sources, val: dict[str, np.ndarray],
                      holdout: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of the validation predictions: overall, per fake method (vs all val reals),
    and the held-out methods (their items plus the validation reals)."""
    y, z = val["labels"], val["logits"]
    report: dict[str, Any] = {"overall": binary_metrics(y, z), "per_method": {}}
    methods = np.array(method_names(sources, val)) if y.size else np.array([])
    reals = y == 0
    for m in sorted(set(methods[y == 1].tolist())):
        sel = reals | ((y == 1) & (methods == m))
        report["per_method"][m] = binary_metrics(y[sel], z[sel])
    if holdout is not None and holdout["labels"].size:
        hy = np.concatenate([holdout["labels"], y[reals]])
        hz = np.concatenate([holdout["logits"], z[reals]])
        hm = np.array(method_names(sources, holdout) + ["val-real"] * int(reals.sum()))
        hold = {"all": binary_metrics(hy, hz)}
        for m in sorted(set(method_names(sources, holdout))):
            sel = (hm == m) | (hm == "val-real")
            hold[m] = binary_metrics(hy[sel], hz[sel])
        report["holdout"] = hold
    return report


def _gather(dist: Dist, pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if dist.world == 1:
        return pred
    parts: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(parts, pred)
    return {k: np.concatenate([p[k] for p in parts]) for k in pred}


# -- the loop ---------------------------------------------------------------------------
@dataclass
class Data:
    """Everything built from the config's prepared folders."""

    sources: Sources
    train_idx: list[int]
    val_items: list[tuple[int, int]]
    holdout_items: list[tuple[int, int]]


#: Settings a resumed run may change: where and how fast it runs, and ``epochs`` (to train on:
#: the learning-rate schedule is then stretched to the new length), not what it learns.
RESUME_FREE = frozenset({"workers", "device", "cpu_threads", "amp", "epochs", "export"})


def _config_changes(before: TrainConfig, now: TrainConfig) -> list[str]:
    """Top-level settings (and sections) that differ between a run's config and a new one."""
    a, b = before.to_dict(), now.to_dict()
    return sorted(k for k in set(a) | set(b) if k not in RESUME_FREE and a.get(k) != b.get(k))


def load_data(cfg: TrainConfig) -> Data:
    """Open the prepared folders and form the training, validation and held-out sets."""
    for d in cfg.data:
        if not (Path(d.path) / "index.jsonl").is_file():
            raise TrainError(f"{d.path} is not a prepared folder (no index.jsonl); "
                             "run `facetrust prepare` first")
    sources = Sources([d.path for d in cfg.data])
    if not sources.records:
        raise TrainError("the prepared folders hold no records")
    for d, index in zip(cfg.data, sources.indexes, strict=True):
        stored = float(getattr(index, "margin", 0.0) or 0.0)
        if stored and cfg.crop_margin > stored + 1e-6:
            raise ConfigError(
                f"crop_margin {cfg.crop_margin:g} is wider than the {stored:g} margin of the crops stored "
                f"in {d.path}: the model would see black padding "
                f"(prepare with --margin >= {cfg.crop_margin:g})"
            )
    methods = {r.method for r in sources.records}
    unknown = sorted(set(cfg.validation.holdout_methods) - methods)
    if unknown:
        raise ConfigError(f"validation.holdout_methods {unknown} are not methods of the data "
                          f"(methods: {sorted(methods)})")
    splits = make_splits(sources.records, cfg)
    if not splits.train:
        raise TrainError("no training records (all records are val/test/held out)")
    val_items = validation_items(sources.records, splits.val, cfg)
    hold_items = [(i, AS_IS) for i in splits.holdout]
    return Data(sources, splits.train, val_items, hold_items)


def _loader(ds: FaceDataset, cfg: TrainConfig, device: torch.device, **kw: Any) -> DataLoader:
    return DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, worker_init_fn=worker_init,
                      pin_memory=device.type == "cuda", persistent_workers=False, **kw)


def train_main(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train per ``cfg``; returns the run folder. ``resume`` continues from
    ``last_state.pt`` of ``cfg.out`` (after the last completed epoch)."""
    from tqdm import tqdm

    from training.models import create_classifier, load_weights, normalisation, read_state_dict

    cfg.validate()
    dist = setup_distributed(cfg)
    run = Path(cfg.out)
    state_path = run / STATE_FILE
    if state_path.exists() and not resume:
        raise TrainError(f"{run} already holds a training run; pass --resume to continue it "
                         "or choose another out")
    if resume and state_path.exists() and (run / "config.yaml").is_file():
        changed = _config_changes(load_config(run / "config.yaml"), cfg)
        if changed:
            raise TrainError(
                f"--resume with a different config ({', '.join(changed)} changed): a resumed run must "
                "train as it started (its schedule and weights depend on it); start a new out instead"
            )

    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg)
    mean, std = normalisation(cfg.model, cfg.pretrained)
    try:
        model = create_classifier(cfg.model, cfg.pretrained)
        if cfg.init_from:
            load_weights(model, read_state_dict(Path(cfg.init_from)), skip_classifier=False)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    model.to(dist.device)

    recs = data.sources.records
    weights = sampling_weights(recs, data.train_idx, cfg)
    n_samples = cfg.samples_per_epoch or len(data.train_idx)
    sampler = EpochSampler(data.train_idx, weights, n_samples, cfg.seed, dist.rank, dist.world)
    train_ds = FaceDataset(data.sources, cfg, mean, std, train=True, pool=data.train_idx)
    train_dl = _loader(train_ds, cfg, dist.device, sampler=sampler, drop_last=True)
    steps = len(sampler) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    if steps < 1:
        raise TrainError(f"an epoch of {len(sampler)} samples per process is less than one batch "
                         f"of {cfg.batch_size}")
    if dist.main:  # only now: a run that cannot start leaves no folder behind
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    val_shard = data.val_items[dist.rank :: dist.world]
    hold_shard = data.holdout_items[dist.rank :: dist.world]
    val_dl = _loader(FaceDataset(data.sources, cfg, mean, std, train=False, items=val_shard), cfg,
                     dist.device)
    hold_dl = _loader(FaceDataset(data.sources, cfg, mean, std, train=False, items=hold_shard), cfg,
                      dist.device)

    dtype = amp_dtype(cfg, dist.device)
    use_scaler = dtype == torch.float16 and dist.device.type == "cuda"
    scaler = torch.amp.GradScaler(dist.device.type, enabled=use_scaler)
    optimizer = make_optimizer(model, cfg)
    schedule = WarmupCosine(cfg.epochs * steps, int(cfg.warmup_epochs * steps), cfg.min_lr_ratio,
                            cosine=cfg.scheduler == "cosine")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_epoch, best_auc = 0, -math.inf
    if resume and state_path.exists():
        load_weights_file(model, run / LAST)
        state = torch.load(str(state_path), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        fresh = dict(schedule.__dict__)  # this config's schedule (epochs may have grown) ...
        scheduler.load_state_dict(state["scheduler"])
        for fn in scheduler.lr_lambdas:  # ... not the one saved with the state
            fn.__dict__.update(fresh)
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, best_auc = int(state["epoch"]) + 1, float(state["best_auc"])
        if dist.main:
            log.info("resumed %s after epoch %d (best AUC %.4f)", run, start_epoch, best_auc)  # 1-based
    elif resume and dist.main:
        log.info("nothing to resume in %s: starting from scratch", run)

    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_fn = nn.BCEWithLogitsLoss()
    if dist.main:
        log.info("training %s on %s: %d train records, %d val items, %d held-out items, %d steps/epoch x %d "
                 "processes, amp=%s", cfg.model, dist.device, len(data.train_idx), len(data.val_items),
                 len(data.holdout_items), steps, dist.world, dtype)

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        seen, loss_sum, fake_sum = 0, 0.0, 0.0
        t0 = time.perf_counter()
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and dist.main),
                   leave=False)
        for step, (x, y, _rec, _kind) in enumerate(train_dl):
            if step >= steps:
                break
            x = x.to(dist.device, non_blocking=True)
            y = y.to(dist.device, non_blocking=True)
            with autocast(dist.device, dtype):
                loss = loss_fn(fused_logits(net(x)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            with warnings.catch_warnings():
                # fp16: the scaler skips the optimizer step on overflow; the schedule still advances
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                scheduler.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise TrainError(f"loss became {loss_value} at epoch {epoch + 1} step {step + 1}")
            seen += x.shape[0]
            loss_sum += loss_value * x.shape[0]
            fake_sum += float(y.sum())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        if dist.device.type == "cuda":
            torch.cuda.synchronize(dist.device)
        train_s = time.perf_counter() - t0
        val = _gather(dist, predict(model, val_dl, dist.device, dtype, progress and dist.main))
        hold = _gather(dist, predict(model, hold_dl, dist.device, dtype)) if data.holdout_items else None
        if dist.main:
            report = validation_report(data.sources, val, hold)
            auc = report["overall"]["auc"]
            val_loss = None
            if val["labels"].size:
                val_loss = float(loss_fn(torch.from_numpy(val["logits"]),
                                         torch.from_numpy(val["labels"]).float()))
            entry = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(1, seen),
                "train_fake_fraction": fake_sum / max(1, seen),
                "images_per_second": seen * dist.world / train_s,
                "train_seconds": train_s,
                "lr": scheduler.get_last_lr()[0],
                "val_loss": val_loss,
                "val": report,
            }
            log.info("epoch %d/%d: loss %.4f, %.1f images/s, val %s", epoch + 1, cfg.epochs,
                     entry["train_loss"], entry["images_per_second"], format_metrics(report["overall"]))
            for m, mm in report.get("holdout", {}).items():
                log.info("  held-out %s: %s", m, format_metrics(mm))
            with open(run / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            score = auc if auc is not None else (-val_loss if val_loss is not None else -entry["train_loss"])
            meta = {"epoch": epoch + 1, "model": cfg.model, "val_auc": auc, "val_loss": val_loss}
            save_weights(model, run / LAST, meta)
            if score > best_auc or not (run / BEST).exists():
                best_auc = max(best_auc, score)
                save_weights(model, run / BEST, meta)
            state = {
                "epoch": epoch,
                "best_auc": best_auc,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
            }
            torch.save(state, str(state_path) + ".tmp")
            os.replace(str(state_path) + ".tmp", state_path)
        if dist.world > 1:
            torch.distributed.barrier()

    if dist.main and cfg.export:
        from training.release import export_run

        export_run(run, run / "model.onnx", int8=cfg.int8)
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run
