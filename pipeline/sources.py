"""Where a trial's model inputs come from: raw images through the whole model, or cached outputs of its frozen
prefix through the top (trained stages and head).

Both feature sources give the training loop (``pipeline.train``) the same things: the module that trains and
evaluates (``module``), each step's inputs and targets (``batch``), and evaluation batches (``eval_batches``).
Both draw each epoch's augmentation as a view (``pipeline.views``), so a trial computes the same thing on
either; on cached prefix outputs it skips the frozen stages' work in every step, every per-epoch validation and
every final evaluation view.

``plan_prefix`` decides per trial which source it uses and records why (``PrefixPlan``, columns ``prefix_*``).
A cache entry is named by everything that determines it: backbone, its starting weights, resolution,
normalization, precision, memory format, device type, storage dtype, cut depth, the batch size it was computed in
(oneDNN can round an image's outputs differently in batches of another size), the images (a hash of their
pixels, and for training views of their dataset positions) and the view.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import augment as aug
from pipeline import views
from pipeline.config import TrialConfig, effective_normalization, prefix_refusal, stages_at
from pipeline.device import Precision, eval_batch
from pipeline.models import Classifier, Prefix, Top, prefix_cut, weights_digest
from pipeline.prefix_cache import BUDGET_ENV, PrefixCache

SPLITS = ("train", "val", "test")
PREFIX_FORMAT = 1  # bump when what a prefix computes changes (model code), so old entries are not read
MIX_STREAM = 0x6D6978


class Inputs:
    """Turns uint8 batches on the device into model inputs for one trial."""

    def __init__(self, cfg: TrialConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.norm = effective_normalization(cfg)

    def __call__(self, xb: torch.Tensor, params: views.ViewParams | None = None, view: str = "none") -> torch.Tensor:
        x = aug.to_float(xb)
        if params is not None:
            x = aug.apply_view(x, params)
        if view != "none":
            x = aug.tta_view(x, view)
        x = aug.normalize(aug.resize(x, self.cfg.resolution), self.norm)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# ----------------------------------------------------------------------------- the trial's data


@dataclass
class TrialData:
    """A trial's images and labels on its device, with the decoded-dataset positions of its training images."""

    host: dict[str, np.ndarray]  # train_x, train_y, val_x, ... as given
    x: dict[str, torch.Tensor]  # uint8 images on the device, per split
    y: dict[str, torch.Tensor]
    train_index: np.ndarray
    classes: tuple[str, ...]
    num_classes: int
    _digests: dict[str, str] = field(default_factory=dict)

    def count(self, split: str) -> int:
        return len(self.host[f"{split}_y"])

    def digest(self, split: str) -> str:
        """A hash of a split's pixels (and, for training, of their dataset positions, which key the views)."""
        if split not in self._digests:
            h = hashlib.sha1()
            x = self.host[f"{split}_x"]
            h.update(str((x.shape, x.dtype.str)).encode())
            h.update(np.ascontiguousarray(x).data)
            if split == "train":
                h.update(np.ascontiguousarray(self.train_index, dtype=np.int64).data)
            self._digests[split] = h.hexdigest()[:20]
        return self._digests[split]


def load_data(data, device: torch.device, classes: tuple[str, ...] | None = None) -> TrialData:
    """``data``: a ``pipeline.data.Splits``, or a dict of the six arrays (train_x, train_y, val_x, ...) and
    optionally ``train_idx`` (without it, a training image's position in the array stands for its dataset index)."""
    arrays = data.arrays() if hasattr(data, "arrays") else dict(data)
    index = data.train_idx if hasattr(data, "train_idx") else arrays.get("train_idx")
    host = {f"{s}_{k}": arrays[f"{s}_{k}"] for s in SPLITS for k in ("x", "y")}
    num_classes = int(max(host["train_y"].max(), host["val_y"].max(), host["test_y"].max())) + 1
    classes = tuple(str(c) for c in (classes or getattr(data, "classes", None) or range(num_classes)))
    with warnings.catch_warnings():  # arrays from Ray's object store are read-only; we never write to them
        warnings.simplefilter("ignore", UserWarning)
        x = {s: torch.as_tensor(host[f"{s}_x"]).to(device) for s in SPLITS}
        y = {s: torch.as_tensor(host[f"{s}_y"]).to(device) for s in SPLITS}
    train_index = np.arange(len(host["train_y"])) if index is None else np.asarray(index, dtype=np.int64)
    return TrialData(host, x, y, train_index, classes, num_classes)


