"""Train and evaluate one trial: ``fit(config, data) -> TrialResult``. Plain PyTorch, no Ray.

It reads like torchvision's ``references/classification/train.py``: build the model, pick a feature source
(``pipeline.sources``: raw images through the whole model, or cached outputs of the frozen prefix through the
trained top), then ``train_one_epoch`` and a validation pass per epoch, a small checkpoint after each
(``TrainState``; passed back as ``resume`` it continues from there), and ``evaluate_views`` at the end on
validation and test for every TTA view the config asks for. The logits are returned so that TTA modes,
ensembles and paired tests can be computed later without the model.

The uint8 arrays move to the device once; every batch is gathered, augmented (the epoch's view,
``pipeline.views``), resized and normalized there, so there is no DataLoader and no per-image work. The
metrics say where the trial's time went (``*_seconds``, see ``Clock``).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import augment as aug
from pipeline import registry as R
from pipeline.config import TrialConfig, stages_at
from pipeline.device import Precision, resolve_device
from pipeline.evaluate import summary
from pipeline.models import (
    build_model,
    count_trainable,
    set_trainable,
    train_mode,
    trained_modules,
    trained_state,
)
from pipeline.prefix_cache import PrefixCache
from pipeline.provenance import code_version
from pipeline.sources import (
    CachedPrefix,
    Inputs,
    RawImages,
    Sources,
    TrialData,
    load_data,
    plan_prefix,
)


@dataclass
class TrialResult:
    config: dict[str, Any]
    history: list[dict[str, float]]
    logits: dict[str, dict[str, np.ndarray]]  # split -> TTA view -> (N, C) float16
    metrics: dict[str, Any]
    state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


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


def _steps_per_epoch(n: int, bs: int, workers: int = 1) -> int:
    """Full batches, plus the last partial one if every worker gets at least two images of it (BatchNorm
    cannot train on one image, and a worker with none would average a NaN loss into the others)."""
    return n // bs + (1 if n % bs >= 2 * workers else 0)


def make_optimizer(cfg: TrialConfig, model) -> torch.optim.Optimizer:
    """The head at ``lr`` and the stages that train (by the end, for two-phase trials) at ``lr * backbone_lr_mult``;
    parameters without gradients (frozen in a phase) are skipped by the step."""
    groups = [{"params": list(model.head.parameters()), "lr": cfg.lr, "name": "head"}]
    bb = [p for m in trained_modules(model, cfg.train_stages) for p in m.parameters()]
    if bb:
        groups.append({"params": bb, "lr": cfg.lr * cfg.backbone_lr_mult, "name": "backbone"})
    return R.OPTIMIZERS[cfg.optimizer].build(groups, cfg.lr, cfg.weight_decay)


def make_schedule(cfg: TrialConfig, opt: torch.optim.Optimizer, total_steps: int):
    return R.schedule(cfg.schedule)(opt, total_steps)


def constant_schedule(opt: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps)
                                                                                  / total_steps)))


def onecycle_schedule(opt: torch.optim.Optimizer, total_steps: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                               total_steps=max(total_steps, 1), pct_start=0.25)


# ----------------------------------------------------------------------------- where the time goes


class Clock:
    """Seconds per part of a trial (``with clock("train"): ...``). On a GPU each part ends by waiting for the
    device, once per part (never per step), so that its time is its own."""

    PARTS = ("build", "to_device", "prefix", "train", "val", "checkpoint", "eval")

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[part] += time.perf_counter() - t

    def metrics(self) -> dict[str, float]:
        """``<part>_seconds`` for this process's run of the trial (a resumed trial: since it resumed), and
        ``trial_seconds`` for all of it."""
        out = {f"{part}_seconds": self.seconds[part] for part in self.PARTS if part != "train"}
        out["trial_seconds"] = time.perf_counter() - self.start
        return out


# ----------------------------------------------------------------------------- checkpoint and resume


@dataclass
class TrainState:
    """What a trial needs to continue after an epoch: the trained weights (head and trained stages only),
    optimizer, schedule, loss scaler, the epochs done and their rows."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    train_stages: str
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    start: dict | None = None  # a child's validation before its first epoch (epoch 0), from its parent's weights

    def checkpoint(self) -> dict:
        """The state after ``epoch`` epochs. The optimizer's part refers to live tensors: write it out before
        training goes on (the Ray trainable saves it at once)."""
        return {"model": trained_state(self.model, self.train_stages), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "history": list(self.history), "start": self.start}

    def restore(self, resume: dict) -> None:
        self.model.load_state_dict(resume["model"], strict=False)
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        if "scaler" in resume:
            self.scaler.load_state_dict(resume["scaler"])
        self.history = list(resume["history"])
        self.epoch = int(resume["epoch"])
        self.start = resume.get("start")

    def rows(self) -> list[dict]:
        """Every epoch row: the start row (epoch 0) of a child, then one per epoch trained."""
        return [self.start, *self.history] if self.start else list(self.history)


