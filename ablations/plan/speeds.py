"""The measured speeds behind the dry run's estimate and the ETA (``ablations.plan.estimate``), each with its source.

* ``CPU``: per backbone, on this project's 2-core AVX2 machine, per trial while two 1-thread trials share it
  (fp32, channels_last, evaluation in batches of 64): forward images/s at a reference resolution, the share of the
  forward time in the stem and each of the 4 stages (timed part by part on a batch of 64), and a trained image's
  cost over its forward pass in the stages that train (backward, optimizer, augmentation). Forward speeds and
  ``train_mult`` from the cpu grids' trials (examples/cpu).
* ``GPU``: per GPU model, per backbone and resolution: ``fit``'s training images/s per mode ("frozen",
  "partial" = train_stages 1, "partial2" = 2..4, "all") and evaluation images/s of one trial alone (bf16
  autocast, channels_last, batch 64, strong augmentation). H100: ``python -m ablations.bench --device cuda``
  (examples/bench/gpu, Ray-free). H200: trials run through Ray by ``scripts/gpu_ray_check.sh`` (examples/gpu; the
  second epoch, after cuDNN's autotuning); what that run did not measure is the H100 number scaled by the measured
  H200 / H100 ratio, and ``GPU_NOTES`` says so.
* ``TRIAL_OVERHEAD_S``: what a trial costs besides its work, per (device kind, trial runner): Ray's start of the
  trial, on a GPU the new process's CUDA context and cuDNN's autotuning in the first epoch.
* ``PACKING_GAIN``: per GPU model, the throughput of k trials sharing one GPU, in units of one trial alone.

A backbone without a measured speed is estimated from one that has one (``cpu_speed``, ``gpu_table``), with a
note the dry run prints; it never stops the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass


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

CPU: dict[str, CpuSpeed] = {
    "efficientnet_lite0": CpuSpeed(64, 330.0, (0.025, 0.493, 0.101, 0.205, 0.175), 3.7),
    "resnet18": CpuSpeed(64, 300.0, (0.074, 0.164, 0.133, 0.167, 0.461), 3.8),
    "resnet50": CpuSpeed(64, 90.0, (0.074, 0.164, 0.133, 0.167, 0.461), 3.8),
    "small_cnn": CpuSpeed(32, 3400.0, (0.001, 0.246, 0.278, 0.227, 0.248), 6.2),
}
CPU_NOTES = {"resnet50": "CPU speed scaled from ResNet-18 by the models' relative cost (a guess)"}

_H100: dict[str, GpuSpeed] = {
    "efficientnet_lite0": {
        96: ({"frozen": 5606.0, "partial": 3785.0, "partial2": 2669.0, "all": 1813.0}, 48434.0),
        224: ({"frozen": 5991.0, "partial": 3411.0, "partial2": 2178.0, "all": 1745.0}, 17023.0)},
    "resnet18": {
        64: ({"frozen": 7456.0, "partial": 6467.0, "partial2": 6017.0, "all": 4035.0}, 121111.0),
        224: ({"frozen": 8353.0, "partial": 6632.0, "partial2": 6751.0, "all": 5037.0}, 32212.0)},
    "resnet50": {224: ({"frozen": 7111.0, "partial": 4862.0, "partial2": 2932.0, "all": 2485.0}, 12455.0)},
    "small_cnn": {
        32: ({"frozen": 6610.0, "partial": 6610.0, "partial2": 6610.0, "all": 6610.0}, 18748.0),
        # not measured: at 224 px (the seeds' setting) its convolutions cost ~0.74 GFLOP per image against
        # ResNet-18's 1.8, on activations as large as ResNet-18's; assumed as fast as ResNet-18 ("all")
        224: ({"frozen": 5037.0, "partial": 5037.0, "partial2": 5037.0, "all": 5037.0}, 32212.0)},
}

# H200 through Ray (examples/gpu/gpu1, 2026-12-04): ResNet-18 at 224 px, randomly initialised, strong augmentation,
# 9,000 training images, the second epoch: the last stage trained (L2) 9,000 / 1.520 s = 5,921 img/s, with the fusion
# head (L3) 9,000 / 1.523 s = 5,909; frozen without augmentation on the plain path (nocache L1) 10,374 img/s.
H200_OVER_H100 = 5921.0 / 6632.0  # the one mode measured on both: ResNet-18 224 px, partial
_H200_MEASURED: dict[str, dict[int, dict[str, float]]] = {"resnet18": {224: {"frozen": 10374.0, "partial": 5921.0}}}


def _scaled(table: dict[str, GpuSpeed], factor: float) -> dict[str, GpuSpeed]:
    return {b: {r: ({m: v * factor for m, v in modes.items()}, ev * factor) for r, (modes, ev) in res.items()}
            for b, res in table.items()}


def _h200() -> dict[str, GpuSpeed]:
    table = _scaled(_H100, H200_OVER_H100)
    for b, res in _H200_MEASURED.items():
        for r, modes in res.items():
            table[b][r][0].update(modes)
    return table


GPU: dict[str, dict[str, GpuSpeed]] = {"H100": _H100, "H200": _h200()}
GPU_NOTES = {
    ("H100", "small_cnn"): "GPU speed at 224 px assumed equal to ResNet-18's",
    ("H200", "*"): (f"H200: ResNet-18 224 px frozen and last-stage training measured through Ray; the rest is the "
                    f"H100's bench speed x {H200_OVER_H100:.2f} (the measured H200 / H100 ratio)"),
}
# the name torch reports for each table's GPU (torch.cuda.get_device_name), to pick the table of the local GPU
GPU_NAMES = {"H100": "NVIDIA H100", "H200": "NVIDIA H200"}
DEFAULT_GPU = "H100"

# k trials on one GPU: their throughput together, in units of one trial alone. H100: the Ray-free bench
# (ResNet-18 224 px, last stage, k processes). H200: through Ray (examples/gpu/gpu4), 4 packed trials each trained
# at 0.88-1.09x its speed alone in its second epoch (L1, L2, L3 against gpu1): about 4 at k = 4, one sample.
PACKING_GAIN: dict[str, dict[int, float]] = {"H100": {1: 1.0, 2: 1.44, 4: 2.64}, "H200": {1: 1.0, 4: 3.9}}

# seconds a trial costs besides its work, per (device kind, runner).
# cpu/train: median in examples/cpu (two trials sharing the 2 cores; an empty trial alone costs 7.4 s,
#   examples/bench/BENCH.md), so estimates lean long.
# cpu/actor: python -m ablations.bench --only runner (examples/bench/runner): 6 small trials one at a time on the
#   2-core machine, wall time per trial less its work: 2.9 s in the reused actor (0.2 s of the slot, the rest Tune
#   between trials and Ray's start shared out), 14.1 s as Ray Train runs.
# cuda/train: H200 through Ray (examples/gpu/gpu1): Ray's start of the trial 16.4 s (median), the new process's CUDA
#   context and model build 6.1 s, cuDNN's autotuning in the first epoch 1.9 s (median over L1, L2, L3), the result
#   back 0.3 s.
# cuda/actor: not measured on a GPU yet; taken as cuda/train (conservative).
TRIAL_OVERHEAD_S: dict[tuple[str, str], float] = {
    ("cpu", "train"): 16.0, ("cpu", "actor"): 3.0,
    ("cuda", "train"): 24.7, ("cuda", "actor"): 24.7,
}
OVERHEAD_NOTES = {("cuda", "actor"): "a trial in its reused actor on a GPU: overhead not yet measured (taken as "
                                     "a Ray Train run's)"}

# seconds from a run's start to its first trial training, once per run: the local Ray instance's start, Tune's, the
# first trial processes (torch imported) and the model's first build. Measured on the 2-core CPU machine (from
# run.json's session and the trials' t_fit_start): 8.4-11.3 s in examples/smoke, cpu and bn_pilot; 34 s with two
# busy processes beside the run (tests/test_own_data.py's tiny run). Taken as 15 s, between the two. On a GPU not
# measured apart from TRIAL_OVERHEAD_S (which holds each trial's CUDA start): taken as the CPU machine's.
RUN_START_S: dict[str, float] = {"cpu": 15.0, "cuda": 15.0}
RUN_START_NOTES = {"cuda": "the run's start (Ray's local instance) measured on the CPU machine, not on a GPU"}

# a backbone without GPU speeds: its CPU forward speed times this (the median of measured backbones' GPU training
# speed at 224 px over their CPU forward speed at 224 px), stated in the dry run
def _gpu_per_cpu() -> float:
    ratios = []
    for b, res in _H100.items():
        if b in CPU and 224 in res:
            cpu = CPU[b]
            ratios.append(res[224][0]["partial"] / (cpu.forward * (cpu.resolution / 224) ** 2))
    ratios.sort()
    return ratios[len(ratios) // 2]


GPU_PER_CPU = _gpu_per_cpu()
FALLBACK_CPU = "resnet18"  # a backbone without a CPU speed is estimated as this one


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
