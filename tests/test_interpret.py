"""Grad-CAM: shape and range, localisation on a model whose logits depend on one image region, real models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pipeline.config import TrialConfig
from pipeline.interpret import gradcam
from pipeline.models import Backbone, Classifier, LinearHead, build_model
from pipeline.train import Inputs


def _colour_model() -> Classifier:
    """Logit 0 = mean redness, logit 1 = mean greenness of the image (through a 'last stage' of 8x8 cells)."""
    colour = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        colour.weight.zero_()
        colour.weight[0, 0] = 1.0  # channel 0 <- red
        colour.weight[1, 1] = 1.0  # channel 1 <- green
    stages = [nn.Sequential(colour, nn.ReLU()), nn.AvgPool2d(4)]  # last stage: (N, 2, 8, 8) on 32x32 inputs
    model = Classifier(Backbone(nn.Identity(), stages, (2, 2)), LinearHead((2, 2), 2, 0.0, 8))
    with torch.no_grad():
        model.head.fc.weight.copy_(torch.eye(2))
        model.head.fc.bias.zero_()
    return model


def _two_patches(n: int = 3) -> torch.Tensor:
    """Dark images with a red patch in the top-right quadrant and a green one in the bottom-left."""
    x = torch.full((n, 3, 32, 32), 0.05)
    x[:, 0, 4:12, 20:28] = 1.0  # red, top-right
    x[:, 1, 20:28, 4:12] = 1.0  # green, bottom-left
    return x


def _quadrant(heat: np.ndarray) -> tuple[str, str]:
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    h, w = heat.shape
    return ("top" if r < h // 2 else "bottom"), ("left" if c < w // 2 else "right")


def test_gradcam_localises_the_target_region():
    model = _colour_model()
    x = _two_patches()
    red = gradcam(model, x, target=0)
    green = gradcam(model, x, target=1)
    assert red.shape == (3, 32, 32) and green.shape == (3, 32, 32)
    for heat in (red, green):
        assert float(heat.min()) >= 0 and float(heat.max()) == pytest.approx(1.0)
    for i in range(3):
        assert _quadrant(red[i].numpy()) == ("top", "right")  # not transposed, not flipped
        assert _quadrant(green[i].numpy()) == ("bottom", "left")
    # the heat is concentrated in the target's quadrant
    assert red[:, :16, 16:].mean() > 3 * red[:, 16:, :16].mean()
    assert green[:, 16:, :16].mean() > 3 * green[:, :16, 16:].mean()


def test_gradcam_default_target_is_the_prediction_and_per_image_targets():
    model = _colour_model()
    x = _two_patches(2)
    x[1, 0] = 0.05  # image 1: no red patch, so it predicts green
    auto = gradcam(model, x)
    assert _quadrant(auto[0].numpy()) == ("top", "right")
    assert _quadrant(auto[1].numpy()) == ("bottom", "left")
    explicit = gradcam(model, x, target=torch.tensor([0, 1]))
    assert torch.allclose(auto, explicit)
    with pytest.raises(ValueError):
        gradcam(model, x, target=[0, 1, 1])


def test_gradcam_frozen_model_and_state_untouched():
    model = _colour_model()
    model.requires_grad_(False)  # a frozen backbone and head: gradients still reach the map
    model.train()
    heat = gradcam(model, _two_patches(1), target=0)
    assert _quadrant(heat[0].numpy()) == ("top", "right")
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    # no hook left behind: a plain forward afterwards works and gives the same logits as before
    out = model(_two_patches(1))
    assert out.shape == (1, 2)
    assert not model.backbone.stages[-1]._forward_hooks


def test_gradcam_unsampled_size_is_the_layer_size():
    heat = gradcam(_colour_model(), _two_patches(2), target=0, upsample=False)
    assert heat.shape == (2, 8, 8)


@pytest.mark.parametrize("head", ["linear", "mlp", "fusion", "se"])
def test_gradcam_real_small_cnn_every_head(head):
    torch.manual_seed(0)
    cfg = TrialConfig(backbone="small_cnn", pretrained=False, head=head, train_stages="all", resolution=32,
                      device="cpu")
    model = build_model(cfg, 10)
    xb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = Inputs(cfg, torch.device("cpu"))(xb)
    heat = gradcam(model, x)
    assert heat.shape == (2, 32, 32)
    assert torch.isfinite(heat).all() and float(heat.min()) >= 0 and float(heat.max()) <= 1


def test_gradcam_real_efficientnet_lite0():
    cfg = TrialConfig(backbone="efficientnet_lite0", pretrained=True, head="fusion", train_stages="0",
                      resolution=64, device="cpu")
    model = build_model(cfg, 10)
    xb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    x = Inputs(cfg, torch.device("cpu"))(xb)  # resized to 64 px, channels_last
    heat = gradcam(model, x, target=3)
    assert heat.shape == (2, 64, 64)
    assert torch.isfinite(heat).all() and float(heat.min()) >= 0 and float(heat.max()) <= 1
    assert gradcam(model, x, target=3, upsample=False).shape == (2, 2, 2)  # stride 32