# ----------------------------------------------------------------------------- one epoch, evaluation


def train_one_epoch(module: torch.nn.Module, source: RawImages | CachedPrefix, state: TrainState,
                    data: TrialData, cfg: TrialConfig, epoch: int, precision: Precision, batch_size: int,
                    steps: int) -> dict[str, float]:
    """One pass over the training set in the epoch's order, each worker on its share of every batch. Running sums
    stay on the device: no host synchronisation per step."""
    rank, n_workers = world()
    device = precision.device
    gen = torch.Generator(device).manual_seed(epoch_seed(cfg.seed, epoch))  # order and MixUp/CutMix pairs
    torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout and drop-connect
    perm = torch.randperm(len(data.y["train"]), generator=gen, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, lr = 0, state.optimizer.param_groups[0]["lr"]
    opt, sched, scaler = state.optimizer, state.scheduler, state.scaler
    for s in range(steps):
        idx = perm[s * batch_size:(s + 1) * batch_size][rank::n_workers]  # this worker's share of the batch
        y = data.y["train"][idx]
        with precision.autocast():
            x, target = source.batch(idx, gen)
            logits = module(x)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        lr = opt.param_groups[0]["lr"]  # the head's rate for this step
        sched.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
    loss_total, correct_total, seen_total = _all_sum([float(loss_sum), int(correct), seen], device)
    _broadcast_buffers(module)
    return {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total, "lr": lr}


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """With several workers, worker 0's BatchNorm statistics everywhere: each worker updated its own on its share
    of the last batch (DDP broadcasts them only at the next forward), so that all evaluate the same model."""
    if world()[1] == 1:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer, 0)


@torch.inference_mode()
def evaluate(module: torch.nn.Module, source: RawImages | CachedPrefix, split: str, view: str,
             precision: Precision) -> torch.Tensor:
    """Logits (float32, on the device) of a split under one TTA view."""
    module.eval()
    with precision.autocast():
        return torch.cat([module(x).float() for x in source.eval_batches(split, view)])


def evaluate_views(module: torch.nn.Module, source: RawImages | CachedPrefix, tta_views: tuple[str, ...],
                   precision: Precision) -> dict[str, dict[str, np.ndarray]]:
    """Validation and test logits for every TTA view, float16 on the host."""
    return {split: {v: evaluate(module, source, split, v, precision).cpu().numpy().astype(np.float16)
                    for v in tta_views} for split in ("val", "test")}


def compiled(module: torch.nn.Module, cfg: TrialConfig, device: torch.device, train: bool) -> torch.nn.Module:
    """The module as a step calls it: under DDP with several workers (for training; rebuilt whenever the trained
    stages change, since DDP hooks the parameters that train), compiled if the config asks."""
    if train and world()[1] > 1:
        module = data_parallel(module, device)
    return torch.compile(module) if cfg.compile else module


# ----------------------------------------------------------------------------- fit