# ----------------------------------------------------------------------------- feature sources


class RawImages:
    """Images through the whole model: each step augments its batch with the epoch's view, and the frozen
    stages run again in every step."""

    def __init__(self, cfg: TrialConfig, model: Classifier, data: TrialData, inputs: Inputs):
        self.cfg, self.data, self.inputs = cfg, data, inputs
        self.module: torch.nn.Module = model
        self.params = views.ViewParams()
        self.rng: np.random.Generator | None = None  # per epoch, for MixUp/CutMix

    def begin_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self.params = views.draw(cfg.augment, cfg.seed, epoch, self.data.train_index, self.inputs.device)
        self.rng = np.random.default_rng([cfg.seed, epoch, MIX_STREAM])  # MixUp/CutMix coefficients

    def prepare(self, split: str, tta_views) -> None:
        """Nothing to compute ahead (``CachedPrefix`` computes or reads its entries here)."""

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        x = self.inputs(self.data.x["train"][idx], self.params.take(idx))
        return aug.mix(x, self.data.y["train"][idx], cfg.mix, cfg.mix_alpha, self.data.num_classes, gen, self.rng)

    def eval_batches(self, split: str, view: str) -> Iterator[torch.Tensor]:
        x, bs = self.data.x[split], eval_batch(self.cfg, self.inputs.device)
        for i in range(0, len(x), bs):
            yield self.inputs(x[i:i + bs], view=view)


@dataclass
class CacheStats:
    hit: int = 0
    waited: int = 0
    computed: int = 0
    wait_seconds: float = 0.0  # waiting for another process computing an entry this trial reads

    def state(self) -> str:
        """The row's ``feature_cache_state``: hit (everything read), miss (everything computed), partial."""
        read = self.hit + self.waited
        return "hit" if not self.computed else ("miss" if not read else "partial")


class CachedPrefix:
    """Outputs of the frozen prefix (stem and the stages below the cut), computed once per view into the prefix
    cache, through the top (``module``: the stages above the cut and the head)."""

    def __init__(self, cfg: TrialConfig, model: Classifier, cut: int, data: TrialData, inputs: Inputs,
                 cache: PrefixCache, precision: Precision, stats: CacheStats):
        self.cfg, self.cut, self.data, self.inputs, self.cache = cfg, cut, data, inputs, cache
        self.precision, self.stats = precision, stats
        self.prefix = Prefix(model, cut)
        self.module: torch.nn.Module = Top(model, cut)
        self.shape = prefix_shape(self.prefix, inputs, data)
        self.base = key_base(cfg, precision, cache, cut, weights_digest(self.prefix))
        self.loaded: dict[tuple[str, str], torch.Tensor] = {}
        self.train_z: torch.Tensor | None = None
        self.train_view = ""

    def begin_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        name = views.view_name(cfg.augment, cfg.seed, epoch)
        if name != self.train_view:  # without augmentation every epoch sees the same view
            self.train_z = None  # let the previous view go first
            self.train_z = self._load("train", name, lambda: views.draw(cfg.augment, cfg.seed, epoch,
                                                                         self.data.train_index, self.inputs.device))
            self.train_view = name

    def prepare(self, split: str, tta_views) -> None:
        for view in tta_views:
            if (split, view) not in self.loaded:
                self.loaded[(split, view)] = self._load(split, f"tta:{view}", None, view)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        target = F.one_hot(self.data.y["train"][idx], self.data.num_classes).float()
        return self._rows(self.train_z[idx.to(self.train_z.device)]), target

    def eval_batches(self, split: str, view: str) -> Iterator[torch.Tensor]:
        self.prepare(split, (view,))
        z, bs = self.loaded[(split, view)], eval_batch(self.cfg, self.inputs.device)
        for i in range(0, len(z), bs):
            yield self._rows(z[i:i + bs])

    # -------------------------------------------------------- internals

    def _rows(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.inputs.device, non_blocking=True).float()
        if z.dim() == 4 and self.cfg.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        return z

    def _load(self, split: str, view_key: str, draw: Callable[[], views.ViewParams] | None,
              tta: str = "none") -> torch.Tensor:
        parts = {**self.base, "split": split, "images": self.data.digest(split), "view": view_key}
        key = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
        shape = (self.data.count(split), *self.shape)
        t = time.perf_counter()
        entry = self.cache.get_or_compute(key, shape, lambda out: self._fill(out, split, draw, tta), parts)
        setattr(self.stats, entry.state, getattr(self.stats, entry.state) + 1)
        if entry.state == "waited":
            self.stats.wait_seconds += time.perf_counter() - t
        with warnings.catch_warnings():  # a read-only memory map; never written through
            warnings.simplefilter("ignore", UserWarning)
            z = torch.from_numpy(entry.array)
        return z.to(self.inputs.device) if self.inputs.device.type != "cpu" else z

    @torch.inference_mode()
    def _fill(self, out: np.ndarray, split: str, draw: Callable[[], views.ViewParams] | None, tta: str) -> None:
        """Run the prefix over a split's images (with a view's augmentation or a TTA view) into ``out``, in batches
        of the evaluation batch (``pipeline.device.eval_batch``: per device kind unless the config sets one).
        (oneDNN's convolutions can round an image differently in batches of another size, e.g. 32 against 64, and
        training amplifies such last-bit differences; at the evaluation batch size the outputs were bit-identical
        to the plain path's in every case tested.)"""
        self.prefix.eval()
        params = draw() if draw is not None else None
        x, bs = self.data.x[split], eval_batch(self.cfg, self.inputs.device)
        with self.precision.autocast():
            for i in range(0, len(x), bs):
                rows = params.take(slice(i, i + bs)) if params is not None else None
                out[i:i + bs] = self.prefix(self.inputs(x[i:i + bs], rows, view=tta)).float().cpu().numpy()


