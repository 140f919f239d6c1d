"""How much GPU memory a trial needs at its peak, for ``--gpus-per-trial auto`` (``ablations.plan.packing``), and how
much memory each GPU model of the speed tables has; both from ``measured.yaml``, with their sources.

``PEAK_MIB``: per backbone and resolution, the most memory one trial's process allocated on the GPU
(``torch.cuda.max_memory_allocated``, the ``gpu_peak_mib`` of every trial row) at batch ``PEAK_BATCH``, with the
whole backbone frozen (train_stages 0: the prefix cache's fills) and with stages trained (the most over
train_stages 1, 2 and all). What the CUDA context and torch's caching allocator hold beyond it is the packing's
margin, not part of these numbers.

A config the table does not hold is estimated from it, on the safe side, with a note: the nearest measured
resolution at or above its own (smaller inputs are taken as no smaller), above the largest scaled by pixels; a
larger batch scaled by its size; a backbone without measurements as the heaviest measured one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pipeline.config import TrialConfig

from ablations.plan.speeds import M

# {backbone: {resolution: (frozen MiB, trained MiB)}} at batch PEAK_BATCH (measured.yaml's gpu_peak_mib)
PEAK_MIB: dict[str, dict[int, tuple[float, float]]] = {
    b: {int(r): (float(v[0]), float(v[1])) for r, v in res.items()} for b, res in M["gpu_peak_mib"]["peaks"].items()}
PEAK_BATCH = int(M["gpu_peak_mib"]["batch"])

# each GPU model's memory, as nvidia-smi reports it (measured.yaml)
GPU_MEMORY_MIB = {name: float(m["memory_mib"]) for name, m in M["gpu"].items() if isinstance(m, dict)}


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