def fit(cfg: TrialConfig, data, *, device: str | torch.device | None = None,
        on_epoch: Callable[[dict, Callable[[], dict]], None] | None = None,
        resume: dict | None = None, prefix_cache: PrefixCache | None = None,
        classes: tuple[str, ...] | None = None, init_state: dict | None = None) -> TrialResult:
    """Train one trial and evaluate it.

    data: a ``pipeline.data.Splits`` or a dict with train_x/train_y/val_x/val_y/test_x/test_y arrays (and
        optionally train_idx, the training images' positions in the decoded dataset, which key their
        augmentation; see ``sources.load_data``); ``classes`` names the labels for per-class metrics.
    on_epoch(row, make_checkpoint): called after each epoch with its metrics; ``make_checkpoint()``
        returns a dict that, passed back as ``resume``, continues training after that epoch.
    prefix_cache: where frozen-prefix outputs are kept and shared (the node's cache in a Ray trial); None: a
        private temporary one for this call.
    init_state: for a config with ``init_from``, the parent trial's trained model as saved (``{"config": ...,
        "state": ...}``: its config and ``TrialResult.state``, its head and trained stages), loaded over the
        pretrained weights before anything else happens. The child continues the parent's epoch numbering
        (``Parent``) and is validated before its first epoch.
    Inside an initialized torch.distributed group of several processes (Ray Train with workers > 1), each
    process trains on its share of every batch under DistributedDataParallel; all evaluate everything.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolution once
    clock, precision = Clock(device), Precision(cfg, device)
    cache = prefix_cache if prefix_cache is not None else PrefixCache()
    try:
        with clock("to_device"):
            tdata = load_data(data, device, classes)
        if device.type == "cuda":  # CUDA is initialized now (the stats of an uninitialized device raise)
            torch.cuda.reset_peak_memory_stats(device)  # gpu_peak_mib is this trial's, also in a reused process
        with clock("build"):
            torch.manual_seed(cfg.seed)
            model = build_model(cfg, tdata.num_classes)
            parent = load_parent(model, cfg, init_state)
            model = model.to(device)
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
        inputs = Inputs(cfg, device)
        with clock("prefix"):
            plan = plan_prefix(cfg, model, tdata, inputs, cache, precision)
        sources = Sources(cfg, model, tdata, inputs, plan, cache, precision)
        return _train_and_evaluate(cfg, model, tdata, sources, clock, precision, on_epoch, resume, parent)
    finally:
        if prefix_cache is None:
            cache.close()


@dataclass(frozen=True)
class Parent:
    """What a child (``init_from``) takes from its parent trial besides the weights: the epochs the parent trained
    and the stages it trained.

    The rule: the child's epoch e is epoch ``parent.epochs + e`` of the lineage, so its augmentation views and
    batch order (keyed by seed and epoch, ``pipeline.views``) are the ones after its parent's, not the parent's
    first epochs again. Its own schedule, freeze phases and epoch rows count from its own first epoch. The stages
    it trains beyond the parent's are ``new_stages``; ``new_stage_bn`` decides their BatchNorm."""

    epochs: int = 0
    train_stages: str = "0"

    def new_stages(self, model, train_stages: str) -> list:
        had = {id(m) for m in trained_modules(model, self.train_stages)}
        return [m for m in trained_modules(model, train_stages) if id(m) not in had]


def load_parent(model, cfg: TrialConfig, init_state: dict | None) -> Parent | None:
    """Start from the parent trial's trained model (``init_from``): its trained stages and head replace the
    pretrained ones; the stages it kept frozen are the pretrained weights the model already holds. ``init_state``
    is the parent's saved model (``{"config", "state"}``) or, from older callers, its state alone (then the child
    is taken to start at epoch 0 after a head-only parent)."""
    if not cfg.init_from:
        return None
    if init_state is None:
        raise ValueError(f"init_from={cfg.init_from}: the parent trial's trained state was not given")
    saved = init_state if "state" in init_state and "config" in init_state else {"state": init_state, "config": {}}
    missing, unexpected = model.load_state_dict(saved["state"], strict=False)
    if unexpected:
        raise ValueError(f"init_from={cfg.init_from}: the parent's state does not fit this model ({unexpected[:3]})")
    pcfg = saved["config"]
    return Parent(epochs=int(pcfg.get("epochs", 0)), train_stages=str(pcfg.get("train_stages", "0")))


