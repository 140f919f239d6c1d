"""Grad-CAM (Selvaraju et al., 2017) for the classifiers of ``pipeline.models``. Plain PyTorch, no Ray.

The class-activation map of class c on a layer with activations A (N, K, h, w) is
``ReLU(sum_k w_k A_k)`` with ``w_k`` the spatial mean of d(logit_c)/d(A_k). By default the layer is the
last backbone stage (``model.backbone.stages[-1]``), which every backbone and head of the registry has.

The hook replaces the layer's output by a detached copy that requires grad, so gradients reach the map
even when the backbone is frozen (``requires_grad=False``), and nothing flows into the backbone itself;
``torch.autograd.grad`` is used, so no parameter's ``.grad`` is touched.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def gradcam(model: nn.Module, x: torch.Tensor, target=None, layer: nn.Module | None = None,
            upsample: bool = True) -> torch.Tensor:
    """Grad-CAM heat maps for a batch of model inputs.

    model: a ``pipeline.models.Classifier`` (or any module; then pass ``layer``).
    x: (N, C, H, W) model inputs (already normalized, e.g. by ``pipeline.train.Inputs``).
    target: None (each image's predicted class), an int (the same class for all), or N class indices.
    Returns (N, H, W) float maps in [0, 1] on the CPU, each min-max scaled on its own (all zeros where the
    map is flat, e.g. no location has a positive contribution). With ``upsample=False`` the maps keep the layer's size.
    """
    if layer is None:
        layer = model.backbone.stages[-1]
    store: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise TypeError(f"Grad-CAM needs a layer with (N, C, h, w) output, got {type(output).__name__}")
        act = output.detach().requires_grad_(True)
        store["act"] = act
        return act

    was_training = model.training
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x)
            if "act" not in store:
                raise RuntimeError("the Grad-CAM layer was not called in the forward pass")
            n = logits.shape[0]
            if target is None:
                idx = logits.argmax(1)
            elif isinstance(target, int):
                idx = torch.full((n,), target, dtype=torch.long, device=logits.device)
            else:
                idx = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
                if idx.numel() != n:
                    raise ValueError(f"target has {idx.numel()} entries for {n} images")
            score = logits.gather(1, idx.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, store["act"])
    finally:
        handle.remove()
        model.train(was_training)
    act = store["act"].detach().float()
    weights = grad.float().mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * act).sum(1, keepdim=True))  # (N, 1, h, w)
    if upsample:
        cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    cam = cam[:, 0].clamp_(min=0)
    lo = cam.flatten(1).amin(1).view(-1, 1, 1)
    span = cam.flatten(1).amax(1).view(-1, 1, 1) - lo
    cam = torch.where(span > 0, (cam - lo) / span.clamp(min=1e-12), torch.zeros_like(cam))
    return cam.clamp_(0, 1).cpu()
