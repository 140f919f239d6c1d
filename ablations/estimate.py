"""Time estimates for ``--dry-run``, from measured per-model speeds.

CPU: per trial while two 1-thread trials share this project's 2-core AVX2 machine (fp32, channels_last), read
off ``results/cpu/trials.parquet`` (``train_images_per_second``, ``eval_seconds``, ``s_fit``) where that grid
has the case (EfficientNet-Lite0 at 64 px in every mode, ResNet-18 features, the small CNN at 32 px); the
ResNet-50 entries are scaled from ResNet-18 by the models' relative cost (guesses). Time scales with pixels.

GPU: one NVIDIA H100 80GB, bf16 autocast, channels_last, batch 64, ``fit`` with strong augmentation, measured by
``python -m ablations.bench --device cuda`` (``results/bench/gpu/bench.json``, sections ``speed`` and
``packing``). At batch 64 a GPU is far from busy: small inputs are no faster than 224 px (kernel launches,
not pixels, bound them), and k trials packed on one GPU (``--gpus-per-trial 1/k``) get ``PACKING_GAIN[k]``
times one trial's throughput together, measured, not k times. Other GPUs: scale by their speed relative to
an H100 (``--gpu-speed``).
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

# backbone: {resolution: (training images/s by mode, evaluation images/s)}, H100, measured (see above). "partial"
# is train_stages 1, "partial2" 2 (used for 2..4 stages); evaluation from the warmed-up rows.
GPU_SPEED = {
    "resnet18": {64: ({"frozen": 7456.0, "partial": 6467.0, "partial2": 6017.0, "all": 4035.0}, 121111.0),
                 224: ({"frozen": 8353.0, "partial": 6632.0, "partial2": 6751.0, "all": 5037.0}, 32212.0)},
    "resnet50": {224: ({"frozen": 7111.0, "partial": 4862.0, "partial2": 2932.0, "all": 2485.0}, 12455.0)},
    "efficientnet_lite0": {96: ({"frozen": 5606.0, "partial": 3785.0, "partial2": 2669.0, "all": 1813.0}, 48434.0),
                           224: ({"frozen": 5991.0, "partial": 3411.0, "partial2": 2178.0, "all": 1745.0}, 17023.0)},
    "small_cnn": {32: ({"frozen": 6610.0, "partial": 6610.0, "partial2": 6610.0, "all": 6610.0}, 18748.0),
                  # not measured: at 224 px (the seeds' setting) its convolutions cost ~0.74 GFLOP per image against
                  # ResNet-18's 1.8, on activations as large as ResNet-18's; assumed as fast as ResNet-18 ("all")
                  224: ({"frozen": 5037.0, "partial": 5037.0, "partial2": 5037.0, "all": 5037.0}, 32212.0)},
}
# k trials on one GPU: their throughput together, in units of one trial alone (ResNet-18 224 px, measured k=1,2,4)
PACKING_GAIN = {1: 1.0, 2: 1.44, 4: 2.64}
# Ray Train + Tune cost per trial besides training (process starts, imports), median in results/cpu with two
# trials sharing the 2 cores; an empty trial alone costs 7.4 s (results/bench/BENCH.md), so estimates lean long
TRIAL_OVERHEAD_S = 16.0


def _mode(cfg: TrialConfig) -> str:
    """The speed class of a trial. Frozen-prefix caching of augmented views and of partly fine-tuned trials is not
    modelled here: their first trial per view pays the full price, later ones less, so estimates lean long."""
    if cfg.train_stages == "0":
        return "cached" if prefix_refusal(cfg) is None and cfg.augment == "none" else "frozen"
    return "all" if cfg.train_stages == "all" else "partial"


def packing_gain(per_gpu: int) -> float:
    """Throughput of ``per_gpu`` trials sharing one GPU, relative to one: measured points, linear between them,
    flat beyond the last."""
    points = sorted(PACKING_GAIN.items())
    if per_gpu <= 1:
        return 1.0
    for (k0, g0), (k1, g1) in zip(points, points[1:]):
        if per_gpu <= k1:
            return g0 + (g1 - g0) * (per_gpu - k0) / (k1 - k0)
    return points[-1][1]


def _gpu_speeds(cfg: TrialConfig) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of one trial alone on an H100: the nearest measured resolution
    at or above the config's (smaller inputs are not faster: launch-bound), else the largest, scaled by pixels."""
    table = GPU_SPEED[cfg.backbone]
    above = [r for r in table if r >= cfg.resolution]
    ref = min(above) if above else max(table)
    train, evals = table[ref]
    mode = _mode(cfg)
    if mode == "partial" and cfg.train_stages not in ("0", "1"):
        mode = "partial2"
    scale = (ref / cfg.resolution) ** 2 if cfg.resolution > ref else 1.0
    if mode == "cached":
        return float("inf"), evals * scale
    return train[mode] * scale, evals * scale


def trial_seconds(cfg: TrialConfig, n_train: int, n_val: int, n_test: int, gpu: bool,
                  per_gpu: int = 1, gpu_speed: float = 1.0) -> float:
    """Seconds one trial takes: Ray's overhead, training, and evaluation (validation every epoch, then val and test
    for each TTA view). On a GPU shared by ``per_gpu`` trials, each is slowed by per_gpu / gain(per_gpu)."""
    views = len(TTA_MODES[cfg.tta])
    evaluated = n_val * cfg.epochs + (n_val + n_test) * views
    if _mode(cfg) == "cached":  # features once, the epochs are nearly free
        evaluated = n_train + (n_val + n_test) * views
    if gpu:
        train_speed, eval_speed = (s * gpu_speed for s in _gpu_speeds(cfg))
        compute = n_train * cfg.epochs / train_speed + evaluated / eval_speed
        per_gpu = max(1, per_gpu)
        return TRIAL_OVERHEAD_S + compute * per_gpu / packing_gain(per_gpu)
    ref_res, train_speed, eval_speed = CPU_SPEED[cfg.backbone]
    scale = (cfg.resolution / ref_res) ** 2
    compute = n_train * cfg.epochs * scale / train_speed[_mode(cfg)] + evaluated * scale / eval_speed
    return TRIAL_OVERHEAD_S + compute
