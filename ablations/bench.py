"""``python -m ablations.bench``: our pipeline against the seeds' notebook pipeline, measured side by side.

Each comparison runs both sides in this one process, on the same model, resolution, batch size and real
CIFAR-10 images, alternating the two (A B A B ...) so that a machine that slows down or speeds up during
the run affects both, and reports medians and the ratio ours / notebook:

1. training throughput (images/s) of a full fine-tuning step, for ResNet-18 at 32 px and
   EfficientNet-Lite0 at 64 and 128 px. Notebook: per-image PIL transforms (RandomCrop with padding, flip,
   rotation, ColorJitter, Resize, ToTensor, Normalize) in a DataLoader, the plain loop, default memory
   format. Ours: ``pipeline.train`` (uint8 tensors, batched augmentation, channels_last, pinned threads).
2. a frozen-backbone level-1 trial of 5 epochs: features computed every epoch vs the feature cache, cold
   (this trial fills it) and warm (an earlier trial of the run filled it).
3. Ray's overhead per trial: empty trials (a Tune trial starting a one-worker TorchTrainer that reports
   once) with our settings (Train environment, Tune actor reuse, ``torch_backend.LazyTorchConfig``) against
   Ray's defaults, one at a time and at the default concurrency.
4. the driver's memory as trials finish: ``ablations.run`` on 40 cheap real trials, each row recording the
   driver's resident memory; the growth per trial over the second half of the run.
5. the smoke grid's wall time (``python -m ablations.run --grid smoke`` in a subprocess).

Results go to ``results/bench/bench.json`` and ``results/bench/BENCH.md`` with a description of the machine.
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
from pathlib import Path
from typing import Any, Callable

import numpy as np

SECTIONS = ("throughput", "feature_cache", "overhead", "driver_memory", "smoke")
THROUGHPUT_CASES = (("resnet18", 32), ("efficientnet_lite0", 64), ("efficientnet_lite0", 128))


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


def notebook_steps(model, loader, steps: int) -> int:
    """The plain training loop; returns the number of images trained on."""
    import torch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    seen = 0
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen


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
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def alternate(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each function once per round, in alternating order; collect their results."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(fns[name]())
    return out


def data_subset(per_class: int):
    from pipeline import data as D

    return D.make_splits(D.load("auto"), val_size=500, split_seed=0, train_per_class=per_class, test_per_class=100)


# ----------------------------------------------------------------------------- 1. throughput


def bench_throughput(backbone: str, resolution: int, steps: int, rounds: int, batch: int = 64) -> dict:
    import torch

    from pipeline import augment as aug
    from pipeline.config import TrialConfig, effective_normalization
    from pipeline.models import build_model
    from pipeline.train import fit

    threads = torch.get_num_threads()
    n = batch * steps
    s = data_subset(max(n // 10 + 1, 20))
    x, y = s.train_x[:n], s.train_y[:n]
    cfg = TrialConfig(backbone=backbone, pretrained=backbone == "efficientnet_lite0", resolution=resolution,
                      train_stages="all", augment="strong", optimizer="adamw", lr=1e-4, epochs=1,
                      batch_size=batch, device="cpu", threads=threads, eval_batch_size=256)
    data = {"train_x": x, "train_y": y, "val_x": s.val_x[:batch], "val_y": s.val_y[:batch],
            "test_x": s.test_x[:batch], "test_y": s.test_y[:batch]}
    mean, std = aug.NORMALIZATION[effective_normalization(cfg)]

    def ours() -> float:
        return fit(cfg, data).metrics["train_images_per_second"]

    def notebook(workers: int) -> Callable[[], float]:
        def run() -> float:
            from torch.utils.data import DataLoader

            torch.manual_seed(0)
            model = build_model(cfg)
            loader = DataLoader(NotebookDataset(x, y, notebook_transform(resolution, mean, std)), batch_size=batch,
                                shuffle=True, num_workers=workers, persistent_workers=False)
            t = time.perf_counter()
            seen = notebook_steps(model, loader, steps)
            return seen / (time.perf_counter() - t)
        return run

    res = alternate({"notebook_workers0": notebook(0), "notebook_workers2": notebook(2), "ours": ours}, rounds)
    med = {k: statistics.median(v) for k, v in res.items()}
    best_nb = max(med["notebook_workers0"], med["notebook_workers2"])
    return {"backbone": backbone, "resolution": resolution, "batch": batch, "images": n, "rounds": rounds,
            "images_per_s": med, "all": res, "ratio_ours_vs_best_notebook": med["ours"] / best_nb}


# ----------------------------------------------------------------------------- 2. feature cache


def bench_feature_cache(per_class: int, epochs: int) -> dict:
    import torch

    from pipeline.config import TrialConfig
    from pipeline.features import FeatureCache
    from pipeline.train import fit

    s = data_subset(per_class)
    cfg = TrialConfig(backbone="efficientnet_lite0", resolution=64, train_stages="0", epochs=epochs, lr=1e-3,
                      device="cpu", threads=torch.get_num_threads())
    out: dict[str, Any] = {"train": len(s.train_y), "val": len(s.val_y), "test": len(s.test_y), "epochs": epochs}
    with tempfile.TemporaryDirectory() as d:
        runs = {
            "no_cache": lambda: fit(cfg.replace(feature_cache=False), s),
            "cold_cache": lambda: fit(cfg, s, feature_cache=FeatureCache(d)),  # computes and stores features
            "warm_cache": lambda: fit(cfg, s, feature_cache=FeatureCache(d)),  # a later trial: reads them
        }
        for name, run in runs.items():
            r = run()
            out[name] = {"seconds": r.metrics["trial_seconds"], "val_acc": r.metrics["val_acc"],
                         "cache": r.metrics["feature_cache_state"]}
    out["speedup_warm"] = out["no_cache"]["seconds"] / out["warm_cache"]["seconds"]
    out["speedup_cold"] = out["no_cache"]["seconds"] / out["cold_cache"]["seconds"]
    return out


# ----------------------------------------------------------------------------- 3. Ray overhead


def empty_loop(loop_config: dict) -> None:
    """A Ray Train worker that reports once: what a trial costs besides its training."""
    import ray.train

    ray.train.report({"kind": "empty", "t_loop": time.time()})


def empty_trial(tune_config: dict, data: dict) -> None:
    from .trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop)


def empty_trial_stock(tune_config: dict, data: dict) -> None:
    """The same, with Ray's own ``TorchConfig`` (which imports torch in the Train controller)."""
    from ray.train.torch import TorchConfig

    from .trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop, torch_config=TorchConfig())


