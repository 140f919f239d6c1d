"""Time estimates for ``--dry-run`` and the ETA, from the measured speeds in ``ablations.plan.speeds``.

CPU: a model's forward images/s at a reference resolution and the share of that time in its stem and each stage
give the cost of every part of a trial; time scales with pixels. A trained image costs ``train_mult`` times its
forward pass in the stages that train (backward, optimizer, augmentation). Trials on cached prefix outputs
(``pipeline.sources``) are modelled as they run: each cache entry (cut, split, view of
``pipeline.sources.trial_entries``) is computed once, by the first trial of the plan that needs it, and later trials
only train and evaluate the top. Checked against the cpu grid's trials (README, "Measured here").

GPU: the speed table of the target GPU model (``Target.gpu_model``; ``gpu_speed`` scales it for a GPU without a
table). At batch 64 a GPU is far from busy: small inputs are no faster than 224 px (kernel launches, not pixels,
bound them), and k trials packed on one GPU (``--gpus-per-trial 1/k``) get ``PACKING_GAIN[model][k]`` times one
trial's throughput together, measured, not k times. The prefix cache is not modelled on GPUs (its cost model
decides per trial there).

Every trial adds ``TRIAL_OVERHEAD_S`` of its device kind and trial runner (Ray's start of the trial; on a GPU the
CUDA context and cuDNN's first-epoch autotuning); a run's wall time adds ``RUN_START_S`` once (``Target.start_s``:
Ray's start before the first trial). Where a number is not a measurement, ``Target.notes`` collects
what was assumed, and the dry run prints it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import TrialConfig, prefix_refusal, stages_at
from pipeline.models import prefix_cut
from pipeline.registry import TTA_MODES

from ablations.plan import speeds as S

# a trained image on cached prefix outputs: the gather and conversion of its row and the head, in forward passes
CACHED_ROW_COST = 0.02
CHILD_EPOCH_OFFSET = 10_000  # see cpu_compute_seconds


@dataclass
class Target:
    """What an estimate is for: the device kind, on GPUs the model (a key of ``speeds.GPU``), a speed factor for
    a GPU without a table, and how many trials share one; the CPUs of a trial; the trial runner."""

    gpu: bool = False
    gpu_model: str = S.DEFAULT_GPU
    gpu_speed: float = 1.0
    per_gpu: int = 1
    cpus: float = 1.0
    runner: str = "train"
    notes: set[str] = field(default_factory=set)

    @property
    def overhead_s(self) -> float:
        key = ("cuda" if self.gpu else "cpu", self.runner)
        if key in S.OVERHEAD_NOTES:
            self.notes.add(S.OVERHEAD_NOTES[key])
        return S.TRIAL_OVERHEAD_S[key]

    @property
    def start_s(self) -> float:
        """Seconds before a run's first trial trains (``speeds.RUN_START_S``), once per run."""
        key = "cuda" if self.gpu else "cpu"
        if key in S.RUN_START_NOTES:
            self.notes.add(S.RUN_START_NOTES[key])
        return S.RUN_START_S[key]

    def describe(self) -> str:
        if not self.gpu:
            return "CPU speeds measured on a 2-core machine"
        speed = f" x {self.gpu_speed:g}" if self.gpu_speed != 1 else ""
        return f"GPU speeds of one {self.gpu_model}{speed}"


def _mode(cfg: TrialConfig) -> str:
    """The GPU speed class of a trial: "cached" (frozen, no augmentation: the head trains on features computed
    once), "frozen" (frozen, augmented), "partial" (top stages) or "all"."""
    if cfg.train_stages == "0":
        return "cached" if prefix_refusal(cfg) is None and cfg.augment == "none" else "frozen"
    return "all" if cfg.train_stages == "all" else "partial"


