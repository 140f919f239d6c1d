"""One trial's configuration: a plain frozen dataclass, validated, hashable into a trial id (``pipeline.ids``).

Every key is a column of ``trials.parquet``. Keys listed in ``EXECUTION_KEYS`` say *how* a trial runs
(device, precision, workers, caching); they are excluded from the trial id, so the same study run
on a laptop and on a GPU cluster names its trials the same way. A new key needs an entry in
``pipeline.ids.ID_BASELINE`` (the value that reproduces what trials computed before it existed).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Collection

from pipeline import registry as R
from pipeline.errors import ConfigError  # noqa: F401  (re-exported)
from pipeline.ids import ID_SCHEMA, trial_id

EXECUTION_KEYS = frozenset(
    {"device", "amp", "channels_last", "compile", "feature_cache", "eval_batch_size", "threads", "workers"}
)


@dataclass(frozen=True)
class TrialConfig:
    # --- model
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.0
    train_stages: str = "0"
    resolution: int = 64
    normalize: str = "auto"
    # --- optimisation
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    freeze_epochs: int = 0
    # --- regularisation
    augment: str = "none"
    mix: str = "none"
    mix_alpha: float = 1.0
    label_smoothing: float = 0.0
    # --- evaluation: the widest TTA mode evaluated; narrower modes come from the same stored logits
    tta: str = "none"
    # --- data (shared by all trials of a run)
    train_per_class: int = 0
    val_size: int = 5000
    test_per_class: int = 0
    split_seed: int = 0
    data_size: int = 0  # the side images are stored at (pipeline.data.stored_size); 0: chosen from the data
    # --- randomness
    seed: int = 0
    # --- lineage: the config id of the trial whose trained model this one starts from (at the same seed); set
    # by a grid level's ``init_from``. Part of the id, so a child's id follows its parent's.
    init_from: str = ""
    # --- a child's BatchNorm in the stages it trains that its parent kept frozen: "batch" (train mode: batch
    # statistics, running statistics updated: what a plain ``model.train()`` loop does, so what the seed notebooks
    # did) or "frozen" (eval mode: the running statistics the parent was trained on; weights and affine parameters
    # still train). No effect (and not part of the id) without init_from.
    new_stage_bn: str = "batch"
    # --- execution: not part of the trial id
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    feature_cache: bool = True  # the frozen-prefix cache (pipeline.sources), where a trial can use it
    eval_batch_size: int = 0  # 0: the device kind's (pipeline.device.EVAL_BATCH: 64 on CPUs, 512 on GPUs)
    threads: int = 0
    workers: int = 1
    # --- a local weights file for pretrained=true; part of the trial id by its content
    weights: str = ""

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrialConfig":
        return dataclasses.replace(self, **changes)

    def trial_id_in(self, schema: int) -> str:
        """The id under an id schema (a results folder keeps the schema it was made with)."""
        return trial_id(self, schema)

    def config_id_in(self, schema: int) -> str:
        """The trial id of this config with seed 0: the same for every seed of one config."""
        return dataclasses.replace(self, seed=0).trial_id_in(schema)

    @property
    def trial_id(self) -> str:
        return self.trial_id_in(ID_SCHEMA)

    @property
    def config_id(self) -> str:
        return self.config_id_in(ID_SCHEMA)

    # what pipeline.ids reads of a config (it imports nothing of this module, so there is no import cycle)
    execution_keys: ClassVar[frozenset] = EXECUTION_KEYS

    @classmethod
    def field_types(cls) -> dict[str, type]:
        return {f.name: type(f.default) for f in fields(cls)}

    def normalization(self) -> str:
        """``normalize`` resolved (``effective_normalization``)."""
        return effective_normalization(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "TrialConfig":
        """The config printed into a result row (or a saved model), ignoring the row's other columns."""
        return cls(**{f.name: row[f.name] for f in fields(cls) if f.name in row})


DATA_KEYS = ("train_per_class", "val_size", "test_per_class", "split_seed", "data_size")

CHOICES: dict[str, Collection[str]] = {  # the registered ones (pipeline.registry, live) and this module's own
    "backbone": R.BACKBONES.keys(),
    "head": R.HEADS.keys(),
    "train_stages": R.TRAIN_STAGES,
    "normalize": ("auto", *R.NORMALIZATION),  # "auto": the backbone's own
    "optimizer": R.OPTIMIZERS.keys(),
    "schedule": R.SCHEDULES.keys(),
    "augment": R.AUGMENT_PRESETS.keys(),
    "mix": ("none", "mixup", "cutmix"),
    "new_stage_bn": ("batch", "frozen"),
    "tta": R.TTA_MODES.keys(),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "bf16", "fp16"),
}

