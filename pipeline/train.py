"""Train and evaluate one trial: ``fit(config, data) -> TrialResult``. Plain PyTorch, no Ray.

The uint8 arrays move to the device once; every batch is gathered, augmented, resized and normalized
there (``pipeline.augment``), so there is no DataLoader and no per-image work. A frozen backbone with
deterministic inputs trains its head on cached features (``pipeline.features``). At the end the model
is evaluated on validation and test for every TTA view the config asks for, and the logits are returned
so that TTA modes, ensembles and paired tests can be computed later without the model.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import augment as aug
from .config import TrialConfig, effective_normalization, uses_feature_cache
from .evaluate import summary
from .features import FeatureCache, array_digest, feature_key
from .models import (build_model, count_trainable, set_trainable, train_mode,
                     trained_modules, trained_state)

SPLITS = ("train", "val", "test")


@dataclass
class TrialResult:
    config: dict[str, Any]
    history: list[dict[str, float]]
    logits: dict[str, dict[str, np.ndarray]]  # split -> TTA view -> (N, C) float16
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")
    return torch.device(name)


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16) on GPUs by default; off on CPUs, where bf16 is measured slower."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def world() -> tuple[int, int]:
    """(rank, world size) of an initialized torch.distributed process group (Ray Train sets one up), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """With several workers, DistributedDataParallel: each worker trains on its share of every batch and the
    gradients of the trained parameters are averaged, so the workers stay identical."""
    if world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if world()[1] == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


