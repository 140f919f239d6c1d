"""The measured speeds behind the dry run's estimate and the ETA (``ablations.plan.estimate``), read from
``measured.yaml`` beside this module, where each number has its source.

* ``CPU``: per backbone, forward images/s at a reference resolution, the share of the forward time in the stem and
  each of the 4 stages, and a trained image's cost over its forward pass (``train_mult``).
* ``GPU``: per GPU model, per backbone and resolution: training images/s per mode ("frozen", "partial" =
  train_stages 1, "partial2" = 2..4, "all") and evaluation images/s of one trial alone. A model measured only in
  part (``scaled_from``) takes another model's table times the ratio of the mode measured on both, with its own
  measurements over it; ``GPU_NOTES`` says so.
* ``TRIAL_OVERHEAD_S``: what a trial costs besides its work, per (device kind, trial runner); ``RUN_START_S``: a
  run's start, once; ``PACKING_GAIN``: per GPU model, the throughput of k trials sharing one GPU, in units of one
  trial alone.

A backbone without a measured speed is estimated from one that has one (``cpu_speed``, ``gpu_table``), with a
note the dry run prints; it never stops the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml


def measurements() -> dict[str, Any]:
    """``measured.yaml``: the measurements with their sources."""
    return yaml.safe_load(resources.files("ablations.plan").joinpath("measured.yaml").read_text())


M = measurements()


@dataclass(frozen=True)
class CpuSpeed:
    resolution: int
    forward: float
    shares: tuple[float, float, float, float, float]
    train_mult: float

    def prefix_share(self, cut: int | None) -> float:
        """The share of the forward time in the stem and the first ``cut`` stages (None: nothing frozen)."""
        return 0.0 if cut is None else sum(self.shares[:cut + 1])


# {resolution: ({mode: training images/s}, evaluation images/s)}
GpuSpeed = dict[int, tuple[dict[str, float], float]]

CPU: dict[str, CpuSpeed] = {b: CpuSpeed(int(v["resolution"]), float(v["forward"]), tuple(map(float, v["shares"])),
                                         float(v["train_mult"])) for b, v in M["cpu"]["speeds"].items()}
CPU_NOTES: dict[str, str] = dict(M["cpu"].get("notes") or {})
FALLBACK_CPU: str = M["cpu"]["fallback"]

DEFAULT_GPU: str = M["gpu"]["default"]
_MODELS = {k: v for k, v in M["gpu"].items() if isinstance(v, dict)}
GPU_NAMES: dict[str, str] = {k: v["torch_name"] for k, v in _MODELS.items()}


def _table(speeds: dict) -> dict[str, GpuSpeed]:
    return {b: {int(r): ({m: float(x) for m, x in e["train"].items()}, float(e["eval"])) for r, e in res.items()}
            for b, res in speeds.items()}


def _scaled(table: dict[str, GpuSpeed], factor: float) -> dict[str, GpuSpeed]:
    return {b: {r: ({m: v * factor for m, v in modes.items()}, ev * factor) for r, (modes, ev) in res.items()}
            for b, res in table.items()}


def _gpu_tables() -> tuple[dict[str, dict[str, GpuSpeed]], dict[tuple[str, str], str], dict[str, float]]:
    """Every model's table; the notes per (model, backbone or '*'); the ratio a model scaled from another took."""
    tables, notes, ratios = {}, {}, {}
    for name, m in _MODELS.items():
        if "speeds" in m:
            tables[name] = _table(m["speeds"])
    for name, m in _MODELS.items():
        if "scaled_from" in m:
            s = m["scaled_from"]
            ratio = float(s["measured"]) / tables[s["gpu"]][s["backbone"]][int(s["resolution"])][0][s["mode"]]
            table = _scaled(tables[s["gpu"]], ratio)
            for b, res in (m.get("measured") or {}).items():
                for r, modes in res.items():
                    table[b][int(r)][0].update({k: float(v) for k, v in modes.items()})
            tables[name], ratios[name] = table, ratio
    for name, m in _MODELS.items():
        for backbone, text in (m.get("notes") or {}).items():
            notes[(name, backbone)] = text.format(ratio=ratios.get(name, 1.0))
    return tables, notes, ratios


GPU, GPU_NOTES, _RATIOS = _gpu_tables()
H200_OVER_H100 = _RATIOS.get("H200", 1.0)

PACKING_GAIN: dict[str, dict[int, float]] = {g: {int(k): float(v) for k, v in e["gains"].items()}
                                             for g, e in M["packing_gain"].items()}

TRIAL_OVERHEAD_S: dict[tuple[str, str], float] = {(d, r): float(e["seconds"]) for d, runners in
                                                  M["trial_overhead_s"].items() for r, e in runners.items()}
OVERHEAD_NOTES: dict[tuple[str, str], str] = {(d, r): e["note"] for d, runners in M["trial_overhead_s"].items()
                                              for r, e in runners.items() if e.get("note")}
RUN_START_S: dict[str, float] = {d: float(e["seconds"]) for d, e in M["run_start_s"].items()}
RUN_START_NOTES: dict[str, str] = {d: e["note"] for d, e in M["run_start_s"].items() if e.get("note")}


def _gpu_per_cpu() -> float:
    """A backbone without GPU speeds: its CPU forward speed times this, the median of the measured backbones' GPU
    training speed at 224 px over their CPU forward speed at 224 px (stated in the dry run)."""
    ratios = []
    for b, res in GPU[DEFAULT_GPU].items():
        if b in CPU and 224 in res:
            cpu = CPU[b]
            ratios.append(res[224][0]["partial"] / (cpu.forward * (cpu.resolution / 224) ** 2))
    ratios.sort()
    return ratios[len(ratios) // 2]


GPU_PER_CPU = _gpu_per_cpu()


def cpu_speed(backbone: str) -> tuple[CpuSpeed, str]:
    """(the backbone's CPU speed, a note where it is not its own measurement)."""
    if backbone in CPU:
        return CPU[backbone], CPU_NOTES.get(backbone, "")
    return CPU[FALLBACK_CPU], f"{backbone}: no measured CPU speed, estimated as {FALLBACK_CPU}"


def gpu_table(backbone: str, gpu: str) -> tuple[GpuSpeed, str]:
    """(the backbone's GPU speeds on ``gpu``, a note where they are not measurements of it)."""
    table = GPU.get(gpu, GPU[DEFAULT_GPU])
    note = GPU_NOTES.get((gpu, backbone), GPU_NOTES.get((gpu, "*"), ""))
    if backbone in table:
        return table[backbone], note
    cpu, _ = cpu_speed(backbone)
    train = cpu.forward * (cpu.resolution / 224) ** 2 * GPU_PER_CPU
    return ({224: ({m: train for m in ("frozen", "partial", "partial2", "all")}, train * 5)},
            f"{backbone}: no measured GPU speed, estimated as its CPU speed x {GPU_PER_CPU:.0f}")
