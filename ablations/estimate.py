"""Time estimates for ``--dry-run`` and the ETA, from measured per-model speeds (each backbone's entry in
``pipeline.registry.BACKBONES``).

CPU (``cpu``): per trial while two 1-thread trials share this project's 2-core AVX2 machine (fp32, channels_last,
evaluation in batches of 64). A model's forward images/s at a reference resolution and the share of that time in
its stem and each stage (timed part by part on a batch of 64) give the cost of every part of a trial; time
scales with pixels. A trained image costs ``train_mult`` times its forward pass in the stages that train
(backward, optimizer, augmentation). Trials on cached prefix outputs (``pipeline.sources``) are modelled as they
run: each cache entry (cut, split, view of ``pipeline.sources.trial_entries``) is computed once, by the first
trial of the plan that needs it, and later trials only train and evaluate the top. Checked against the cpu
grid's trials (README, "Measured here"); an entry's ``speed_note`` says where a speed is a guess.

GPU (``gpu``): one NVIDIA H100 80GB, bf16 autocast, channels_last, batch 64, ``fit`` with strong augmentation,
measured by ``python -m ablations.bench --device cuda`` (``examples/bench/gpu/bench.json``, sections ``speed``
and ``packing``). At batch 64 a GPU is far from busy: small inputs are no faster than 224 px (kernel launches,
not pixels, bound them), and k trials packed on one GPU (``--gpus-per-trial 1/k``) get ``PACKING_GAIN[k]``
times one trial's throughput together, measured, not k times. Other GPUs: scale by their speed relative to
an H100 (``--gpu-speed``). The prefix cache is not modelled on GPUs (its cost model decides per trial there).
"""
from __future__ import annotations

from pipeline.config import TrialConfig, prefix_refusal, stages_at
from pipeline.models import prefix_cut
from pipeline.registry import BACKBONES, TTA_MODES

# a trained image on cached prefix outputs: the gather and conversion of its row and the head, in forward passes
CACHED_ROW_COST = 0.02
# k trials on one GPU: their throughput together, in units of one trial alone (ResNet-18 224 px, measured k=1,2,4)
PACKING_GAIN = {1: 1.0, 2: 1.44, 4: 2.64}
# Ray Train + Tune cost per trial besides training (process starts, imports), median in examples/cpu with two
# trials sharing the 2 cores; an empty trial alone costs 7.4 s (examples/bench/BENCH.md), so estimates lean long
TRIAL_OVERHEAD_S = 16.0


def _mode(cfg: TrialConfig) -> str:
    """The GPU speed class of a trial: "cached" (frozen, no augmentation: the head trains on features computed
    once), "frozen" (frozen, augmented), "partial" (top stages) or "all"."""
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
    table = BACKBONES[cfg.backbone].gpu
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
                  per_gpu: int = 1, gpu_speed: float = 1.0, computed: set | None = None, cpus: float = 1.0) -> float:
    """Seconds one trial takes: Ray's overhead, training, and evaluation (validation every epoch, then val and test
    for each TTA view). On a GPU shared by ``per_gpu`` trials, each is slowed by per_gpu / gain(per_gpu). On a CPU,
    ``computed``: the prefix-cache entries earlier trials of the run computed (this trial adds its own); ``cpus``:
    the trial's threads (its compute taken as that many times faster than one thread's; measured here: one
    2-thread trial ran 2.3x as fast as each of two 1-thread trials at once)."""
    views = len(TTA_MODES[cfg.tta])
    if not gpu:
        return TRIAL_OVERHEAD_S + cpu_compute_seconds(cfg, {"train": n_train, "val": n_val, "test": n_test},
                                                      set() if computed is None else computed) / max(cpus, 1.0)
    evaluated = n_val * cfg.epochs + (n_val + n_test) * views
    if _mode(cfg) == "cached":  # features once, the epochs are nearly free
        evaluated = n_train + (n_val + n_test) * views
    train_speed, eval_speed = (s * gpu_speed for s in _gpu_speeds(cfg))
    compute = n_train * cfg.epochs / train_speed + evaluated / eval_speed
    per_gpu = max(1, per_gpu)
    return TRIAL_OVERHEAD_S + compute * per_gpu / packing_gain(per_gpu)


def cpu_compute_seconds(cfg: TrialConfig, n: dict[str, int], computed: set) -> float:
    """A trial's compute on a CPU (its backbone's ``cpu`` speeds): on cached prefix outputs, the entries not in ``computed`` (then
    added to it) through the prefix, and training and evaluation through the top; otherwise everything through
    the whole model."""
    from pipeline.sources import trial_entries

    m = BACKBONES[cfg.backbone].cpu
    f = (cfg.resolution / m.resolution) ** 2 / m.forward  # seconds of one image's forward pass
    evaluated = {"val": n["val"] * cfg.epochs + n["val"] * len(TTA_MODES[cfg.tta]),
                 "test": n["test"] * len(TTA_MODES[cfg.tta])}
    frozen = [m.prefix_share(prefix_cut(stages_at(cfg, e))) for e in range(cfg.epochs)]  # per epoch
    if prefix_refusal(cfg) is not None:
        train = sum(n["train"] * f * (p + m.train_mult * (1 - p)) for p in frozen)
        return train + (evaluated["val"] + evaluated["test"]) * f
    identity = (cfg.backbone, cfg.pretrained, cfg.weights, None if cfg.pretrained else cfg.seed, cfg.resolution,
                cfg.normalize)
    fills = 0.0
    for cut, split, view in trial_entries(cfg):
        key = (*identity, cut, split, view)
        if key not in computed:
            computed.add(key)
            fills += n[split] * f * m.prefix_share(cut)
    train = sum(n["train"] * f * (m.train_mult * (1 - p) + CACHED_ROW_COST) for p in frozen)
    top = 1 - m.prefix_share(prefix_cut(cfg.train_stages))
    return fills + train + (evaluated["val"] + evaluated["test"]) * f * (top + CACHED_ROW_COST)


def plan_seconds(configs: dict[str, TrialConfig], n_train: int, n_val: int, n_test: int, gpu: bool,
                 per_gpu: int = 1, gpu_speed: float = 1.0, cpus: float = 1.0) -> dict[str, float]:
    """Each trial's seconds (``trial_seconds``) in plan order: on a CPU, each prefix-cache entry is paid for by the
    first trial that needs it."""
    computed: set = set()
    return {tid: trial_seconds(c, n_train, n_val, n_test, gpu, per_gpu, gpu_speed, computed, cpus)
            for tid, c in configs.items()}
