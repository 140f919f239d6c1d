"""Benchmark sections that need a CUDA device (``python -m ablations.bench --device cuda``).

* ``speed``: training images/s of ``fit`` per backbone, resolution and freeze depth, evaluation images/s and
  peak GPU memory, with the precision a GPU trial uses by default (bf16 autocast, channels_last). These rows
  replace assumed GPU speeds in ``ablations.plan.estimate`` (``examples/bench/gpu/bench.json``).
* ``precision``: the same small real trials in fp32, bf16, fp16 and bf16 + ``torch.compile``: accuracy and
  speed of each against fp32.
* ``packing``: k processes training at once on one GPU (what ``--gpus-per-trial 1/k`` does): the aggregate
  images/s against one process alone, i.e. whether packing adds throughput or only time-slices the GPU.

Nothing here needs Ray, so it runs on a GPU machine that has only torch and this checkout.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

# Each function takes progress(partial_result), called after every measurement, so that a run cut short by a
# time limit keeps what it measured.
SPEED_CASES = (("resnet18", 224), ("resnet50", 224), ("efficientnet_lite0", 224), ("efficientnet_lite0", 96),
               ("resnet18", 64), ("small_cnn", 32))
SPEED_MODES = {"frozen": "0", "partial": "1", "partial2": "2", "all": "all"}  # estimate mode -> train_stages
PRECISION_CASES = {
    "efficientnet_lite0_96_pretrained": dict(backbone="efficientnet_lite0", pretrained=True, resolution=96,
                                             train_stages="all", epochs=2),
    "resnet18_224_random_init": dict(backbone="resnet18", pretrained=False, resolution=224, train_stages="all",
                                     epochs=3),
}
PRECISION_VARIANTS = {"fp32": dict(amp="off"), "bf16": dict(amp="bf16"), "fp16": dict(amp="fp16"),
                      "bf16_compile": dict(amp="bf16", compile=True)}
PACK_CASE = dict(backbone="resnet18", pretrained=False, resolution=224, train_stages="1", augment="strong",
                 optimizer="adamw", lr=3e-4, batch_size=64)


def _splits(train_per_class: int, val_size: int, test_per_class: int):
    from pipeline import data as D

    return D.make_splits(D.load("auto"), val_size=val_size, split_seed=0, train_per_class=train_per_class,
                         test_per_class=test_per_class)


def _reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")


def bench_speed(quick: bool = False, batch: int = 64, device: str = "cuda", progress=None) -> list[dict]:
    """``fit`` on real images, 2 epochs; the second epoch's training images/s (the first includes cuDNN's
    algorithm search) and the final evaluation's images/s."""
    import torch

    from pipeline.config import TrialConfig
    from pipeline.device import amp_dtype
    from pipeline.train import fit

    steps = 4 if quick else 30
    s = _splits(batch * steps // 10 + 1, 2048 if not quick else 64, 205 if not quick else 8)
    n = batch * steps
    data = {"train_x": s.train_x[:n], "train_y": s.train_y[:n], "val_x": s.val_x, "val_y": s.val_y,
            "test_x": s.test_x, "test_y": s.test_y}
    rows = []
    for backbone, res in SPEED_CASES[:2] if quick else SPEED_CASES:
        for mode, stages in SPEED_MODES.items():
            if backbone == "small_cnn" and mode != "all":
                continue  # trained from scratch: only ever trains everything
            cfg = TrialConfig(backbone=backbone, pretrained=backbone == "efficientnet_lite0", resolution=res,
                              train_stages=stages, augment="strong", optimizer="adamw", epochs=2, batch_size=batch,
                              device=device, eval_batch_size=512, feature_cache=False)
            _reset_peak(device)
            r = fit(cfg, data)
            rows.append({"backbone": backbone, "resolution": res, "mode": mode, "train_stages": stages,
                         "batch": batch, "amp": str(amp_dtype(cfg, torch.device(device))).replace("torch.", ""),
                         "train_images_per_s": n / r.history[-1]["seconds"],
                         "eval_images_per_s": (len(s.val_y) + len(s.test_y)) / r.metrics["eval_seconds"],
                         "peak_mib": _peak_mib(device)})
            print(f"  speed {backbone} {res}px {mode}: {rows[-1]['train_images_per_s']:.0f} train img/s, "
                  f"{rows[-1]['eval_images_per_s']:.0f} eval img/s, {rows[-1]['peak_mib']:.0f} MiB", flush=True)
            if progress:
                progress(rows)
    return rows


def bench_precision(quick: bool = False, variants: tuple[str, ...] = ("fp32", "bf16", "fp16"), device: str = "cuda",
                    progress=None, into: dict | None = None) -> dict:
    """Small real trials in each precision: validation and test accuracy, speed, and the difference to fp32."""

    from pipeline.config import TrialConfig
    from pipeline.train import fit

    s = _splits(20 if quick else 500, 100 if quick else 2000, 10 if quick else 0)
    out: dict[str, Any] = into or {"train": len(s.train_y), "val": len(s.val_y), "test": len(s.test_y), "cases": {}}
    for variant in variants:  # variants outermost: a slow compile comes last for every case
        for name, case in PRECISION_CASES.items():
            rows = out["cases"].setdefault(name, {})
            cfg = TrialConfig(**{**case, **PRECISION_VARIANTS[variant], "epochs": 1 if quick else case["epochs"]},
                              augment="basic", optimizer="adamw", schedule="cosine", lr=1e-3, batch_size=64,
                              device=device, eval_batch_size=512)
            _reset_peak(device)
            t = time.perf_counter()
            try:
                r = fit(cfg, s)
            except Exception as e:  # a variant that fails is a finding, not the end of the benchmark
                rows[variant] = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"}
                print(f"  precision {name} {variant}: FAILED {rows[variant]['error']}", flush=True)
                if progress:
                    progress(out)
                continue
            rows[variant] = {"val_acc": r.metrics["val_acc"], "test_acc": r.metrics["test_acc"],
                             "seconds": time.perf_counter() - t,
                             "epoch_seconds": [h["seconds"] for h in r.history],
                             "train_images_per_s_last_epoch": len(s.train_y) / r.history[-1]["seconds"],
                             "peak_mib": _peak_mib(device)}
            ref = rows.get("fp32", {})
            if "val_acc" in ref:
                rows[variant]["val_acc_minus_fp32_pp"] = 100 * (r.metrics["val_acc"] - ref["val_acc"])
                rows[variant]["test_acc_minus_fp32_pp"] = 100 * (r.metrics["test_acc"] - ref["test_acc"])
            print(f"  precision {name} {variant}: val {r.metrics['val_acc']:.4f} test {r.metrics['test_acc']:.4f} "
                  f"{rows[variant]['seconds']:.1f} s", flush=True)
            if progress:
                progress(out)
    return out


def bench_compile(quick: bool = False, device: str = "cuda", progress=None, into: dict | None = None) -> dict:
    """bf16 + ``torch.compile`` on the precision section's trials (its rows, compared with its fp32), run last
    because compiling takes minutes."""
    return bench_precision(quick, ("bf16_compile",), device, progress, into)


def pack_worker(images: int, epochs: int, device: str = "cuda") -> dict:
    """One of k processes sharing the GPU: ``fit`` of ``PACK_CASE``; images/s of each epoch after the first."""
    from pipeline.config import TrialConfig
    from pipeline.train import fit

    s = _splits(images // 10 + 1, 512, 20)
    data = {"train_x": s.train_x[:images], "train_y": s.train_y[:images], "val_x": s.val_x, "val_y": s.val_y,
            "test_x": s.test_x, "test_y": s.test_y}
    cfg = TrialConfig(**PACK_CASE, epochs=epochs, device=device, feature_cache=False)
    t0 = time.time()
    r = fit(cfg, data)
    return {"start": t0, "end": time.time(), "epoch_images_per_s": [images / h["seconds"] for h in r.history[1:]]}


def bench_packing(quick: bool = False, ks: tuple[int, ...] = (1, 2, 4), device: str = "cuda", progress=None) -> dict:
    """k processes at once, each training ``PACK_CASE``: aggregate images/s (sum of each process's median
    epoch speed after its first) against one process alone."""
    import statistics

    images, epochs = (256, 2) if quick else (64 * 60, 4)
    _splits(images // 10 + 1, 512, 20)  # decode once before the processes start
    out: dict[str, Any] = {"case": PACK_CASE, "images": images, "epochs": epochs, "runs": {}}
    for k in ks:
        cmd = [sys.executable, "-c", f"import json; from ablations.bench.gpu import pack_worker; "
                                     f"print('PACK' + json.dumps(pack_worker({images}, {epochs}, {device!r})))"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
        results = []
        for p in procs:
            stdout, stderr = p.communicate()
            line = [ln for ln in stdout.splitlines() if ln.startswith("PACK")]
            results.append(json.loads(line[-1][4:]) if line else {"error": stderr.strip().splitlines()[-1:]})
        ok = [r for r in results if "error" not in r]
        agg = sum(statistics.median(r["epoch_images_per_s"]) for r in ok) if ok else float("nan")
        out["runs"][str(k)] = {"processes": results, "aggregate_images_per_s": agg}
        print(f"  packing k={k}: aggregate {agg:.0f} img/s", flush=True)
        if progress:
            progress(out)
    one = out["runs"].get("1", {}).get("aggregate_images_per_s")
    if one:
        out["aggregate_over_single"] = {k: v["aggregate_images_per_s"] / one for k, v in out["runs"].items()}
    return out


def gpu_machine() -> dict:
    """torch's CUDA build, the driver and the GPU, for the benchmark's header."""
    import torch

    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    try:
        out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ----------------------------------------------------------------------------- rendering (BENCH.md)


def render(name: str, result) -> list[str]:
    return {"speed": render_speed, "precision": render_precision, "packing": render_packing}[name](result)


def render_speed(rows: list[dict]) -> list[str]:
    lines = ["## Training and evaluation speed per model (`fit`, batch 64, strong augmentation, images/s)", "",
             "| model | px | mode (train_stages) | amp | train img/s | eval img/s | peak GPU MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['resolution']} | {r['mode']} ({r['train_stages']}) | {r['amp']} | "
                     f"{r['train_images_per_s']:.0f} | {r['eval_images_per_s']:.0f} | {r['peak_mib']:.0f} |")
    return lines + [""]


def render_precision(pr: dict) -> list[str]:
    lines = [f"## Precision: the same trial in fp32, bf16, fp16 and bf16 + torch.compile (train {pr['train']}, "
             f"val {pr['val']}, test {pr['test']} real images)", "",
             "| case | variant | val acc | test acc | val − fp32 (pp) | seconds | last-epoch train img/s |",
             "|---|---|---|---|---|---|---|"]
    for case, rows in pr["cases"].items():
        for variant, r in rows.items():
            if "error" in r or "skipped" in r:
                why = f"failed: {r['error']}" if "error" in r else r["skipped"]
                lines.append(f"| {case} | {variant} | {why} | | | | |")
                continue
            lines.append(f"| {case} | {variant} | {r['val_acc']:.4f} | {r['test_acc']:.4f} | "
                         f"{r.get('val_acc_minus_fp32_pp', float('nan')):+.2f} | {r['seconds']:.1f} | "
                         f"{r['train_images_per_s_last_epoch']:.0f} |")
    return lines + [""]


def render_packing(pk: dict) -> list[str]:
    lines = [f"## Packing trials on one GPU ({pk['case']['backbone']} {pk['case']['resolution']} px, "
             f"train_stages {pk['case']['train_stages']})", "", "| processes | aggregate train img/s | vs one |",
             "|---|---|---|"]
    for k, r in pk["runs"].items():
        lines.append(f"| {k} | {r['aggregate_images_per_s']:.0f} | "
                     f"{pk.get('aggregate_over_single', {}).get(k, float('nan')):.2f}x |")
    return lines + [""]