# (low, high), both inclusive, for numeric keys
RANGES: dict[str, tuple[float, float]] = {
    "hidden": (1, 65536),
    "dropout": (0.0, 0.95),
    "resolution": (16, 1024),
    "epochs": (1, 10000),
    "batch_size": (1, 65536),
    "lr": (1e-8, 10.0),
    "backbone_lr_mult": (1e-6, 100.0),
    "weight_decay": (0.0, 1.0),
    "freeze_epochs": (0, 10000),
    "mix_alpha": (1e-3, 100.0),
    "label_smoothing": (0.0, 0.5),
    "train_per_class": (0, 10**7),
    "val_size": (0, 10**7),
    "test_per_class": (0, 10**7),
    "split_seed": (0, 2**31 - 1),
    "data_size": (0, 4096),
    "seed": (0, 2**31 - 1),
    "eval_batch_size": (0, 65536),
    "threads": (0, 1024),
    "workers": (1, 4096),
}

FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrialConfig)}


def check_value(key: str, value: Any) -> None:
    """Type, choice and range checks of one key's value."""
    want = FIELD_TYPES[key]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {want.__name__}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(CHOICES[key])}")
    if key in RANGES:
        lo, hi = RANGES[key]
        if not lo <= value <= hi:
            raise ConfigError(f"{key}={value!r}: must be in [{lo:g}, {hi:g}]")


def validate(cfg: TrialConfig) -> None:
    for f in fields(cfg):
        if f.name in FIELD_TYPES:  # a subclass's own keys are its own to check
            check_value(f.name, getattr(cfg, f.name))
    if cfg.pretrained and not R.BACKBONES[cfg.backbone].weights:
        raise ConfigError(f"backbone={cfg.backbone} has no pretrained weights: set pretrained=false")
    if cfg.freeze_epochs and cfg.freeze_epochs >= cfg.epochs:
        raise ConfigError(f"freeze_epochs={cfg.freeze_epochs} must be below epochs={cfg.epochs}")
    if cfg.freeze_epochs and cfg.train_stages == "0":
        raise ConfigError("freeze_epochs (two-phase training) needs train_stages above 0")


def coerce(key: str, value: Any) -> Any:
    """Turn a user value (often a string from ``--set key=value`` or YAML) into the key's type."""
    if key not in FIELD_TYPES:
        close = difflib.get_close_matches(key, FIELD_TYPES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}")
    want = FIELD_TYPES[key]
    try:
        if want is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if want is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        if want is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value).strip()
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {want.__name__}") from None


def from_dict(values: dict[str, Any], base: TrialConfig | None = None) -> TrialConfig:
    base = base or TrialConfig()
    changes = {k: coerce(k, v) for k, v in values.items()}
    return dataclasses.replace(base, **changes)


def effective_normalization(cfg: TrialConfig) -> str:
    """``normalize=auto``: what each backbone's weights were trained with (its registry entry: EfficientNet-Lite's
    TensorFlow weights expect (x - 127) / 128, 'tf'; torchvision's ResNets ImageNet mean/std); models trained
    from scratch CIFAR-10's own statistics."""
    if cfg.normalize != "auto":
        return cfg.normalize
    return R.BACKBONES[cfg.backbone].normalization if cfg.pretrained else "cifar"


def prefix_refusal(cfg: TrialConfig) -> str | None:
    """Why a trial cannot train on cached outputs of its frozen prefix (``pipeline.sources``), or None if it can.
    The prefix is the stem and the stages below ``train_stages``; it must be frozen and see the same images for
    every trial that shares it, which MixUp/CutMix (mixing input pixels per batch) break."""
    if not cfg.feature_cache:
        return "feature_cache=false"
    if cfg.mix != "none":
        return f"mix={cfg.mix} mixes input pixels per batch"
    if cfg.train_stages == "all":
        return "train_stages=all: nothing is frozen"
    return None


def stages_at(cfg: TrialConfig, epoch: int) -> str:
    """The stages that train in an epoch (0-based): two-phase trials (``freeze_epochs``) train the head alone first."""
    return "0" if epoch < cfg.freeze_epochs else cfg.train_stages
