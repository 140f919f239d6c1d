"""Rough time estimates for ``--dry-run``.

CPU numbers were measured on this project's 2-core AVX2 CI machine (fp32, channels_last, 2 threads;
``python -m ablations.bench`` re-measures them). GPU numbers are assumptions for a single modern
datacenter GPU with bf16 autocast until a benchmark on one replaces them; the dry run says which it used.
"""
from __future__ import annotations

from pipeline.augment import TTA_MODES
from pipeline.config import TrialConfig

# (reference resolution, training images/s by mode, eval images/s) on the 2-core CPU;
# modes: "cached" (frozen, features cached), "frozen", "partial" (top stages), "all"
CPU_SPEED = {
    "efficientnet_lite0": (64, {"cached": 2500.0, "frozen": 335.0, "partial": 165.0, "all": 140.0}, 280.0),
    "resnet18": (64, {"cached": 2500.0, "frozen": 250.0, "partial": 110.0, "all": 85.0}, 260.0),
    "resnet50": (64, {"cached": 2500.0, "frozen": 70.0, "partial": 30.0, "all": 22.0}, 75.0),
    "small_cnn": (32, {"cached": 20000.0, "frozen": 5000.0, "partial": 2500.0, "all": 1400.0}, 5000.0),
}
GPU_SPEEDUP = 40.0  # assumption: one datacenter GPU vs the 2-core CPU
TRIAL_OVERHEAD_S = 20.0  # Ray actors + torch import per trial, measured on the 2-core CPU


def _mode(cfg: TrialConfig) -> str:
    if cfg.train_stages == "0":
        cached = cfg.feature_cache and cfg.augment == "none" and cfg.mix == "none"
        return "cached" if cached else "frozen"
    return "all" if cfg.train_stages == "all" else "partial"


def trial_seconds(cfg: TrialConfig, n_train: int, n_val: int, n_test: int, gpu: bool) -> float:
    ref_res, train_speed, eval_speed = CPU_SPEED[cfg.backbone]
    scale = (cfg.resolution / ref_res) ** 2
    train = n_train * cfg.epochs * scale / train_speed[_mode(cfg)]
    views = len(TTA_MODES[cfg.tta])
    evals = (n_val * cfg.epochs + (n_val + n_test) * views) * scale / eval_speed
    if _mode(cfg) == "cached":  # features once, the epochs are nearly free
        evals = (n_train + (n_val + n_test) * views) * scale / eval_speed
    compute = train + evals
    return TRIAL_OVERHEAD_S + (compute / GPU_SPEEDUP if gpu else compute)