def bench_overhead(n_trials: int) -> dict:
    """Wall time per empty trial, our settings vs Ray's defaults, sequential and at default concurrency."""
    import ray

    from pipeline.config import TrialConfig

    from . import run as R

    res = R.Resources(cpus=1, gpus=0, workers=1, gpu_resource="GPU", concurrency=1)
    out: dict[str, Any] = {"trials": n_trials}
    settings = {"ours": (R.RAY_TRAIN_ENV, True, empty_trial), "ray_defaults": ({}, False, empty_trial_stock)}
    for name, (env, reuse, trainable) in settings.items():
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": dict(env)})
        out.setdefault("ray_init_seconds", {})[name] = time.perf_counter() - t0
        try:
            cpus = int(ray.cluster_resources()["CPU"])
            with tempfile.TemporaryDirectory() as storage:
                for conc in (1, cpus):
                    trials = [R.trial_spec(f"empty{conc}-{i}", TrialConfig(seed=i), res, storage, 0)
                              for i in range(n_trials)]
                    t = time.perf_counter()
                    R.make_tuner(trainable, {}, trials, conc, storage, [], reuse_actors=reuse).fit()
                    out.setdefault(name, {})[f"seconds_per_trial_concurrency_{conc}"] = \
                        (time.perf_counter() - t) / n_trials
        finally:
            ray.shutdown()
    out["cpus"] = cpus
    for key in out["ours"]:
        out.setdefault("ratio_ours_vs_defaults", {})[key] = out["ours"][key] / out["ray_defaults"][key]
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


# ----------------------------------------------------------------------------- 5. smoke grid


def bench_smoke() -> dict:
    wall, df = run_grid("smoke", "smoke")
    if isinstance(df, list):
        return {"error": df, "seconds": wall}
    df = df.drop_duplicates("trial_id")
    overhead = (df.s_launch_to_trainable + df.s_trainable_to_worker + df.s_worker_to_fit + df.s_fit_to_driver)
    return {"seconds": wall, "trials": len(df), "test_acc": dict(zip(df.level + "/" + df.arm, df.test_acc)),
            "median_ray_overhead_per_trial_s": float(overhead.median())}