def prefix_shape(prefix: Prefix, inputs: Inputs, data: TrialData) -> tuple[int, ...]:
    """The shape of one image's prefix output (from one blank image through the prefix, in eval mode; training
    sets its modes each epoch)."""
    prefix.eval()
    blank = torch.zeros((1, *data.x["train"].shape[1:]), dtype=torch.uint8, device=inputs.device)
    with torch.inference_mode():
        return tuple(prefix(inputs(blank)).shape[1:])


def key_base(cfg: TrialConfig, precision: Precision, cache: PrefixCache, cut: int, weights: str) -> dict:
    """What determines every entry of a trial at one cut, besides its images and view (``weights``: the prefix's
    ``weights_digest``)."""
    return {"format": PREFIX_FORMAT, "backbone": cfg.backbone, "weights": weights,
            "resolution": cfg.resolution, "normalize": effective_normalization(cfg), "precision": str(precision.dtype),
            "channels_last": cfg.channels_last, "device": precision.device.type, "storage": cache.dtype.str,
            "cut": cut, "batch": eval_batch(cfg, precision.device)}


# ----------------------------------------------------------------------------- which source a trial uses


@dataclass
class PrefixPlan:
    """Whether a trial trains on cached prefix outputs, and why (columns ``prefix_*`` of its row)."""

    path: str  # "cached" or "plain"
    reason: str
    cut: int | None = None  # stages in the prefix at the end of training
    nbytes: int = 0  # of all the cache entries the trial reads
    recompute_us_per_image: float = math.nan  # the GPU cost model's two measurements
    read_us_per_image: float = math.nan

    @property
    def cached(self) -> bool:
        return self.path == "cached"

    def metrics(self) -> dict:
        return {"prefix_path": self.path, "prefix_reason": self.reason,
                "prefix_cut": -1 if self.cut is None else self.cut, "prefix_gb": self.nbytes / 1e9,
                "prefix_recompute_us_per_image": self.recompute_us_per_image,
                "prefix_read_us_per_image": self.read_us_per_image}


def trial_entries(cfg: TrialConfig, epoch_offset: int = 0) -> set[tuple[int, str, str]]:
    """(cut, split, view) of every cache entry a trial reads: each epoch's training view and validation at that
    epoch's cut, and every TTA view of validation and test at the final cut. ``epoch_offset``: a child's epochs
    continue its parent's (``pipeline.train.Parent``), so its training views are those of the later epochs."""
    out = set()
    for epoch in range(cfg.epochs):
        cut = prefix_cut(stages_at(cfg, epoch))
        out.add((cut, "train", views.view_name(cfg.augment, cfg.seed, epoch_offset + epoch)))
        out.add((cut, "val", "none"))
    final = prefix_cut(cfg.train_stages)
    for split in ("val", "test"):
        out.update((final, split, v) for v in aug.TTA_MODES[cfg.tta])
    return out


