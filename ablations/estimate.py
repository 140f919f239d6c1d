"""Rough time estimates for ``--dry-run``.

CPU speeds are per trial while two 1-thread trials share this project's 2-core AVX2 machine (fp32,
channels_last), read off ``results/cpu/trials.parquet`` (``train_images_per_second``, ``eval_seconds``,
``s_fit``) where that grid has the case (EfficientNet-Lite0 at 64 px in every mode, ResNet-18 features,
the small CNN at 32 px); the other entries are scaled from those by the models' relative cost and are
guesses. GPU numbers are a flat assumed speed-up until a benchmark on a GPU replaces them; the dry run says
which it used. Time scales with the number of pixels.
"""
from __future__ import annotations

from pipeline.augment import TTA_MODES
from pipeline.config import TrialConfig, prefix_refusal

# backbone: (reference resolution, training images/s by mode, evaluation images/s); modes: "cached" (frozen,
# head on cached features), "frozen" (frozen, features recomputed: augmentation), "partial" (top stages), "all"
CPU_SPEED = {
    "efficientnet_lite0": (64, {"cached": 40000.0, "frozen": 380.0, "partial": 215.0, "all": 108.0}, 165.0),
    "resnet18": (64, {"cached": 40000.0, "frozen": 300.0, "partial": 140.0, "all": 80.0}, 190.0),  # eval measured
    "resnet50": (64, {"cached": 40000.0, "frozen": 90.0, "partial": 40.0, "all": 25.0}, 60.0),  # guessed
    "small_cnn": (32, {"cached": 40000.0, "frozen": 2000.0, "partial": 1000.0, "all": 565.0}, 1000.0),
}
GPU_SPEEDUP = 40.0  # assumption: one datacenter GPU against one 1-thread CPU trial
# Ray Train + Tune cost per trial besides training (process starts, imports), median in results/cpu with two
# trials sharing the 2 cores, measured before the torch-free Train controller (an empty trial alone: 9 s then,
# 7.4 s now, see results/bench/BENCH.md), so estimates lean long
TRIAL_OVERHEAD_S = 16.0


def _mode(cfg: TrialConfig) -> str:
    """The speed class of a trial. Frozen-prefix caching of augmented views and of partly fine-tuned trials is not
    modelled here: their first trial per view pays the full price, later ones less, so estimates lean long."""
    if cfg.train_stages == "0":
        return "cached" if prefix_refusal(cfg) is None and cfg.augment == "none" else "frozen"
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
