"""``python -m ablations.bench``: our pipeline against the seeds' notebook pipeline, measured side by side.

Each comparison runs both sides in this one process, on the same model, resolution, batch size and real
CIFAR-10 images, alternating the two (A B A B ...) so that a machine that slows down or speeds up during
the run affects both, and reports medians and the ratio ours / notebook:

1. training throughput (images/s) of a full fine-tuning step, for ResNet-18 at 32 px and
   EfficientNet-Lite0 at 64 and 128 px. Notebook: per-image PIL transforms (RandomCrop with padding, flip,
   rotation, ColorJitter, Resize, ToTensor, Normalize) in a DataLoader, the plain loop, default memory
   format. Ours: ``pipeline.train`` (uint8 tensors, batched augmentation, channels_last, pinned threads).
2. a frozen-backbone level-1 trial of 5 epochs: features computed every epoch vs the prefix cache, cold
   (this trial fills it) and warm (an earlier trial of the run filled it). ``prefix_cache``: the same for an
   L2-style trial (top stage fine-tuned, augmented views): plain, cold and warm.
3. Ray's overhead per trial: empty trials (a Tune trial starting a one-worker TorchTrainer that reports
   once) with our settings (Train environment, Tune actor reuse, ``torch_backend.LazyTorchConfig``) against
   Ray's defaults, one at a time and at the default concurrency. ``runner``: the same small real trials (Lite0,
   the top stage trained, one epoch) run one at a time through ``ablations.run`` with each trial runner: "train"
   (a Ray Train run per trial) and "actor" (the trial in its reused Tune actor); per trial, what its slot cost
   besides its work (prefix, training, evaluation). Also on a GPU (``--device cuda``).
4. the driver's memory as trials finish: ``ablations.run`` on 40 cheap real trials, each row recording the
   driver's resident memory; the growth per trial over the second half of the run.
4b. the driver at scale, without Ray (``driver_scale``): its session (ledger, collector, progress) fed 2,000
   synthetic trials x 10 epoch events and their final results; time and memory per event in the first and the
   last 10% of events, and what the TensorBoard callback adds per event.
5. the smoke grid's wall time (``python -m ablations.run --grid smoke`` in a subprocess).
6. how fast bad input fails (``fail_fast``): seconds until the CLI exits with its one-line error, for a bad grid,
   a bad ``--set`` and an unreachable ``--address`` (the tests bound these only against a hang).
7. ``sequential``: the adaptive-seed decision procedure simulated, no training (``ablations.stats.simulation``):
   false positives under repeated looks, naive against anytime-valid, and seeds needed against fixed designs of
   equal power, with two figures (PNG) in the output folder. Use its own ``--out`` (e.g.
   ``--only sequential --out results/bench/sequential``): a run writes only the sections it ran.

Results go to ``results/bench/bench.json`` and ``results/bench/BENCH.md`` with a description of the machine (the
committed measurements are in ``examples/bench``: ``--out examples/bench``).
``--quick`` shrinks every measurement (for tests); ``--only`` picks sections.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

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


# ----------------------------------------------------------------------------- helpers


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        from ablations.bench.gpu import gpu_machine

        out.update(gpu_machine())
    return out


def alternate(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each function once per round, in alternating order; collect their results."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(fns[name]())
    return out


def data_subset(per_class: int, val_size: int = 500, test_per_class: int = 100):
    from pipeline import data as D

    return D.make_splits(D.load("auto"), val_size=val_size, split_seed=0, train_per_class=per_class,
                         test_per_class=test_per_class)


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


# ----------------------------------------------------------------------------- 3. Ray overhead


def empty_loop(loop_config: dict) -> None:
    """A Ray Train worker that reports once: what a trial costs besides its training. With ``timeline`` in the
    config, it appends when it ran to that file (the trial's phases, ``overhead_phases``)."""
    import ray.train

    t = time.time()
    _note(loop_config["config"], {"loop": t, "trainable": loop_config.get("t_trainable_start")})
    ray.train.report({"kind": "empty", "t_loop": t})


def _note(config: dict, times: dict) -> None:
    path = config.get("timeline")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"seed": config["seed"], **times}) + "\n")


def empty_trial(tune_config: dict, data: dict) -> None:
    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop)
    _note(tune_config["trial"]["config"], {"returned": time.time()})


def overhead_phases(timeline: Path, t_fit: float) -> dict[str, float]:
    """Median seconds of each phase of sequential empty trials (concurrency 1), from their timeline: Tune
    between one trial's end and the next trial's function starting (actor start, scheduling; the first trial
    from ``t_fit``), the function starting its Train run until the worker runs the loop (controller, worker
    group, backend set-up), and the loop's report until the function returns (hand-over, worker group
    shut-down)."""
    events: dict[int, dict] = {}
    for line in timeline.read_text().splitlines():
        e = json.loads(line)
        events.setdefault(e.pop("seed"), {}).update({k: v for k, v in e.items() if v is not None})
    rows = [events[k] for k in sorted(events)]
    phases: dict[str, list[float]] = {"tune_to_trainable": [], "trainable_to_loop": [], "loop_to_returned": []}
    end = t_fit
    for r in sorted(rows, key=lambda r: r["trainable"]):
        phases["tune_to_trainable"].append(r["trainable"] - end)
        phases["trainable_to_loop"].append(r["loop"] - r["trainable"])
        phases["loop_to_returned"].append(r["returned"] - r["loop"])
        end = r["returned"]
    return {k: float(np.median(v)) for k, v in phases.items()}