# ----------------------------------------------------------------------------- main


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Benchmark: ours vs the seeds' notebook pipeline", "",
             f"`{report['command']}` on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, "
             f"{m['threads']} threads{', GPU ' + m['gpu'] if m.get('gpu') else ''}), {report['date']}.", ""]
    if "throughput" in report:
        lines += ["## Training throughput (full fine-tuning, batch 64, images/s, median of alternating rounds)", "",
                  "| model | px | notebook, 0 loader workers | notebook, 2 loader workers | ours | ours / best notebook |",
                  "|---|---|---|---|---|---|"]
        for r in report["throughput"]:
            ips = r["images_per_s"]
            lines.append(f"| {r['backbone']} | {r['resolution']} | {ips['notebook_workers0']:.1f} | "
                         f"{ips['notebook_workers2']:.1f} | {ips['ours']:.1f} | **{r['ratio_ours_vs_best_notebook']:.2f}x** |")
        lines.append("")
    if "feature_cache" in report:
        fc = report["feature_cache"]
        lines += [f"## Frozen level-1 trial, {fc['epochs']} epochs (EfficientNet-Lite0, 64 px; train {fc['train']}, "
                  f"val {fc['val']}, test {fc['test']} images)", "",
                  "| variant | seconds | val acc |", "|---|---|---|"]
        for k in ("no_cache", "cold_cache", "warm_cache"):
            lines.append(f"| {k.replace('_', ' ')} | {fc[k]['seconds']:.2f} | {fc[k]['val_acc']:.3f} |")
        lines += ["", f"Speed-up over no cache: warm **{fc['speedup_warm']:.1f}x**, cold {fc['speedup_cold']:.2f}x.", ""]
    if "overhead" in report:
        o = report["overhead"]
        lines += [f"## Ray overhead per empty trial ({o['trials']} trials; {o['cpus']} CPUs)", "",
                  "| setting | seconds/trial, one at a time | seconds/trial, concurrent |", "|---|---|---|"]
        conc_key = f"seconds_per_trial_concurrency_{o['cpus']}"
        for k in ("ray_defaults", "ours"):
            v = o[k]
            lines.append(f"| {k.replace('_', ' ')} | {v['seconds_per_trial_concurrency_1']:.1f} | {v[conc_key]:.1f} |")
        r = o["ratio_ours_vs_defaults"]
        lines += ["", "Ratio ours / defaults: " + ", ".join(f"{k.split('_')[-1]} at once {v:.2f}x" for k, v in r.items()), ""]
    if "driver_memory" in report:
        dm = report["driver_memory"]
        lines += ["## Driver memory", "", f"failed: {dm['error']}" if "error" in dm else
                  (f"`python -m ablations.run` on {dm['trials']} cheap real trials ({dm['seconds']:.0f} s): the "
                   f"driver's resident memory was {dm['rss_mb_after_first']:.0f} MiB after the first trial and "
                   f"{dm['rss_mb_after_last']:.0f} MiB after the last; over the second half it grew "
                   f"**{dm['kib_per_trial_second_half']:.0f} KiB per trial** (least-squares slope)."), ""]
    if "smoke" in report:
        sm = report["smoke"]
        lines += ["## Smoke grid", "", f"failed: {sm['error']}" if "error" in sm else
                  (f"`python -m ablations.run --grid smoke`: {sm['seconds']:.0f} s wall for {sm['trials']} trials "
                   f"(Ray start-up and data loading included); median Ray overhead per trial "
                   f"{sm['median_ray_overhead_per_trial_s']:.1f} s."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.bench", description=__doc__.split("\n")[0])
    p.add_argument("--only", help=f"comma-separated sections ({', '.join(SECTIONS)})")
    p.add_argument("--quick", action="store_true", help="tiny measurements (for tests); numbers are not meaningful")
    p.add_argument("--out", default="results/bench", help="folder for bench.json and BENCH.md")
    args = p.parse_args(argv)
    sections = args.only.split(",") if args.only else list(SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"error: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    report: dict[str, Any] = {"command": "python -m ablations.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    steps, rounds = (2, 1) if args.quick else (12, 3)
    if "throughput" in sections:
        cases = THROUGHPUT_CASES[:1] if args.quick else THROUGHPUT_CASES
        report["throughput"] = []
        for backbone, res in cases:
            print(f"throughput {backbone} {res} px ...", flush=True)
            report["throughput"].append(bench_throughput(backbone, res, steps, rounds))
    if "feature_cache" in sections:
        print("feature cache ...", flush=True)
        report["feature_cache"] = bench_feature_cache(20 if args.quick else 150, 2 if args.quick else 5)
    if "overhead" in sections:
        print("ray overhead ...", flush=True)
        report["overhead"] = bench_overhead(2 if args.quick else 6)
    if "driver_memory" in sections:
        print("driver memory ...", flush=True)
        report["driver_memory"] = bench_driver_memory(4 if args.quick else 40)
    if "smoke" in sections:
        print("smoke grid ...", flush=True)
        report["smoke"] = bench_smoke()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=float))
    text = markdown(report)
    (out / "BENCH.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