def _bn_layers(modules: list) -> list:
    return [m for mod in modules for m in mod.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _train_and_evaluate(cfg: TrialConfig, model, data: TrialData, sources: Sources, clock: Clock,
                        precision: Precision, on_epoch, resume: dict | None, parent: Parent | None = None) -> TrialResult:
    device = precision.device
    n_workers = world()[1]
    n_train = len(data.y["train"])
    bs = min(cfg.batch_size, n_train)
    if bs < 2 * n_workers:
        raise ValueError(f"batch_size={bs} leaves fewer than 2 images per worker for {n_workers} workers")
    steps = _steps_per_epoch(n_train, bs, n_workers)
    opt = make_optimizer(cfg, model)
    state = TrainState(model, opt, make_schedule(cfg, opt, steps * cfg.epochs),
                       torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16), cfg.train_stages)
    if resume:
        state.restore(resume)
    start_epoch = state.epoch
    modules: dict[tuple, torch.nn.Module] = {}

    def module(source, stages: str, train: bool) -> torch.nn.Module:
        """The source's module as steps (``train``) or evaluation call it, made once per freeze depth."""
        if (stages, train) not in modules:
            modules[(stages, train)] = compiled(source.module, cfg, device, train)
        return modules[(stages, train)]

    offset = parent.epochs if parent else 0  # the lineage's epoch: views and batch order continue the parent's
    frozen_bn = _bn_layers(parent.new_stages(model, cfg.train_stages)) if parent and cfg.new_stage_bn == "frozen" \
        else []
    if parent is not None and state.start is None:  # where the child starts: its parent's model, validated
        stages = stages_at(cfg, 0)
        source = sources.for_stages(stages)
        with clock("prefix"):
            source.prepare("val", ("none",))
        with clock("val"):
            val_logits = evaluate(module(source, stages, False), source, "val", "none", precision)
        state.start = {"epoch": 0, "val_loss": float(F.cross_entropy(val_logits, data.y["val"])),
                       "val_acc": float((val_logits.argmax(1) == data.y["val"]).float().mean()), "seconds": 0.0}
        if on_epoch is not None:
            with clock("checkpoint"):
                on_epoch(dict(state.start), state.checkpoint)
    for epoch in range(start_epoch, cfg.epochs):
        stages = stages_at(cfg, epoch)
        source = sources.for_stages(stages)
        set_trainable(model, stages)
        with clock("prefix"):
            source.begin_epoch(offset + epoch)
            source.prepare("val", ("none",))
        train_mode(model, stages)
        for bn in frozen_bn:  # new_stage_bn=frozen: the statistics the parent's stages were trained on
            bn.eval()
        with clock("train"):
            t = time.perf_counter()
            row = {"epoch": epoch + 1, **train_one_epoch(module(source, stages, True), source, state, data, cfg,
                                                         offset + epoch, precision, bs, steps)}
            row["seconds"] = time.perf_counter() - t
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training loss is {row['train_loss']} at epoch {epoch + 1}")
        with clock("val"):
            val_logits = evaluate(module(source, stages, False), source, "val", "none", precision)
            row["val_loss"] = float(F.cross_entropy(val_logits, data.y["val"]))
            row["val_acc"] = float((val_logits.argmax(1) == data.y["val"]).float().mean())
        state.history.append(row)
        state.epoch = epoch + 1
        if on_epoch is not None:
            with clock("checkpoint"):
                on_epoch(dict(row), state.checkpoint)

    source = sources.for_stages(cfg.train_stages)
    tta_views = aug.TTA_MODES[cfg.tta]
    with clock("prefix"):
        for split in ("val", "test"):
            source.prepare(split, tta_views)
    with clock("eval"):
        logits = evaluate_views(module(source, cfg.train_stages, False), source, tta_views, precision)
    return _result(cfg, model, data, state, logits, sources, clock, start_epoch)


def device_facts(device: torch.device) -> dict:
    """The GPU a trial ran on (its model name and the most memory this process allocated on it), or the CPU."""
    if device.type != "cuda":
        return {"device_name": "cpu", "gpu_peak_mib": float("nan")}
    return {"device_name": torch.cuda.get_device_name(device),
            "gpu_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}


def _result(cfg: TrialConfig, model, data: TrialData, state: TrainState, logits, sources: Sources, clock: Clock,
            start_epoch: int) -> TrialResult:
    labels = {"val": data.host["val_y"], "test": data.host["test_y"]}
    metrics = summary({s: {v: a.astype(np.float32) for v, a in d.items()} for s, d in logits.items()},
                      labels, data.classes)
    set_trainable(model, cfg.train_stages)
    history = state.history
    new_epochs = history[start_epoch:]
    metrics.update({
        "trainable_params": count_trainable(model),
        "train_seconds": sum(h["seconds"] for h in history),  # every epoch, also those before a resume
        **clock.metrics(),
        "train_images_per_second": len(data.y["train"]) * len(new_epochs) / max(sum(h["seconds"] for h in new_epochs),
                                                                               1e-9),
        "feature_cache_state": sources.stats.state() if sources.plan.cached else "off",
        "prefix_hits": sources.stats.hit + sources.stats.waited,
        "prefix_computed": sources.stats.computed,
        "prefix_wait_seconds": sources.stats.wait_seconds,  # part of prefix_seconds: another trial computed
        **sources.plan.metrics(),
        "resumed_from_epoch": start_epoch,
        "device_type": clock.device.type,
        **device_facts(clock.device),
        "amp_dtype": str(Precision(cfg, clock.device).dtype or "off").replace("torch.", ""),  # autocast as it ran
        "compiled": bool(cfg.compile),
        "world_size": world()[1],  # torch.distributed's, so a process group that was not set up shows as 1
        "code_version": code_version(),  # the code this trial ran (pipeline.provenance)
        # the instruction set torch's CPU kernels use (AVX2, AVX512, ...): oneDNN picks kernels by it, and their
        # rounding differs, so CPU numbers repeat digit for digit only on the same capability
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    })
    return TrialResult(config=cfg.to_dict(), history=state.rows(), logits=logits, metrics=metrics,
                       state=trained_state(model, cfg.train_stages))