def empty_trial_stock(tune_config: dict, data: dict) -> None:
    """The same, with Ray's own ``TorchConfig`` (which imports torch in the Train controller)."""
    from ray.train.torch import TorchConfig

    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop, torch_config=TorchConfig())


def bench_overhead(n_trials: int) -> dict:
    """Wall time per empty trial, our settings vs Ray's defaults, sequential and at default concurrency."""
    import ray

    from pipeline.config import TrialConfig

    from ablations.driver import tune as R
    from ablations.driver.cluster import RAY_TRAIN_ENV
    from ablations.plan.resources import Resources

    res = Resources(cpus=1, gpus=0, workers=1, gpu_resource="GPU", concurrency=1)
    out: dict[str, Any] = {"trials": n_trials}
    settings = {"ours": (RAY_TRAIN_ENV, True, empty_trial), "ray_defaults": ({}, False, empty_trial_stock)}
    for name, (env, reuse, trainable) in settings.items():
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": dict(env)})
        out.setdefault("ray_init_seconds", {})[name] = time.perf_counter() - t0
        try:
            cpus = int(ray.cluster_resources()["CPU"])
            with tempfile.TemporaryDirectory() as storage:
                timeline = Path(storage) / "timeline.jsonl"
                for conc in (1, cpus):
                    trials = [R.TrialSpec.of(f"empty{conc}-{i}", TrialConfig(seed=i), res, storage, 0)
                              for i in range(n_trials)]
                    if conc == 1 and name == "ours":
                        for t in trials:
                            t.config["timeline"] = str(timeline)
                    t, t_wall = time.perf_counter(), time.time()
                    R.make_tuner(trainable, {}, trials, conc, storage, [], reuse_actors=reuse).fit()
                    out.setdefault(name, {})[f"seconds_per_trial_concurrency_{conc}"] = \
                        (time.perf_counter() - t) / n_trials
                    if conc == 1 and name == "ours":
                        out["phases_ours_concurrency_1"] = overhead_phases(timeline, t_wall)
        finally:
            ray.shutdown()
    out["cpus"] = cpus
    for key in out["ours"]:
        out.setdefault("ratio_ours_vs_defaults", {})[key] = out["ours"][key] / out["ray_defaults"][key]
    return out


# ----------------------------------------------------------------------------- 3b. head-node memory per trial


def waiting_loop(loop_config: dict) -> None:
    """A Ray Train worker that holds its trial open for a while, so that many trials are alive at once."""
    import ray.train

    time.sleep(loop_config["config"].get("hold_s", 20.0))
    ray.train.report({"kind": "empty", "t_loop": time.time()})


def waiting_trial(tune_config: dict, data: dict) -> None:
    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=waiting_loop)


HEAD_PROCESS_KINDS = {"trial actor": ("ImplicitFunc", "waiting_trial", "run_trial"), "train controller": ("TrainController",)}


def _pss_mib(pid_dir: Path) -> float:
    """Proportional set size: resident memory with shared pages (torch's libraries, Ray's) divided among the
    processes sharing them, so that the sum over processes is what they take together."""
    for line in (pid_dir / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no Pss line")


def _ray_processes() -> dict[str, float]:
    """Memory (PSS, MiB) of this machine's Ray actor processes, by kind (from their process titles)."""
    out = {k: 0.0 for k in HEAD_PROCESS_KINDS}
    count = {k: 0 for k in HEAD_PROCESS_KINDS}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = _pss_mib(d) if title.startswith("ray::") else 0.0
        except (OSError, IndexError, ValueError):
            continue
        if not title.startswith("ray::"):
            continue
        for kind, names in HEAD_PROCESS_KINDS.items():
            if any(n in title for n in names):
                out[kind] += rss
                count[kind] += 1
    return {**{f"{k}_mib": v for k, v in out.items()}, **{f"{k}_count": c for k, c in count.items()}}


def bench_head_memory(concurrency: tuple[int, ...] = (2, 8), hold_s: float = 25.0) -> dict:
    """What one concurrent trial costs the head node, where its Tune trial actor and Ray Train controller live:
    ``concurrency`` trials held open at once (their workers sleep), the resident memory of those processes
    sampled while all are alive, per trial. Sizes the head node (cluster.yaml, README)."""
    import threading

    import ray

    from pipeline.config import TrialConfig

    from ablations.driver import tune as R
    from ablations.driver.cluster import RAY_TRAIN_ENV
    from ablations.plan.resources import Resources

    out: dict[str, Any] = {"hold_s": hold_s, "runs": {}}
    n_cpus = max(concurrency)
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, num_cpus=n_cpus,
             runtime_env={"env_vars": dict(RAY_TRAIN_ENV)})
    try:
        for n in concurrency:
            res = Resources(cpus=0.001, gpus=0, workers=1, gpu_resource="GPU", concurrency=n)
            samples: list[dict] = []
            stop = threading.Event()

            def sample():
                while not stop.wait(1.0):
                    samples.append(_ray_processes())

            with tempfile.TemporaryDirectory() as storage:
                trials = [R.TrialSpec.of(f"hold{n}-{i}", TrialConfig(seed=i), res, storage, 0) for i in range(n)]
                for t in trials:
                    t.config["hold_s"] = hold_s
                thread = threading.Thread(target=sample, daemon=True)
                thread.start()
                R.make_tuner(waiting_trial, {}, trials, n, storage, []).fit()
                stop.set()
                thread.join()
            full = [s for s in samples if s["train controller_count"] >= n and s["trial actor_count"] >= n]
            peak = max(full or samples, key=lambda s: s["trial actor_mib"] + s["train controller_mib"])
            total = peak["trial actor_mib"] + peak["train controller_mib"]
            out["runs"][str(n)] = {**peak, "all_alive": bool(full), "mib_per_trial": total / n}
            print(f"  head memory, {n} trials at once: {total / n:.0f} MiB per trial", flush=True)
    finally:
        ray.shutdown()
    out["mib_per_trial"] = max(r["mib_per_trial"] for r in out["runs"].values())
    return out


