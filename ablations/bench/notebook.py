"""Our pipeline against the seeds' notebook pipeline on the same model, images and batch size: training throughput,
and the prefix cache (plain, cold, warm) on level-1 and level-2 trials."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np

from ablations.bench.common import alternate, data_subset

THROUGHPUT_CASES = (("resnet18", 32), ("efficientnet_lite0", 64), ("efficientnet_lite0", 128))
GPU_THROUGHPUT_CASES = (("resnet18", 224), ("efficientnet_lite0", 224), ("efficientnet_lite0", 96))


# ----------------------------------------------------------------------------- the seeds' notebook pipeline


class NotebookDataset:
    """torchvision-style Dataset: one PIL image at a time through ``transforms.Compose``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i].transpose(1, 2, 0))), int(self.y[i])


def notebook_transform(resolution: int, mean, std):
    """The seeds' level-2 training transform (RandomCrop(32, padding=4), flip, rotation, ColorJitter,
    Resize, ToTensor, Normalize)."""
    from torchvision import transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(15),
                      T.ColorJitter(0.2, 0.2, 0.2, 0.05), T.Resize((resolution, resolution)), T.ToTensor(),
                      T.Normalize(mean, std)])


def notebook_steps(model, loader, steps: int, device="cpu") -> int:
    """The plain training loop (fp32, default memory format); returns the number of images trained on."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    seen = 0
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        seen += len(y)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return seen


def model_alone_steps(cfg, steps: int, batch: int) -> float:
    """The physical limit of a training step: forward, backward and optimizer step of the same model, precision
    and memory format as ``fit``, on one normalized batch already on the device. Returns images/s."""
    import torch
    import torch.nn.functional as F

    from pipeline.device import amp_dtype, resolve_device
    from pipeline.models import build_model, train_mode

    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, cfg.resolution, cfg.resolution, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = amp_dtype(cfg, device)
    train_mode(model, cfg.train_stages)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (cuDNN algorithm search, allocator)
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


# ----------------------------------------------------------------------------- 1. throughput


def bench_throughput(backbone: str, resolution: int, steps: int, rounds: int, batch: int = 64,
                     device: str = "cpu") -> dict:
    """Images/s of a full fine-tuning step: the notebook pipeline (0 and N loader workers), ours (``fit``), and
    the model alone (``model_alone_steps``, the physical limit)."""
    import torch

    from pipeline import augment as aug
    from pipeline.config import TrialConfig, effective_normalization
    from pipeline.models import build_model
    from pipeline.train import fit

    gpu = device == "cuda"
    threads = 0 if gpu else torch.get_num_threads()
    loader_workers = min(8, os.cpu_count() or 1) if gpu else 2
    n = batch * steps
    s = data_subset(max(n // 10 + 1, 20))
    x, y = s.train_x[:n], s.train_y[:n]
    cfg = TrialConfig(backbone=backbone, pretrained=backbone == "efficientnet_lite0", resolution=resolution,
                      train_stages="all", augment="strong", optimizer="adamw", lr=1e-4, epochs=2 if gpu else 1,
                      batch_size=batch, device=device, threads=threads, eval_batch_size=256)
    data = {"train_x": x, "train_y": y, "val_x": s.val_x[:batch], "val_y": s.val_y[:batch],
            "test_x": s.test_x[:batch], "test_y": s.test_y[:batch]}
    mean, std = aug.NORMALIZATION[effective_normalization(cfg)]

    def ours() -> float:
        # on a GPU the first epoch includes cuDNN's algorithm search: time the second
        return n / fit(cfg, data).history[-1]["seconds"]

    def notebook(workers: int) -> Callable[[], float]:
        def run() -> float:
            from torch.utils.data import DataLoader

            torch.manual_seed(0)
            model = build_model(cfg).to(device)
            loader = DataLoader(NotebookDataset(x, y, notebook_transform(resolution, mean, std)), batch_size=batch,
                                shuffle=True, num_workers=workers, persistent_workers=False, pin_memory=gpu)
            notebook_steps(model, loader, 2, device)  # warm-up
            t = time.perf_counter()
            seen = notebook_steps(model, loader, steps, device)
            return seen / (time.perf_counter() - t)
        return run

    sides = {"notebook_workers0": notebook(0), f"notebook_workers{loader_workers}": notebook(loader_workers),
             "ours": ours, "model_alone": lambda: model_alone_steps(cfg, steps, batch)}
    res = alternate(sides, rounds)
    med = {k: statistics.median(v) for k, v in res.items()}
    best_nb = max(v for k, v in med.items() if k.startswith("notebook"))
    return {"backbone": backbone, "resolution": resolution, "batch": batch, "images": n, "rounds": rounds,
            "device": device, "loader_workers": loader_workers, "images_per_s": med, "all": res,
            "ratio_ours_vs_best_notebook": med["ours"] / best_nb,
            "ours_share_of_model_alone": med["ours"] / med["model_alone"]}


# ----------------------------------------------------------------------------- 2. feature cache


def cache_runs(cfg, s, plain: str) -> dict[str, Any]:
    """The trial ``cfg`` on splits ``s`` without the prefix cache (key ``plain``), with a cold cache (this trial
    computes and stores its prefix outputs) and a warm one (an earlier trial with the same seed stored them);
    seconds, validation accuracy and where the time went, and the speed-ups over ``plain``."""
    from pipeline.prefix_cache import PrefixCache
    from pipeline.train import fit

    out: dict[str, Any] = {"train": len(s.train_y), "val": len(s.val_y), "test": len(s.test_y),
                           "epochs": cfg.epochs}
    with tempfile.TemporaryDirectory() as d:
        runs = {
            plain: lambda: fit(cfg.replace(feature_cache=False), s),
            "cold_cache": lambda: fit(cfg, s, prefix_cache=PrefixCache(d)),  # computes and stores
            "warm_cache": lambda: fit(cfg, s, prefix_cache=PrefixCache(d)),  # a later trial: reads
        }
        for name, run in runs.items():
            m = run().metrics
            out[name] = {"seconds": m["trial_seconds"], "val_acc": m["val_acc"], "test_acc": m["test_acc"],
                         "cache": m["feature_cache_state"], "path": m["prefix_path"],
                         "train_images_per_second": m["train_images_per_second"],
                         "breakdown": {k: m[k] for k in m if k.endswith("_seconds") and k != "trial_seconds"}}
            print(f"  {name}: {m['trial_seconds']:.1f} s, val acc {m['val_acc']:.4f} ({m['feature_cache_state']})",
                  flush=True)
    out["speedup_warm"] = out[plain]["seconds"] / out["warm_cache"]["seconds"]
    out["speedup_cold"] = out[plain]["seconds"] / out["cold_cache"]["seconds"]
    return out


def bench_feature_cache(per_class: int, epochs: int) -> dict:
    """Level 1: a frozen backbone, no augmentation; the cache holds its pooled features."""
    import torch

    from pipeline.config import TrialConfig

    cfg = TrialConfig(backbone="efficientnet_lite0", resolution=64, train_stages="0", epochs=epochs, lr=1e-3,
                      device="cpu", threads=torch.get_num_threads())
    return cache_runs(cfg, data_subset(per_class), "no_cache")


PREFIX_CASE = dict(backbone="efficientnet_lite0", resolution=96, train_stages="1", augment="basic", dropout=0.5,
                   weight_decay=1e-4, optimizer="adamw", schedule="cosine", lr=1e-3, batch_size=64)


def bench_prefix_cache(per_class: int, epochs: int, val_size: int = 500, test_per_class: int = 100) -> dict:
    """An L2-style trial (``PREFIX_CASE``: Lite0 at 96 px, the top stage fine-tuned, basic augmentation): the
    frozen stages every step (plain), against their outputs cached per view, cold and warm."""
    import torch

    from pipeline.config import TrialConfig

    cfg = TrialConfig(**PREFIX_CASE, epochs=epochs, device="cpu", threads=torch.get_num_threads())
    return {"case": PREFIX_CASE, **cache_runs(cfg, data_subset(per_class, val_size, test_per_class), "plain")}
