"""``--gpus-per-trial auto``: how many one-worker trials share one GPU.

As many as the GPU's memory holds at the heaviest planned trial's peak (``ablations.plan.gpu_memory``), with a margin,
and no more than the CPUs beside each GPU can feed (``--cpus-per-trial`` each) or ``MAX_TRIALS_PER_GPU``. A batch-64
trial leaves a large GPU mostly idle, so packing is where the speed of one GPU comes from (examples/gpu: four
trials on an H200 each ran at 0.88-1.09x their speed alone). Without the GPU's memory (no --gpu-memory and the
preflight has not measured it yet, or the node has no usable CUDA) it is one trial per GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# of a GPU's memory, the share trials are planned into (the rest for other processes on the GPU)
GPU_USABLE_SHARE = 0.9
# a trial's footprint over its measured peak (torch.cuda.max_memory_allocated): torch's caching allocator holds
# more than is allocated at any moment (fragmentation, cuDNN's autotuning workspaces) ...
PEAK_MARGIN = 1.25
# ... and each process has its CUDA context and the cuDNN / cuBLAS handles outside torch's allocator
CONTEXT_MIB = 1024.0
# the most trials per GPU auto packs: the most measured together (4 on an H200 through Ray, 4 on an H100 in the
# Ray-free bench); beyond it the gain is not known (--gpus-per-trial 0.125 asks for 8)
MAX_TRIALS_PER_GPU = 4


@dataclass(frozen=True)
class Packing:
    per_gpu: int
    reason: str

    @property
    def share(self) -> float:
        """The GPU share of one trial (Ray counts resources in steps of 0.0001)."""
        return math.floor(1e4 / self.per_gpu) / 1e4


def footprint_mib(peak_mib: float) -> float:
    """The GPU memory one trial is planned to take."""
    return peak_mib * PEAK_MARGIN + CONTEXT_MIB


def decide(gpu_mib: float | None, peak_mib: float, peak_what: str, cpus_per_gpu: float | None,
           cpus_per_trial: float, gpu: str = "GPU", free_mib: float | None = None) -> Packing:
    """Trials per GPU from the GPU's memory (``gpu_mib``; ``free_mib``: what was free on it, where measured),
    the heaviest trial's peak, and the CPUs per GPU (None: not known, no cap)."""
    if gpu_mib is None:
        return Packing(1, f"1 trial per {gpu}: its memory is not known (--gpu-memory GIB states it)")
    usable = gpu_mib * GPU_USABLE_SHARE
    if free_mib is not None and free_mib < usable:
        usable = free_mib
    fits = int(usable // footprint_mib(peak_mib))
    limits = [(fits, f"memory holds {fits} ({usable:,.0f} of {gpu_mib:,.0f} MiB / ({peak_mib:,.0f} MiB peak of "
                     f"{peak_what} x {PEAK_MARGIN:g} + {CONTEXT_MIB:,.0f} MiB))"),
              (MAX_TRIALS_PER_GPU, f"at most {MAX_TRIALS_PER_GPU} (the most measured together)")]
    if cpus_per_gpu is not None:
        by_cpu = int(cpus_per_gpu / cpus_per_trial + 1e-9)
        limits.append((by_cpu, f"CPUs feed {by_cpu} ({cpus_per_gpu:g} per GPU, {cpus_per_trial:g} per trial)"))
    n = max(1, min(k for k, _ in limits))
    risk = " (the heaviest trial may not fit in its memory)" if fits < 1 else ""
    return Packing(n, f"{n} trial(s) per {gpu}{risk}: " + "; ".join(w for _, w in limits))