# ----------------------------------------------------------------------------- 4. driver memory

MEMORY_GRID = """\
description: many cheap real trials, to watch the driver's memory as they finish
seeds: 1
base: {train_per_class: 20, val_size: 100, test_per_class: 10}
levels:
  L3: {set: {backbone: small_cnn, pretrained: false, train_stages: all, head: mlp, resolution: 32, epochs: 1,
             batch_size: 50}}
"""


def run_grid(grid: str, name: str, *flags: str) -> tuple[float, Any]:
    """``python -m ablations.run --grid GRID`` in a subprocess into a temporary folder: (wall seconds, its
    trials.parquet as a DataFrame, or the last line of its error)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ablations.run", "--grid", grid, "--results", d, "--name", name,
                               "--no-report", *flags], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return wall, (proc.stderr.strip().splitlines()[-1:] or ["failed"])
        return wall, pd.read_parquet(Path(d) / name / "trials.parquet")


def bench_driver_memory(n_trials: int) -> dict:
    """``ablations.run`` on ``n_trials`` cheap real trials: the driver's resident memory recorded in each
    finished trial's row (``driver_rss_mb``), and its growth per trial over the second half of the run."""
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / "memory.yaml"
        grid.write_text(MEMORY_GRID)
        wall, df = run_grid(str(grid), "memory", "--seeds", str(n_trials), "--keep-models", "none")
    if isinstance(df, list):
        return {"error": df, "seconds": wall}
    rss = df.sort_values("t_fit_end").driver_rss_mb.to_numpy()
    tail = rss[len(rss) // 2:]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) if len(tail) > 1 else float("nan")
    return {"trials": len(df), "seconds": wall, "rss_mb_after_first": float(rss[0]),
            "rss_mb_after_last": float(rss[-1]), "kib_per_trial_second_half": slope * 1024}


# ----------------------------------------------------------------------------- 4b. the driver at scale

SCALE_GRID = {"description": "synthetic trials for the driver_scale section", "seeds": 1,
              "base": {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "resolution": 32,
                       "epochs": 10, "train_per_class": 20, "val_size": 200, "test_per_class": 50},
              "levels": {"L3": {"set": {"head": "mlp"}}}}


def synthetic_checkpoint(d: Path, classes: tuple[str, ...], n_val: int, n_test: int) -> Path:
    """A final checkpoint as a worker writes it (``ablations.driver.trainable``): final.json, logits.npz, model.pt."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "logits.npz", **{"val/none": rng.normal(size=(n_val, 10)).astype(np.float16),
                                  "test/none": rng.normal(size=(n_test, 10)).astype(np.float16)})
    (d / "model.pt").write_bytes(rng.bytes(16 * 1024))
    now = time.time()
    metrics = {"val_acc": 0.41, "test_acc": 0.40, "macro_f1": 0.39, "test_acc_flip": 0.42, "trainable_params": 1.2e6,
               "train_seconds": 30.0, "trial_seconds": 35.0, "eval_seconds": 2.0, "train_images_per_second": 500.0,
               "resumed_from_epoch": 0, "world_size": 1, "device_type": "cpu", "node_id": "n" * 56,
               "node_ip": "10.0.0.1", "feature_cache_state": "off", "t_trainable_start": now,
               "t_worker_start": now + 1, "t_fit_start": now + 2, "t_fit_end": now + 32,
               **{f"test_acc_{c}": 0.4 for c in classes}, **{f"f1_{c}": 0.4 for c in classes}}
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "val_loss": 2.1 / e, "val_acc": 0.04 * e,
                "lr": 1e-3, "seconds": 3.0} for e in range(1, 11)]
    (d / "final.json").write_text(json.dumps({"metrics": metrics, "history": history}))
    return d


TUNE_KEYS = {"timestamp": 0, "done": False, "date": "2026-01-01_00-00-00", "time_this_iter_s": 3.0,
             "time_total_s": 3.0, "pid": 1, "hostname": "bench", "node_ip": "10.0.0.1", "checkpoint_dir_name": None,
             "time_since_restore": 3.0, "iterations_since_restore": 1}  # what Tune adds to every result


class DriverFeed:
    """A driver session (``ablations.driver.session``: ledger, collector, progress) fed synthetic events, each
    timed (and, with ``trace_memory``, the traced memory after it); with ``tensorboard_dir`` each result also goes
    to the TensorBoard callback (``ablations.driver.trackers``), timed apart."""

    def __init__(self, plan, folder_dir: Path, concurrency: int, tensorboard_dir: Path | None, trace_memory: bool):
        from ablations.store.collector import Collector
        from ablations.store.ledger import Ledger
        from ablations.command.progress import Eta, Progress, labels
        from ablations.driver.session import Session
        from ablations.store.results import RunFolder

        self.folder = RunFolder(folder_dir)
        self.folder.path.mkdir(parents=True)
        self.ledger = Ledger(self.folder, plan)
        self.ledger.open()
        self.sink = open(os.devnull, "w")
        progress = Progress(labels(plan), self.ledger.counts, Eta({t: 35.0 for t in self.ledger.trials}, concurrency),
                            out=self.sink)
        self.session = Session(self.ledger, Collector(self.folder, "best"), progress)
        self.trace_memory = trace_memory
        self.seconds: list[float] = []
        self.memory: list[int] = []
        self.tb, self.tb_trials, self.tb_seconds = None, {}, []
        if tensorboard_dir is not None:
            from ablations.driver.trackers import tensorboard_callback

            self.tb = tensorboard_callback(tensorboard_dir)

    def timed(self, fn, *a):
        import tracemalloc

        t = time.perf_counter()
        out = fn(*a)
        self.seconds.append(time.perf_counter() - t)
        if self.trace_memory:
            self.memory.append(tracemalloc.get_traced_memory()[0])
        return out

    def to_tensorboard(self, tid: str, result: dict) -> None:
        if self.tb is not None:
            t = time.perf_counter()
            self.tb.on_trial_result(iteration=0, trials=[], trial=self.tb_trials[tid], result=result)
            self.tb_seconds.append(time.perf_counter() - t)

    def start(self, tid: str) -> None:
        self.timed(self.session.started, tid)
        if self.tb is not None:
            from ray.tune.experiment import Trial

            spec = {"trial": {"trial_id": tid, "config": self.ledger.trials[tid].to_dict()}}
            self.tb_trials[tid] = Trial("run_trial", config=spec, evaluated_params=spec, stub=True)

    def epoch(self, tid: str, e: int) -> None:
        result = {"kind": "epoch", "trial_id": tid, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e,
                  "val_loss": 2.1 / e, "val_acc": 0.04 * e, "lr": 1e-3, "seconds": 3.0, "training_iteration": e,
                  **TUNE_KEYS}
        self.timed(self.session.epoch, tid, result)
        self.to_tensorboard(tid, result)

    def finish(self, tid: str, checkpoint: Path, epochs: int) -> None:
        metrics = self.timed(self.session.finished, tid, checkpoint)
        if self.tb is not None:
            from ablations.driver.trackers import final_metrics

            self.to_tensorboard(tid, {"kind": "final", "val_acc": 0.41, "test_acc": 0.40,
                                      "training_iteration": epochs + 1, "final": final_metrics(metrics), **TUNE_KEYS})
            self.tb.on_trial_complete(iteration=0, trials=[], trial=self.tb_trials.pop(tid))


def feed_driver(n_trials: int, epochs: int, concurrency: int, folder_dir: Path, checkpoint: Path,
                tensorboard_dir: Path | None = None, trace_memory: bool = False) -> dict:
    """The events of ``n_trials`` synthetic trials, ``concurrency`` at a time (a start, ``epochs`` epoch results and
    a final result each), through a ``DriverFeed``; per-event seconds (and traced memory) in event order, and what
    reading the live tables and compacting them at the end took."""
    import tracemalloc

    from ablations.plan import grids

    plan = grids.expand("scale", SCALE_GRID, seeds=n_trials)
    feed = DriverFeed(plan, folder_dir, concurrency, tensorboard_dir, trace_memory)
    tids = list(feed.ledger.trials)
    if trace_memory:
        tracemalloc.start()
    for i in range(0, len(tids), concurrency):
        wave = tids[i:i + concurrency]
        for tid in wave:
            feed.start(tid)
        for e in range(1, epochs + 1):
            for tid in wave:
                feed.epoch(tid, e)
        for tid in wave:
            feed.finish(tid, checkpoint, epochs)
    if trace_memory:
        tracemalloc.stop()
    t = time.perf_counter()
    live = feed.folder.read_trials()  # what a report on the running run reads: the tables with the ledger folded in
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    feed.ledger.close()
    close_s = time.perf_counter() - t
    feed.sink.close()
    assert (live.status == "finished").all() and len(feed.folder.read_epochs()) == n_trials * epochs
    return {"seconds": feed.seconds, "memory": feed.memory, "tensorboard_seconds": feed.tb_seconds,
            "read_live_s": read_s, "compact_s": close_s}


def bench_driver_scale(n_trials: int = 2000, epochs: int = 10, concurrency: int = 8) -> dict:
    """Time and memory per event of the driver's own code at ``n_trials`` trials: the first 10% of events against
    the last 10%. A driver that rewrote its tables or scanned its plan per event would get slower as the run
    grows; the target is a ratio of at most 1.2."""
    from pipeline.data import CIFAR10_CLASSES

    out: dict[str, Any] = {"trials": n_trials, "epochs": epochs, "concurrency": concurrency,
                           "events": n_trials * (epochs + 2)}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = synthetic_checkpoint(d / "checkpoint", CIFAR10_CLASSES, 200, 500)
        timing = feed_driver(n_trials, epochs, concurrency, d / "timed", ckpt)
        traced = feed_driver(n_trials, epochs, concurrency, d / "traced", ckpt, trace_memory=True)
        tb = feed_driver(n_trials, epochs, concurrency, d / "tensorboard", ckpt, tensorboard_dir=d / "tb")
    n = len(timing["seconds"])
    k = max(n // 10, 1)
    first, last = timing["seconds"][:k], timing["seconds"][-k:]
    mem = traced["memory"]
    out["first_10pct"] = {"events": k, "ms_per_event": 1e3 * sum(first) / k,
                          "kib_per_event": (mem[k - 1] - mem[0]) / 1024 / max(k - 1, 1)}
    out["last_10pct"] = {"events": k, "ms_per_event": 1e3 * sum(last) / k,
                         "kib_per_event": (mem[-1] - mem[-k]) / 1024 / max(k - 1, 1)}
    out["ratio_last_over_first"] = out["last_10pct"]["ms_per_event"] / out["first_10pct"]["ms_per_event"]
    out["total_s"] = sum(timing["seconds"])
    out["traced_mib_at_end"] = mem[-1] / 2**20
    out["read_live_s"], out["compact_s"] = timing["read_live_s"], timing["compact_s"]
    tbs = tb["tensorboard_seconds"]
    out["tensorboard"] = {"ms_per_event": 1e3 * sum(tbs) / len(tbs),
                          "ms_per_trial": 1e3 * sum(tbs) / n_trials,
                          "driver_ms_per_event_with_it": 1e3 * sum(tb["seconds"]) / len(tb["seconds"])}
    return out


# ----------------------------------------------------------------------------- 4c. trial runners

RUNNER_GRID = """\
description: identical small real trials, to time what a trial costs besides its work, per trial runner
seeds: {seeds}
base: {{train_per_class: 50, val_size: 200, test_per_class: 20}}
levels:
  L2: {{set: {{backbone: efficientnet_lite0, pretrained: true, resolution: 64, train_stages: "1", epochs: 1,
              batch_size: 64}}}}
"""
WORK_COLUMNS = ("prefix_seconds", "train_seconds", "val_seconds", "eval_seconds")


def bench_runner(n_trials: int, device: str = "cpu") -> dict:
    """The same ``n_trials`` small real trials, one at a time, through ``python -m ablations.run`` with each trial
    runner ("train", then "actor"): wall time per trial, and per trial (medians) its slot time (Tune starting it
    to the driver's receipt) and the part of it that was not work."""
    flags = ["--max-concurrent", "1", "--log", "none"]
    if device == "cuda":
        flags += ["--device", "cuda", "--gpus-per-trial", "1", "--cpus-per-trial", "3"]
    out: dict[str, Any] = {"trials": n_trials, "device": device}
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / "runner.yaml"
        grid.write_text(RUNNER_GRID.format(seeds=n_trials))
        for name in ("train", "actor"):
            wall, df = run_grid(str(grid), f"runner-{name}", "--trial-runner", name, *flags)
            if isinstance(df, list):
                out[name] = {"error": df, "seconds": wall}
                continue
            df = df.drop_duplicates("trial_id").sort_values("t_fit_start")
            work = sum(df[c].fillna(0) for c in WORK_COLUMNS)
            rest = df.s_trial_wall - work
            out[name] = {"seconds": wall, "seconds_per_trial": wall / len(df),
                         "slot_s_median": float(df.s_trial_wall.median()), "work_s_median": float(work.median()),
                         "not_work_s_median": float(rest.median()), "not_work_s_first": float(rest.iloc[0]),
                         "not_work_s_later_median": float(rest.iloc[1:].median()) if len(df) > 1 else float("nan"),
                         "build_s_median": float(df.build_seconds.median())}
            print(f"  runner {name}: {wall / len(df):.1f} s per trial, {rest.median():.1f} s of each slot not work",
                  flush=True)
    if "error" not in out.get("train", {}) and "error" not in out.get("actor", {}):
        out["ratio_actor_vs_train_not_work"] = out["actor"]["not_work_s_median"] / out["train"]["not_work_s_median"]
        out["ratio_actor_vs_train_per_trial"] = out["actor"]["seconds_per_trial"] / out["train"]["seconds_per_trial"]
    return out


# ----------------------------------------------------------------------------- 5. smoke grid


def bench_smoke() -> dict:
    wall, df = run_grid("smoke", "smoke")
    if isinstance(df, list):
        return {"error": df, "seconds": wall}
    df = df.drop_duplicates("trial_id")
    overhead = (df.s_launch_to_trainable + df.s_trainable_to_worker + df.s_worker_to_fit + df.s_fit_to_driver)
    return {"seconds": wall, "trials": len(df), "test_acc": dict(zip(df.level + "/" + df.arm, df.test_acc)),
            "median_ray_overhead_per_trial_s": float(overhead.median())}


# ----------------------------------------------------------------------------- 6. failing fast

FAIL_FAST_CASES = {
    "unknown grid": ["--grid", "nope", "--dry-run"],
    "bad --set": ["--grid", "smoke", "--set", "lr=fast", "--dry-run"],
    "unreachable --address": ["--grid", "smoke", "--address", "127.0.0.1:1", "--no-report"],
}


def bench_fail_fast(rounds: int) -> dict:
    """Seconds from starting ``python -m ablations.run`` with bad input to its exit with one ``error:`` line
    (median of ``rounds``)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, args in FAIL_FAST_CASES.items():
            times, lines = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "ablations.run", *args, "--results", d],
                                      capture_output=True, text=True)
                times.append(time.perf_counter() - t)
                lines = proc.stderr.strip().splitlines()
            out[name] = {"seconds": statistics.median(times), "exit_code": proc.returncode,
                         "one_line": len(lines) == 1 and lines[0].startswith("error: ")}
    return out


# ----------------------------------------------------------------------------- rendering, one function per section


def render_throughput(rows: list[dict]) -> list[str]:
    nb = [k for k in rows[0]["images_per_s"] if k.startswith("notebook")] if rows else []
    lines = ["## Training throughput (full fine-tuning, batch 64, images/s, median of alternating rounds)", "",
             "| model | px | " + " | ".join(f"notebook, {k.split('workers')[1]} loader workers" for k in nb)
             + " | ours | model alone | ours / best notebook | ours / model alone |",
             "|---|---|" + "---|" * (len(nb) + 4)]
    for r in rows:
        ips = r["images_per_s"]
        lines.append(f"| {r['backbone']} | {r['resolution']} | " + " | ".join(f"{ips[k]:.1f}" for k in nb)
                     + f" | {ips['ours']:.1f} | {ips['model_alone']:.1f} | **{r['ratio_ours_vs_best_notebook']:.2f}x**"
                     f" | {r['ours_share_of_model_alone']:.0%} |")
    return lines + ["", "Model alone: forward, backward and optimizer step of the same model and precision on one "
                    "batch already on the device; the physical limit of any input pipeline.", ""]


def render_feature_cache(fc: dict) -> list[str]:
    lines = [f"## Frozen level-1 trial, {fc['epochs']} epochs (EfficientNet-Lite0, 64 px; train {fc['train']}, "
             f"val {fc['val']}, test {fc['test']} images)", "", "| variant | seconds | val acc |", "|---|---|---|"]
    for k in ("no_cache", "cold_cache", "warm_cache"):
        lines.append(f"| {k.replace('_', ' ')} | {fc[k]['seconds']:.2f} | {fc[k]['val_acc']:.3f} |")
    return lines + ["", f"Speed-up over no cache: warm **{fc['speedup_warm']:.1f}x**, cold {fc['speedup_cold']:.2f}x.",
                    ""]


def render_prefix_cache(pc: dict) -> list[str]:
    lines = [f"## Frozen-prefix cache: an L2-style trial, {pc['epochs']} epochs (EfficientNet-Lite0, 96 px, top "
             f"stage fine-tuned, basic augmentation; train {pc['train']}, val {pc['val']}, test {pc['test']} images)",
             "", "| variant | seconds | val acc | train img/s | prefix s | train s | val s | eval s |",
             "|---|---|---|---|---|---|---|---|"]
    for k in ("plain", "cold_cache", "warm_cache"):
        r, b = pc[k], pc[k]["breakdown"]
        lines.append(f"| {k.replace('_', ' ')} | {r['seconds']:.1f} | {r['val_acc']:.4f} | "
                     f"{r['train_images_per_second']:.0f} | {b['prefix_seconds']:.1f} | {b['train_seconds']:.1f} | "
                     f"{b['val_seconds']:.1f} | {b['eval_seconds']:.1f} |")
    return lines + ["", f"Speed-up over plain: warm **{pc['speedup_warm']:.2f}x** (a later trial of the same seed), "
                    f"cold {pc['speedup_cold']:.2f}x (the trial that computes the views).", ""]


def render_overhead(o: dict) -> list[str]:
    lines = [f"## Ray overhead per empty trial ({o['trials']} trials; {o['cpus']} CPUs)", "",
             "| setting | seconds/trial, one at a time | seconds/trial, concurrent |", "|---|---|---|"]
    conc_key = f"seconds_per_trial_concurrency_{o['cpus']}"
    for k in ("ray_defaults", "ours"):
        v = o[k]
        lines.append(f"| {k.replace('_', ' ')} | {v['seconds_per_trial_concurrency_1']:.1f} | {v[conc_key]:.1f} |")
    r = o["ratio_ours_vs_defaults"]
    lines += ["", "Ratio ours / defaults: " + ", ".join(f"{k.split('_')[-1]} at once {v:.2f}x" for k, v in r.items()),
              ""]
    if "phases_ours_concurrency_1" in o:
        ph = o["phases_ours_concurrency_1"]
        lines += ["Where an empty trial's time goes (ours, one at a time, medians): Tune between trials (trial actor, "
                  f"scheduling) {ph['tune_to_trainable']:.1f} s; the function's Train run until the worker runs the "
                  f"loop (Train controller, worker group, backend) {ph['trainable_to_loop']:.1f} s; the loop's report "
                  f"until the function returns (hand-over, worker shut-down) {ph['loop_to_returned']:.1f} s.", ""]
    return lines


def render_head_memory(hm: dict) -> list[str]:
    lines = ["## Head-node memory per concurrent trial", "",
             "Each running trial keeps a Tune trial actor and a Ray Train controller on the head node. Trials held "
             f"open {hm['hold_s']:.0f} s; memory of those processes while all were alive (PSS: shared pages divided "
             "among the processes that share them, so the sum is what they take together):", "",
             "| trials at once | trial actors MiB | Train controllers MiB | MiB per trial |", "|---|---|---|---|"]
    for n, r in hm["runs"].items():
        lines.append(f"| {n} | {r['trial actor_mib']:.0f} | {r['train controller_mib']:.0f} | "
                     f"**{r['mib_per_trial']:.0f}** |")
    return lines + ["", f"So 100 concurrent trials need about {hm['mib_per_trial'] * 100 / 1024:.0f} GiB on the head "
                    "beside Ray's own services.", ""]


def render_driver_memory(dm: dict) -> list[str]:
    return ["## Driver memory", "", f"failed: {dm['error']}" if "error" in dm else
            (f"`python -m ablations.run` on {dm['trials']} cheap real trials ({dm['seconds']:.0f} s): the driver's "
             f"resident memory was {dm['rss_mb_after_first']:.0f} MiB after the first trial and "
             f"{dm['rss_mb_after_last']:.0f} MiB after the last; over the second half it grew "
             f"**{dm['kib_per_trial_second_half']:.0f} KiB per trial** (least-squares slope)."), ""]


def render_driver_scale(ds: dict) -> list[str]:
    f, la, tb = ds["first_10pct"], ds["last_10pct"], ds["tensorboard"]
    return [f"## The driver at scale (no Ray: {ds['trials']} synthetic trials x {ds['epochs']} epochs, "
            f"{ds['concurrency']} at a time, {ds['events']} events)", "",
            "| events | ms per event | KiB per event (traced) |", "|---|---|---|",
            f"| first 10% | {f['ms_per_event']:.3f} | {f['kib_per_event']:.2f} |",
            f"| last 10% | {la['ms_per_event']:.3f} | {la['kib_per_event']:.2f} |", "",
            f"Last over first: **{ds['ratio_last_over_first']:.2f}x** (target ≤ 1.2). All events {ds['total_s']:.1f} s; "
            f"reading the live tables (ledger folded in) {ds['read_live_s']:.2f} s; compacting at the end "
            f"{ds['compact_s']:.2f} s. The TensorBoard callback adds {tb['ms_per_event']:.2f} ms per event "
            f"({tb['ms_per_trial']:.0f} ms per trial of {ds['epochs']} epochs).", ""]


def render_fail_fast(ff: dict) -> list[str]:
    lines = ["## Bad input fails fast (seconds to the one-line error, median)", "",
             "| case | seconds | exit code | one line |", "|---|---|---|---|"]
    for name, r in ff.items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['exit_code']} | {'yes' if r['one_line'] else 'NO'} |")
    return lines + [""]


def render_smoke(sm: dict) -> list[str]:
    return ["## Smoke grid", "", f"failed: {sm['error']}" if "error" in sm else
            (f"`python -m ablations.run --grid smoke`: {sm['seconds']:.0f} s wall for {sm['trials']} trials (Ray "
             f"start-up and data loading included); median Ray overhead per trial "
             f"{sm['median_ray_overhead_per_trial_s']:.1f} s."), ""]


def render_sequential(sq: dict) -> list[str]:
    from ablations.stats.simulation import markdown as sequential_markdown

    return sequential_markdown(sq)


def render_runner(r: dict) -> list[str]:
    lines = [f"## Trial runners: {r['trials']} identical small real trials, one at a time ({r['device']})", "",
             "| runner | wall s per trial | slot s per trial | of it work s | not work s (median) | not work s, "
             "first trial | not work s, later trials | model build s |", "|---|---|---|---|---|---|---|---|"]
    for name in ("train", "actor"):
        v = r.get(name, {})
        if "error" in v or not v:
            lines.append(f"| {name} | failed: {v.get('error')} | | | | | | |")
            continue
        lines.append(f"| {name} | {v['seconds_per_trial']:.1f} | {v['slot_s_median']:.1f} | {v['work_s_median']:.1f} | "
                     f"{v['not_work_s_median']:.1f} | {v['not_work_s_first']:.1f} | "
                     f"{v['not_work_s_later_median']:.1f} | {v['build_s_median']:.2f} |")
    if "ratio_actor_vs_train_not_work" in r:
        lines += ["", f"actor / train: what a slot costs besides work **{r['ratio_actor_vs_train_not_work']:.2f}x**, "
                  f"wall time per trial {r['ratio_actor_vs_train_per_trial']:.2f}x (the grid's wall includes Ray's "
                  "start and the data loading once)."]
    return [*lines, ""]


# ----------------------------------------------------------------------------- the sections: measure + render


@dataclass
class Context:
    """What a section's measurement reads: the flags, the device, the output folder and the report so far (with
    ``save``, so that a long GPU section keeps what it measured)."""

    quick: bool
    device: str
    out: Path
    report: dict
    save: Callable[[], None]

    def progress(self, key: str) -> Callable[[Any], None]:
        def f(partial):
            self.report[key] = partial
            self.save()
        return f


@dataclass(frozen=True)
class Section:
    measure: Callable[[Context], Any]
    render: Callable[[Any], list[str]]
    gpu: bool = False  # needs --device cuda
    key: str = ""  # where in the report its result goes (default: its name)


def _throughput(c: Context) -> list[dict]:
    steps, rounds = (2, 1) if c.quick else ((30, 2) if c.device == "cuda" else (12, 3))
    cases = THROUGHPUT_CASES if c.device == "cpu" else GPU_THROUGHPUT_CASES
    return [bench_throughput(b, r, steps, rounds, device=c.device) for b, r in (cases[:1] if c.quick else cases)]


def _gpu(name: str) -> Callable[[Context], Any]:
    def measure(c: Context):
        from ablations.bench import gpu

        if name == "compile":  # rows beside the precision section's, compared with its fp32
            return gpu.bench_compile(c.quick, progress=c.progress("precision"), into=c.report.get("precision"))
        return getattr(gpu, f"bench_{name}")(quick=c.quick, progress=c.progress(name))
    return measure


def _sequential(c: Context) -> dict:
    from ablations.stats.simulation import bench_sequential

    return bench_sequential(c.out, quick=c.quick)


# in the order of BENCH.md; GPU sections render in gpu.py
SECTIONS: dict[str, Section] = {
    "throughput": Section(_throughput, render_throughput),
    "speed": Section(_gpu("speed"), lambda r: gpu_render("speed", r), gpu=True),
    "precision": Section(_gpu("precision"), lambda r: gpu_render("precision", r), gpu=True),
    "packing": Section(_gpu("packing"), lambda r: gpu_render("packing", r), gpu=True),
    "compile": Section(_gpu("compile"), lambda r: [], gpu=True, key="precision"),
    "feature_cache": Section(lambda c: bench_feature_cache(20 if c.quick else 150, 2 if c.quick else 5),
                             render_feature_cache),
    "prefix_cache": Section(lambda c: bench_prefix_cache(10, 2, val_size=100, test_per_class=10) if c.quick
                            else bench_prefix_cache(1000, 4), render_prefix_cache),
    "overhead": Section(lambda c: bench_overhead(2 if c.quick else 6), render_overhead),
    "runner": Section(lambda c: bench_runner(2 if c.quick else (3 if c.device == "cuda" else 6), c.device),
                      render_runner),
    "head_memory": Section(lambda c: bench_head_memory((2,) if c.quick else (2, 8), 8.0 if c.quick else 25.0),
                           render_head_memory),
    "driver_memory": Section(lambda c: bench_driver_memory(4 if c.quick else 40), render_driver_memory),
    "driver_scale": Section(lambda c: bench_driver_scale(200 if c.quick else 2000), render_driver_scale),
    "fail_fast": Section(lambda c: bench_fail_fast(1 if c.quick else 3), render_fail_fast),
    "smoke": Section(lambda c: bench_smoke(), render_smoke),
    "sequential": Section(_sequential, render_sequential),
}
GPU_SECTIONS = tuple(k for k, s in SECTIONS.items() if s.gpu)
GPU_DEFAULT = ("speed", "precision", "throughput", "packing", "compile", "runner")


def gpu_render(name: str, result) -> list[str]:
    from ablations.bench.gpu import render

    return render(name, result)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Benchmark: ours vs the seeds' notebook pipeline", "",
             f"`{report['command']}` on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['threads']} threads"
             + (f", GPU {m['gpu']}, driver {m.get('driver', '?')}, CUDA build {m.get('torch_cuda')}" if m.get("gpu")
                else "") + f"), {report['date']}.", ""]
    for name, section in SECTIONS.items():
        if name in report and not section.key:
            lines += section.render(report[name])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    p.add_argument("--quick", action="store_true", help="tiny measurements (for tests); numbers are not meaningful")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where throughput and the GPU sections run (auto: cuda if torch sees one)")
    p.add_argument("--out", default=None, help="folder for bench.json and BENCH.md (default results/bench, "
                   "results/bench/gpu with --device cuda)")
    args = p.parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sections = args.only.split(",") if args.only else (
        [k for k, s in SECTIONS.items() if not s.gpu] if device == "cpu" else list(GPU_DEFAULT))
    error = _bad_request(device, sections, torch.cuda.is_available())
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cudnn.benchmark = True
    out = Path(args.out or ("results/bench" if device == "cpu" else "results/bench/gpu"))
    report: dict[str, Any] = {"command": "python -m ablations.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "device": device}

    def save() -> None:  # after every section, so that a run cut short keeps what it measured
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(report, indent=1, default=float))
        (out / "BENCH.md").write_text(markdown(report) + "\n")

    ctx = Context(args.quick, device, out, report, save)
    for name in sections:
        print(f"{name} ...", flush=True)
        section = SECTIONS[name]
        report[section.key or name] = section.measure(ctx)
        save()
    print(markdown(report))
    return 0


def _bad_request(device: str, sections: list[str], cuda: bool) -> str:
    """Why the sections cannot run here (one line), or ''."""
    if device == "cuda" and not cuda:
        return "--device cuda but torch sees no CUDA device"
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        return f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}"
    if device == "cpu" and set(sections) & set(GPU_SECTIONS):
        return f"sections {', '.join(GPU_SECTIONS)} need --device cuda"
    return ""
