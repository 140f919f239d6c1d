"""Each ablation axis changes what it claims to change (plain PyTorch, no Ray, real images)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import augment as aug
from pipeline import views
from pipeline.config import TrialConfig
from pipeline.models import build_model, count_trainable, train_mode
from pipeline.sources import Inputs
from pipeline.train import fit, make_optimizer


@pytest.fixture(scope="module")
def tiny(small_splits):
    """200 train, 100 val, 100 test real images (class-balanced train)."""
    s = small_splits
    keep = np.concatenate([np.flatnonzero(s.train_y == c)[:20] for c in range(10)])
    return {"train_x": s.train_x[keep], "train_y": s.train_y[keep], "val_x": s.val_x[:100], "val_y": s.val_y[:100],
            "test_x": s.test_x[:100], "test_y": s.test_y[:100]}


def cnn(**kw) -> TrialConfig:
    base = dict(backbone="small_cnn", pretrained=False, train_stages="all", head="mlp", resolution=32, epochs=1,
                batch_size=50, lr=1e-3, device="cpu", threads=2)
    return TrialConfig(**{**base, **kw})


def lite(**kw) -> TrialConfig:
    base = dict(backbone="efficientnet_lite0", pretrained=True, resolution=32, epochs=1, batch_size=50, lr=1e-3,
                device="cpu", threads=2, feature_cache=False)
    return TrialConfig(**{**base, **kw})


# ------------------------------------------------------------------ freeze depth


@pytest.mark.parametrize("stages", ["0", "1", "2", "all"])
def test_freeze_depth_decides_which_parameters_get_gradients(stages, tiny):
    cfg = lite(train_stages=stages)
    model = build_model(cfg)
    bb = model.backbone
    bn = next(m for m in bb.stages[0].modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    train_mode(model, stages)
    x = Inputs(cfg, torch.device("cpu"))(torch.as_tensor(tiny["train_x"][:8]))
    F.cross_entropy(model(x), torch.as_tensor(tiny["train_y"][:8])).backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    k = 4 if stages == "all" else int(stages)
    for i, stage in enumerate(bb.stages):
        assert has_grad(stage) == (i >= 4 - k), (stages, i)
    assert has_grad(bb.stem) == (stages == "all")
    assert has_grad(model.head)
    # frozen stages keep their BatchNorm statistics (eval mode); the first stage trains only with "all"
    assert torch.equal(bn.running_mean, running) == (stages != "all")


def test_two_phase_training_freezes_the_backbone_first(tiny):
    cfg = lite(train_stages="1", epochs=2, freeze_epochs=1)
    initial = build_model(cfg).backbone.stages[3].state_dict()
    snapshots = []
    fit(cfg, tiny, on_epoch=lambda row, ckpt: snapshots.append(ckpt()["model"]))
    key = next(k for k in snapshots[0] if k.startswith("backbone.stages.3.") and k.endswith("weight"))
    name = key[len("backbone.stages.3."):]
    assert torch.equal(snapshots[0][key], initial[name])  # epoch 1: head only
    assert not torch.equal(snapshots[1][key], initial[name])  # epoch 2: the last stage trains too


def test_differential_learning_rates():
    cfg = lite(train_stages="2", lr=1e-3, backbone_lr_mult=0.1)
    opt = make_optimizer(cfg, build_model(cfg))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": pytest.approx(1e-3), "backbone": pytest.approx(1e-4)}


# ------------------------------------------------------------------ optimizer and schedule


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules_shape_the_learning_rate(schedule, tiny):
    result = fit(cnn(schedule=schedule, epochs=4), tiny)
    lrs = [h["lr"] for h in result.history]  # the rate of each epoch's last step
    steps = 4  # 200 images / 50 per batch
    if schedule == "constant":
        assert lrs == [1e-3] * 4
    elif schedule == "cosine":
        assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.02 * 1e-3
        assert lrs[1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (2 * steps - 1) / (4 * steps))))
    else:  # warm up to the peak within the first quarter, then anneal to almost nothing
        assert lrs[0] > lrs[1] > lrs[2] > lrs[-1] and max(lrs) <= 1e-3 + 1e-12 and lrs[-1] < 1e-7


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizer_axis(name, cls):
    cfg = cnn(optimizer=name, weight_decay=1e-4)
    opt = make_optimizer(cfg, build_model(cfg))
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 1e-4


# ------------------------------------------------------------------ augmentation, resolution, normalization


def test_augment_presets_change_training_inputs_only(tiny):
    x = torch.as_tensor(tiny["train_x"][:16])
    plain = Inputs(cnn(augment="none"), torch.device("cpu"))
    basic = Inputs(cnn(augment="basic"), torch.device("cpu"))
    strong = Inputs(cnn(augment="strong"), torch.device("cpu"))
    index = np.arange(16)
    assert torch.equal(plain(x, views.draw("none", 0, 0, index)), plain(x))
    assert not torch.allclose(basic(x, views.draw("basic", 0, 0, index)), plain(x))
    assert torch.equal(basic(x), plain(x))  # evaluation never augments
    b = basic(x, views.draw("basic", 0, 0, index))
    s = strong(x, views.draw("strong", 0, 0, index))
    assert not torch.allclose(b, s)  # rotation and colour jitter on top


@pytest.mark.parametrize("res", [32, 64, 96])
def test_resolution_axis_resizes_batches(res, tiny):
    x = Inputs(cnn(resolution=res), torch.device("cpu"))(torch.as_tensor(tiny["test_x"][:4]))
    assert x.shape == (4, 3, res, res)


def test_normalization_choices():
    x = torch.full((1, 3, 4, 4), 127, dtype=torch.uint8)
    tf = Inputs(lite(normalize="tf"), torch.device("cpu"))(x)
    assert torch.allclose(tf, torch.zeros_like(tf), atol=1e-6)  # (127 - 127) / 128
    x = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    imnet = Inputs(lite(normalize="imagenet"), torch.device("cpu"))(x)
    assert imnet[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


# ------------------------------------------------------------------ heads and backbones


@pytest.mark.parametrize("head", ["linear", "mlp", "fusion", "se"])
def test_head_axis(head):
    m = build_model(lite(head=head))
    assert m.head.kind == head
    assert hasattr(m.head, "se") == (head == "se") and hasattr(m.head, "fc1") == (head in ("mlp", "fusion"))


def test_backbone_axis():
    sizes = {b: count_trainable(build_model(TrialConfig(backbone=b, pretrained=b == "efficientnet_lite0",
                                                        train_stages="all")))
             for b in ("efficientnet_lite0", "resnet18", "resnet50", "small_cnn")}
    assert sizes["resnet50"] > sizes["resnet18"] > sizes["efficientnet_lite0"] > sizes["small_cnn"]


# ------------------------------------------------------------------ loss: label smoothing, MixUp, CutMix


def test_label_smoothing_changes_the_loss(tiny):
    plain = fit(cnn(), tiny).history[0]["train_loss"]
    smooth = fit(cnn(label_smoothing=0.2), tiny).history[0]["train_loss"]
    assert plain != smooth
    # the same batch and logits: smoothing adds eps * (mean over classes of -log p) - eps * (-log p_y)
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    logp = logits.log_softmax(1)
    expected = ((1 - 0.2) * -logp[torch.arange(8), y] + 0.2 * -logp.mean(1)).mean()
    assert F.cross_entropy(logits, F.one_hot(y, 10).float(), label_smoothing=0.2).item() == pytest.approx(expected.item())


def test_mixup_mixes_images_and_labels():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 8, 8)
    y = torch.arange(8)
    xm, t = aug.mix(x, y, "mixup", 0.4, 10, g, np.random.default_rng(3))
    assert torch.allclose(t.sum(1), torch.ones(8))
    lams = {round(t[i, i].item(), 6) for i in range(8) if t[i, i] < 1}
    assert len(lams) == 1  # one mixing coefficient per batch
    lam = lams.pop()
    assert 0 < lam < 1
    # every image is lam * itself + (1 - lam) * its partner, and its target says so
    for i in range(8):
        if t[i, i] == 1:  # paired with itself by the permutation
            assert torch.allclose(xm[i], x[i])
            continue
        partner = int(((t[i] > 0) & (torch.arange(10) != i)).nonzero().item())
        assert torch.allclose(xm[i], lam * x[i] + (1 - lam) * x[partner], atol=1e-6)
        assert t[i, partner].item() == pytest.approx(1 - lam, abs=1e-6)


def test_cutmix_pastes_a_box_and_weights_labels_by_area():
    g = torch.Generator().manual_seed(5)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(6)])
    y = torch.arange(6)
    xm, t = aug.mix(x, y, "cutmix", 1.0, 10, g, np.random.default_rng(5))
    for i in range(6):
        values, counts = xm[i, 0].unique(return_counts=True)
        kept = (xm[i, 0] == i).float().mean().item()
        assert t[i, i].item() == pytest.approx(kept)
        if len(values) == 2:
            other = int(values[values != i].item())
            assert t[i, other].item() == pytest.approx(1 - kept)
    assert not torch.equal(xm, x)


def test_no_mix_gives_one_hot_targets():
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    xm, t = aug.mix(x, y, "none", 1.0, 10, torch.Generator(), np.random.default_rng(0))
    assert torch.equal(xm, x) and torch.equal(t, F.one_hot(y, 10).float())


# ------------------------------------------------------------------ TTA


def test_tta_flip_evaluates_flipped_images(tiny):
    cfg = cnn(tta="flip_crops")
    result = fit(cfg, tiny)
    views = result.logits["test"]
    assert set(views) == set(aug.TTA_VIEWS)
    model = build_model(cfg)
    model.load_state_dict(result.state)
    model.eval()
    inputs = Inputs(cfg, torch.device("cpu"))
    x = torch.as_tensor(tiny["test_x"])
    with torch.inference_mode():
        direct_flip = model(inputs(x.flip(-1))).numpy()
        direct = model(inputs(x)).numpy()
    assert np.allclose(views["flip"].astype(np.float32), direct_flip, atol=2e-2)
    assert np.allclose(views["none"].astype(np.float32), direct, atol=2e-2)
    assert not np.allclose(views["flip"], views["none"], atol=2e-2)
    # shifted crops keep the size and move the content by TTA_SHIFT pixels
    xf = aug.to_float(x[:2])
    shifted = aug.tta_view(xf, "shift_br")
    s = aug.TTA_SHIFT
    assert torch.equal(shifted[..., : -s, : -s], xf[..., s:, s:])
    assert result.metrics["test_acc_flip"] != result.metrics["test_acc"] or \
        not np.allclose(views["flip"], views["none"])


# ------------------------------------------------------------------ seeds


def test_seed_axis(tiny):
    a = fit(cnn(seed=0), tiny)
    b = fit(cnn(seed=0), tiny)
    c = fit(cnn(seed=1), tiny)
    assert np.array_equal(a.logits["test"]["none"], b.logits["test"]["none"])
    assert not np.array_equal(a.logits["test"]["none"], c.logits["test"]["none"])