def packing_gain(per_gpu: int, gpu_model: str = S.DEFAULT_GPU) -> float:
    """Throughput of ``per_gpu`` trials sharing one GPU, relative to one: measured points, linear between them,
    flat beyond the last."""
    points = sorted(S.PACKING_GAIN.get(gpu_model, S.PACKING_GAIN[S.DEFAULT_GPU]).items())
    if per_gpu <= 1:
        return 1.0
    for (k0, g0), (k1, g1) in zip(points, points[1:]):
        if per_gpu <= k1:
            return g0 + (g1 - g0) * (per_gpu - k0) / (k1 - k0)
    return points[-1][1]


def _gpu_speeds(cfg: TrialConfig, target: Target) -> tuple[float, float]:
    """(training images/s, evaluation images/s) of one trial alone on the target GPU: the nearest measured
    resolution at or above the config's (smaller inputs are not faster: launch-bound), else the largest, scaled
    by pixels."""
    table, note = S.gpu_table(cfg.backbone, target.gpu_model)
    if note:
        target.notes.add(note)
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


def trial_seconds(cfg: TrialConfig, n_train: int, n_val: int, n_test: int, target: Target | None = None,
                  computed: set | None = None) -> float:
    """Seconds one trial takes: its overhead, training, and evaluation (validation every epoch, then val and test
    for each TTA view). On a GPU shared by ``target.per_gpu`` trials, each is slowed by per_gpu / gain(per_gpu).
    On a CPU, ``computed``: the prefix-cache entries earlier trials of the run computed (this trial adds its own);
    the trial's compute is taken as ``target.cpus`` times faster than one thread's."""
    target = target or Target()
    views = len(TTA_MODES[cfg.tta])
    if not target.gpu:
        work = cpu_compute_seconds(cfg, {"train": n_train, "val": n_val, "test": n_test},
                                   set() if computed is None else computed, target)
        return target.overhead_s + work / max(target.cpus, 1.0)
    evaluated = n_val * cfg.epochs + (n_val + n_test) * views
    if _mode(cfg) == "cached":  # features once, the epochs are nearly free
        evaluated = n_train + (n_val + n_test) * views
    train_speed, eval_speed = (s * target.gpu_speed for s in _gpu_speeds(cfg, target))
    compute = n_train * cfg.epochs / train_speed + evaluated / eval_speed
    per_gpu = max(1, target.per_gpu)
    return target.overhead_s + compute * per_gpu / packing_gain(per_gpu, target.gpu_model)


def cpu_compute_seconds(cfg: TrialConfig, n: dict[str, int], computed: set, target: Target | None = None) -> float:
    """A trial's compute on a CPU (its backbone's CPU speed): on cached prefix outputs, the entries not in
    ``computed`` (then added to it) through the prefix, and training and evaluation through the top; otherwise
    everything through the whole model."""
    from pipeline.sources import trial_entries

    m, note = S.cpu_speed(cfg.backbone)
    if note and target is not None:
        target.notes.add(note)
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
    # a child's training views continue its parent's epochs: taken as views no other trial computes
    for cut, split, view in trial_entries(cfg, CHILD_EPOCH_OFFSET if cfg.init_from else 0):
        key = (*identity, cut, split, view)
        if key not in computed:
            computed.add(key)
            fills += n[split] * f * m.prefix_share(cut)
    train = sum(n["train"] * f * (m.train_mult * (1 - p) + CACHED_ROW_COST) for p in frozen)
    top = 1 - m.prefix_share(prefix_cut(cfg.train_stages))
    return fills + train + (evaluated["val"] + evaluated["test"]) * f * (top + CACHED_ROW_COST)


def plan_seconds(configs: dict[str, TrialConfig], n_train: int, n_val: int, n_test: int,
                 target: Target | None = None) -> dict[str, float]:
    """Each trial's seconds (``trial_seconds``) in plan order: on a CPU, each prefix-cache entry is paid for by the
    first trial that needs it."""
    target = target or Target()
    computed: set = set()
    return {tid: trial_seconds(c, n_train, n_val, n_test, target, computed) for tid, c in configs.items()}
