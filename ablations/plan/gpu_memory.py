"""How much GPU memory a trial needs at its peak, from measured peaks, for ``--gpus-per-trial auto``
(``ablations.plan.packing``), and how much memory each GPU model of the speed tables has.

``PEAK_MIB``: per backbone and resolution, the most memory one trial's process allocated on the GPU
(``torch.cuda.max_memory_allocated``, the ``gpu_peak_mib`` of every trial row) at batch 64, bf16 autocast,
channels_last, with the whole backbone frozen (train_stages 0: the prefix cache's fills) and with stages trained
(the most over train_stages 1, 2 and all). Sources: ``python -m ablations.bench --device cuda`` on an H100
(examples/bench/gpu, Ray-free ``fit``) and the trials through Ray on an H200 (examples/gpu: ResNet-18 at 224 px,
3,290-3,486 MiB); where both measured a cell, the larger. What the CUDA context and torch's caching allocator hold
beyond it is the packing's margin, not part of these numbers.

A config the table does not hold is estimated from it, on the safe side, with a note: the nearest measured
resolution at or above its own (smaller inputs are taken as no smaller), above the largest scaled by pixels; a
larger batch scaled by its size; a backbone without measurements as the heaviest measured one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pipeline.config import TrialConfig

# {backbone: {resolution: (frozen MiB, trained MiB)}} at batch 64
PEAK_MIB: dict[str, dict[int, tuple[float, float]]] = {
    "resnet18": {64: (306.0, 431.0), 224: (3355.0, 3486.0)},
    "resnet50": {224: (3251.0, 3332.0)},
    "efficientnet_lite0": {96: (1878.0, 800.0), 224: (8773.0, 3723.0)},
    "small_cnn": {32: (202.0, 202.0)},
}
PEAK_BATCH = 64

# each table's GPU, as nvidia-smi reports its memory (examples/bench/gpu/env.txt: H100 80GB HBM3;
# examples/gpu/env.txt: H200)
GPU_MEMORY_MIB = {"H100": 81559.0, "H200": 143771.0}


@dataclass(frozen=True)
class Peak:
    """A trial's peak GPU memory (MiB), what it is of, and a note where it is not a measurement of that config."""

    mib: float
    what: str
    note: str = ""


def _backbone_peak(backbone: str, resolution: int, frozen: bool) -> tuple[float, str]:
    table = PEAK_MIB[backbone]
    above = [r for r in table if r >= resolution]
    ref = min(above) if above else max(table)
    mib = table[ref][0 if frozen else 1]
    if resolution > ref:
        return mib * (resolution / ref) ** 2, f"scaled by pixels from its {ref} px peak"
    return mib, "" if ref == resolution else f"taken as its {ref} px peak"


def trial_peak(cfg: TrialConfig) -> Peak:
    """The peak GPU memory of one trial of ``cfg`` (``PEAK_MIB``, estimated where not measured)."""
    frozen = cfg.train_stages == "0"
    what = f"{cfg.backbone} at {cfg.resolution} px, batch {cfg.batch_size}, {'frozen' if frozen else 'trained'}"
    if cfg.backbone in PEAK_MIB:
        mib, note = _backbone_peak(cfg.backbone, cfg.resolution, frozen)
    else:
        mib, heaviest = max((_backbone_peak(b, cfg.resolution, frozen)[0], b) for b in PEAK_MIB)
        note = f"no measured peak: taken as {heaviest}'s"
    if cfg.batch_size > PEAK_BATCH:
        mib *= cfg.batch_size / PEAK_BATCH
        note = "; ".join(n for n in (note, f"scaled from batch {PEAK_BATCH}") if n)
    return Peak(mib, what, note)


def heaviest(configs: Iterable[TrialConfig]) -> Peak | None:
    """The planned trial with the largest peak (None for no trials)."""
    peaks = [trial_peak(c) for c in configs]
    return max(peaks, key=lambda p: p.mib) if peaks else None
