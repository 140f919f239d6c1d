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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ablations.bench.common import machine
from ablations.bench.notebook import (
    GPU_THROUGHPUT_CASES,
    THROUGHPUT_CASES,
    bench_feature_cache,
    bench_prefix_cache,
    bench_throughput,
)
from ablations.bench.render import (
    render_driver_memory,
    render_driver_scale,
    render_fail_fast,
    render_feature_cache,
    render_head_memory,
    render_overhead,
    render_prefix_cache,
    render_runner,
    render_sequential,
    render_smoke,
    render_throughput,
)
from ablations.bench.runs import bench_driver_memory, bench_fail_fast, bench_runner, bench_smoke
from ablations.driver.measure import bench_driver_scale, bench_head_memory, bench_overhead

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