class Inputs:
    """Turns uint8 batches on the device into model inputs for one trial."""

    def __init__(self, cfg: TrialConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.norm = effective_normalization(cfg)

    def __call__(self, xb: torch.Tensor, gen: torch.Generator | None = None, view: str = "none",
                 train: bool = False) -> torch.Tensor:
        x = aug.to_float(xb)
        if train and self.cfg.augment != "none":
            x = aug.augment(x, self.cfg.augment, gen)
        if view != "none":
            x = aug.tta_view(x, view)
        x = aug.normalize(aug.resize(x, self.cfg.resolution), self.norm)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _to_device(arrays: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return {k: torch.as_tensor(v).to(device) for k, v in arrays.items()}


def _steps_per_epoch(n: int, bs: int, workers: int = 1) -> int:
    """Full batches, plus the last partial one if every worker gets at least two images of it (BatchNorm
    cannot train on one image, and a worker with none would average a NaN loss into the others)."""
    return n // bs + (1 if n % bs >= 2 * workers else 0)


def make_optimizer(cfg: TrialConfig, model, head_only: bool) -> torch.optim.Optimizer:
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr, "name": "head"}]
    if not head_only:
        bb = [p for m in trained_modules(model, cfg.train_stages) for p in m.parameters()]
        if bb:
            groups.append({"params": bb, "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def make_schedule(cfg: TrialConfig, opt: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(total_steps, 1), pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def fit(cfg: TrialConfig, data, *, device: str | torch.device | None = None,
        on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        resume: dict | None = None, feature_cache: FeatureCache | None = None,
        classes: tuple[str, ...] | None = None) -> TrialResult:
    """Train one trial and evaluate it.

    data: a ``pipeline.data.Splits`` or a dict with train_x/train_y/val_x/val_y/test_x/test_y arrays
        (then ``classes`` names the labels; per-class metrics are keyed by these names).
    on_epoch(row, make_checkpoint): called after each epoch with its metrics; ``make_checkpoint()``
        returns a dict that, passed back as ``resume``, continues training after that epoch.
    Inside an initialized torch.distributed group of several processes (Ray Train with workers > 1), each
    process trains on its share of every batch under DistributedDataParallel; all evaluate everything.
    """
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolution once
    arrays = data.arrays() if hasattr(data, "arrays") else dict(data)
    num_classes = int(max(arrays["train_y"].max(), arrays["val_y"].max(), arrays["test_y"].max())) + 1
    classes = tuple(str(c) for c in (classes or getattr(data, "classes", None) or range(num_classes)))

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    t = _to_device(arrays, device)
    inputs = Inputs(cfg, device)
    dtype = amp_dtype(cfg, device)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    cached = uses_feature_cache(cfg)
    views = aug.TTA_MODES[cfg.tta]
    cache_state = "off"
    if cached:
        feature_cache = feature_cache if feature_cache is not None else FeatureCache()
        hits0, misses0 = feature_cache.hits, feature_cache.misses
        feats = _cached_features(cfg, model, arrays, t, inputs, views, feature_cache, autocast, dtype)
        hits, misses = feature_cache.hits - hits0, feature_cache.misses - misses0
        cache_state = "hit" if not misses else ("miss" if not hits else "partial")
    rank, n_workers = world()
    compiled = torch.compile(model) if (cfg.compile and not cached) else None
    forward = compiled if compiled is not None else model  # evaluation (and training, with one worker)

    def trained_module() -> torch.nn.Module:
        """What the training steps call: the head (on cached features) or the model, under DDP with several
        workers (rebuilt when the trained stages change, since DDP hooks the parameters that train)."""
        if cached:
            return data_parallel(model.head, device)
        if n_workers == 1:
            return forward
        ddp = data_parallel(model, device)
        return torch.compile(ddp) if cfg.compile else ddp

    @torch.inference_mode()
    def eval_logits(split: str, view: str) -> torch.Tensor:
        model.eval()
        out = []
        n, bs = len(t[f"{split}_y"]), cfg.eval_batch_size
        with autocast():
            for i in range(0, n, bs):
                if cached:
                    p3, p4 = feats[split][view]
                    out.append(model.head(p3[i:i + bs], p4[i:i + bs]).float())
                else:
                    out.append(forward(inputs(t[f"{split}_x"][i:i + bs], view=view)).float())
        return torch.cat(out)

    n_train = len(t["train_y"])
    bs = min(cfg.batch_size, n_train)
    if bs < 2 * n_workers:
        raise ValueError(f"batch_size={bs} leaves fewer than 2 images per worker for {n_workers} workers")
    steps = _steps_per_epoch(n_train, bs, n_workers)
    opt = make_optimizer(cfg, model, head_only=cached)
    sched = make_schedule(cfg, opt, steps * cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    history: list[dict] = []
    start_epoch = 0
    if resume:
        model.load_state_dict(resume["model"], strict=False)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        if "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        history = list(resume["history"])
        start_epoch = int(resume["epoch"])

    def make_checkpoint(epoch_done: int) -> Callable[[], dict]:
        return lambda: {"model": trained_state(model, cfg.train_stages), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_done, "history": list(history),
                        "trial_id": cfg.trial_id}

    train_seconds = sum(h["seconds"] for h in history)
    trained, trained_stages = None, None
    for epoch in range(start_epoch, cfg.epochs):
        te = time.perf_counter()
        stages = "0" if epoch < cfg.freeze_epochs else cfg.train_stages  # two-phase: head first
        set_trainable(model, stages)
        if stages != trained_stages:
            trained, trained_stages = trained_module(), stages
        gen = torch.Generator(device).manual_seed(epoch_seed(cfg.seed, epoch))
        torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout
        perm = torch.randperm(n_train, generator=gen, device=device)
        train_mode(model, "0" if cached else stages)
        # running sums stay on the device: no host synchronisation per step
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs][rank::n_workers]  # this worker's share of the batch
            y = t["train_y"][idx]
            with autocast():
                if cached:
                    p3, p4 = feats["train"]["none"]
                    logits = trained(p3[idx], p4[idx])
                    target = F.one_hot(y, num_classes).float()
                else:
                    x = inputs(t["train_x"][idx], gen, train=True)
                    x, target = aug.mix(x, y, cfg.mix, cfg.mix_alpha, num_classes, gen)
                    logits = trained(x)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lr_used = opt.param_groups[0]["lr"]  # the head's rate for this step
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
            seen += len(idx)
        seconds = time.perf_counter() - te
        loss_sum, correct, seen = _all_sum([float(loss_sum), int(correct), seen], device)
        val_logits = eval_logits("val", "none")
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": float(F.cross_entropy(val_logits, t["val_y"])),
            "val_acc": float((val_logits.argmax(1) == t["val_y"]).float().mean()),
            "lr": lr_used,  # at the epoch's last step
            "seconds": seconds,
        }
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss is {row['train_loss']} at epoch {epoch + 1}")
        history.append(row)
        train_seconds += seconds
        if on_epoch is not None:
            on_epoch(dict(row), make_checkpoint(epoch + 1))

    te = time.perf_counter()
    logits = {split: {v: eval_logits(split, v).cpu().numpy().astype(np.float16) for v in views}
              for split in ("val", "test")}
    eval_seconds = time.perf_counter() - te
    labels = {"val": arrays["val_y"], "test": arrays["test_y"]}
    metrics = summary({s: {v: a.astype(np.float32) for v, a in d.items()} for s, d in logits.items()},
                      labels, classes)
    set_trainable(model, cfg.train_stages)
    epochs_run = cfg.epochs - start_epoch
    metrics.update({
        "trainable_params": count_trainable(model),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "trial_seconds": time.perf_counter() - t0,
        "train_images_per_second": n_train * epochs_run / max(sum(h["seconds"] for h in history[start_epoch:]), 1e-9),
        "feature_cache_state": cache_state,
        "resumed_from_epoch": start_epoch,
        "device_type": device.type,
        "amp_dtype": str(dtype).replace("torch.", "") if dtype else "off",  # autocast as it ran
        "compiled": compiled is not None,
        "world_size": n_workers,  # torch.distributed's, so a process group that was not set up shows as 1
    })
    return TrialResult(config=cfg.to_dict(), history=history, logits=logits, metrics=metrics,
                       state=trained_state(model, cfg.train_stages))


def _cached_features(cfg, model, arrays, t, inputs, views, cache: FeatureCache, autocast, dtype):
    """Pooled backbone features for every split and view, from the cache or computed once."""
    device = next(model.parameters()).device
    base = {"backbone": cfg.backbone, "pretrained": cfg.pretrained, "weights": cfg.weights,
            "resolution": cfg.resolution, "normalize": inputs.norm, "precision": str(dtype),
            "channels_last": cfg.channels_last, "device": device.type}
    feats: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for split in SPLITS:
        split_views = ("none",) if split == "train" else views
        digest = array_digest(arrays[f"{split}_x"])
        feats[split] = {}
        for view in split_views:
            key = feature_key({**base, "images": digest, "view": view})

            @torch.inference_mode()
            def compute(split=split, view=view):
                model.backbone.eval()
                p3s, p4s = [], []
                x = t[f"{split}_x"]
                with autocast():
                    for i in range(0, len(x), cfg.eval_batch_size):
                        p3, p4 = model.features(inputs(x[i:i + cfg.eval_batch_size], view=view))
                        p3s.append(p3.float().cpu())
                        p4s.append(p4.float().cpu())
                return torch.cat(p3s).numpy(), torch.cat(p4s).numpy()

            p3, p4 = cache.get_or_compute(key, compute)
            feats[split][view] = (torch.from_numpy(p3).to(device), torch.from_numpy(p4).to(device))
    return feats