def plan_prefix(cfg: TrialConfig, model: Classifier, data: TrialData, inputs: Inputs, cache: PrefixCache,
                precision: Precision) -> PrefixPlan:
    """Cached prefix outputs where the config allows them, the prefix has parameters to skip, the trial's
    entries fit the cache budget, and (on a GPU) reading an image's prefix output is measured faster than
    recomputing it; with several workers, only if every worker can (they must train the same module)."""
    plan = _plan_prefix(cfg, model, data, inputs, cache, precision)
    every_worker = agreed(plan.cached, inputs.device)  # a collective: every worker calls it, whatever its plan
    if plan.cached and not every_worker:
        plan.path, plan.reason = "plain", "another worker of this trial cannot use the cache"
    return plan


def _plan_prefix(cfg: TrialConfig, model: Classifier, data: TrialData, inputs: Inputs, cache: PrefixCache,
                 precision: Precision) -> PrefixPlan:
    refusal = prefix_refusal(cfg)
    final = prefix_cut(cfg.train_stages)
    if refusal:
        return PrefixPlan("plain", refusal, final)
    entries = trial_entries(cfg)
    prefixes = {cut: Prefix(model, cut) for cut, _, _ in entries}
    if any(not any(True for _ in p.parameters()) for p in prefixes.values()):
        return PrefixPlan("plain", "the frozen prefix has no parameters (nothing to skip)", final)
    shapes = {cut: prefix_shape(p, inputs, data) for cut, p in prefixes.items()}
    nbytes = sum(cache.nbytes((data.count(split), *shapes[cut])) for cut, split, _ in entries)
    if nbytes > cache.budget:
        return PrefixPlan("plain", f"its prefix outputs need {nbytes / 1e9:.2f} GB, over the cache budget of "
                                   f"{cache.budget / 1e9:.2f} GB (${BUDGET_ENV})", final, nbytes)
    plan = PrefixPlan("cached", "frozen prefix cached", final, nbytes)
    if inputs.device.type == "cuda":
        plan.recompute_us_per_image = 1e6 * recompute_seconds_per_image(prefixes[final], data, inputs, precision)
        plan.read_us_per_image = 1e6 * cache.nbytes(shapes[final]) * cache.read_seconds_per_byte()
        if plan.read_us_per_image >= plan.recompute_us_per_image:
            plan.path, plan.reason = "plain", "cost model: recomputing the prefix is faster than reading it"
        else:
            plan.reason = "cost model: reading the prefix is faster than recomputing it"
    return plan


def recompute_seconds_per_image(prefix: Prefix, data: TrialData, inputs: Inputs, precision: Precision) -> float:
    """Measured on a GPU: one batch of training images through the prefix, timed after a warm-up batch."""
    x = data.x["train"][:eval_batch(inputs.cfg, inputs.device)]
    prefix.eval()
    seconds = math.nan
    with torch.inference_mode(), precision.autocast():
        for _ in range(2):  # the first includes cuDNN's algorithm search
            torch.cuda.synchronize()
            t = time.perf_counter()
            prefix(inputs(x))
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
    return seconds / len(x)


def agreed(flag: bool, device: torch.device) -> bool:
    """With several workers (DDP), true only if every worker says so: they must train the same module."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class Sources:
    """The feature source for each freeze depth a trial trains at (two-phase trials use two)."""

    def __init__(self, cfg: TrialConfig, model: Classifier, data: TrialData, inputs: Inputs, plan: PrefixPlan,
                 cache: PrefixCache, precision: Precision):
        self.cfg, self.model, self.data, self.inputs, self.plan = cfg, model, data, inputs, plan
        self.cache, self.precision = cache, precision
        self.stats = CacheStats()
        self._made: dict[str, RawImages | CachedPrefix] = {}

    def for_stages(self, stages: str) -> RawImages | CachedPrefix:
        key = stages if self.plan.cached else "plain"
        if key not in self._made:
            self._made[key] = (CachedPrefix(self.cfg, self.model, prefix_cut(stages), self.data, self.inputs,
                                            self.cache, self.precision, self.stats)
                               if self.plan.cached else RawImages(self.cfg, self.model, self.data, self.inputs))
        return self._made[key]
