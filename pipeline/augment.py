"""Batched image augmentation on the trial's device: whole uint8 batches in, float batches out.

Everything here works on (N, C, H, W) tensors. The random parameters of an augmentation (one row per image)
come from ``pipeline.views``, keyed by image and epoch, so this module draws no random numbers itself except for
MixUp/CutMix, which pair the images of a batch. No PIL, no per-image Python loop, no device-to-host
synchronisation. The notebook equivalents (torchvision's per-image transforms) are named next to each function.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.registry import NORMALIZATION, TTA_MODES, TTA_VIEWS  # noqa: F401  (re-exported)
from pipeline.views import ViewParams

TTA_SHIFT = 2  # pixels at the native resolution


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1] (ToTensor)."""
    return x.float().div_(255.0)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int | None = None) -> torch.Tensor:
    """Shift each image by (dy[i], dx[i]) pixels with zero fill, keeping its size. ``pad`` bounds |dy| and
    |dx|; callers that know it pass it, which spares a device-to-host synchronisation per batch."""
    n, c, h, w = x.shape
    if pad is None:
        pad = int(max(dy.abs().max().item(), dx.abs().max().item(), 0))
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (pad - dy).view(n, 1) + torch.arange(h, device=x.device).view(1, h)
    cols = (pad - dx).view(n, 1) + torch.arange(w, device=x.device).view(1, w)
    b = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    ch = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[b, ch, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RandomHorizontalFlip with the decision per image given: flip the images where ``mask`` is true."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by degrees[i] about its centre (bilinear, zero fill)."""
    rad = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_GRAY = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = _constant(_GRAY, x).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor | None = None, contrast: torch.Tensor | None = None,
                 saturation: torch.Tensor | None = None, hue: torch.Tensor | None = None) -> torch.Tensor:
    """ColorJitter with the per-image factors given (hue: an angle in radians), applied in a fixed order; hue is a
    rotation in YIQ space."""
    n = x.shape[0]
    if brightness is not None:
        x = (x * brightness.view(n, 1, 1, 1)).clamp_(0, 1)
    if contrast is not None:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast.view(n, 1, 1, 1) + mean).clamp_(0, 1)
    if saturation is not None:
        g = _gray(x)
        x = ((x - g) * saturation.view(n, 1, 1, 1) + g).clamp_(0, 1)
    if hue is not None:
        x = hue_rotate(x, hue)
    return x


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)  # once, on the CPU: an inverse on a GPU waits for its singularity check


def hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``angle`` radians per image (linear YIQ approximation of an HSV hue shift)."""
    fwd, inv = _constant(_RGB2YIQ, x), _constant(_YIQ2RGB, x)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([torch.stack([one, zero, zero], 1),
                       torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)  # (n, 3, 3)
    m = inv @ rot @ fwd
    return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)


_CONSTANTS: dict = {}


def _constant(values, like: torch.Tensor) -> torch.Tensor:
    """A small constant tensor on ``like``'s device and dtype, copied there once (not once per batch)."""
    key = (id(values), like.device, like.dtype)
    if key not in _CONSTANTS:
        t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.float64)
        _CONSTANTS[key] = t.to(like.device, like.dtype)
    return _CONSTANTS[key]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize((size, size)) for the whole batch, bilinear (antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


def normalize(x: torch.Tensor, kind: str) -> torch.Tensor:
    mean, std = NORMALIZATION[kind]
    return (x - _constant(mean, x).view(1, 3, 1, 1)) / _constant(std, x).view(1, 3, 1, 1)


def apply_view(x: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Augment a float batch at native resolution with its rows of a view's parameters (``pipeline.views``):
    crop (translation with zero fill), flip, rotation, colour jitter, in this order."""
    if p.dy is not None:
        x = translate(x, p.dy, p.dx, p.pad)
    if p.flip is not None:
        x = flip_where(x, p.flip)
    if p.degrees is not None:
        x = rotate(x, p.degrees)
    if any(v is not None for v in (p.brightness, p.contrast, p.saturation, p.hue)):
        x = color_jitter(x, p.brightness, p.contrast, p.saturation, p.hue)
    return x


def mix(x: torch.Tensor, y: torch.Tensor, kind: str, alpha: float, num_classes: int, gen: torch.Generator,
        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with its own permutation; returns images and soft targets.

    One mixing coefficient per batch, as in the papers and torchvision.transforms.v2.MixUp/CutMix. The
    coefficient and the box come from the host generator ``rng`` and the pairing from the device generator
    ``gen``, so nothing waits for the device.
    """
    target = F.one_hot(y, num_classes).to(x.dtype)
    if kind == "none":
        return x, target
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    if kind == "mixup":
        x = x * lam + x[perm] * (1 - lam)
    elif kind == "cutmix":
        h, w = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
    else:
        raise ValueError(f"unknown mix {kind!r}")
    return x, target * lam + target[perm] * (1 - lam)


def tta_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One deterministic test-time view of a float batch at native resolution."""
    if view == "none":
        return x
    if view == "flip":
        return x.flip(-1)
    if view.startswith("shift_"):
        s = TTA_SHIFT
        dy = {"t": s, "b": -s}[view[6]]
        dx = {"l": s, "r": -s}[view[7]]
        n = x.shape[0]
        return translate(x, torch.full((n,), dy, device=x.device), torch.full((n,), dx, device=x.device), s)
    raise ValueError(f"unknown TTA view {view!r}")
