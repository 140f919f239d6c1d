"""Augmentation as views: the random augmentation each training image gets in each epoch.

A *view* is one augmentation of the whole training set for one epoch. The random numbers of image ``i`` in
epoch ``e`` are a pure function of (augmentation policy, seed, e, i), where ``i`` is the image's position in the
decoded dataset (``Splits.train_idx``), not in a subset or a batch. So an image is augmented the same way
whichever images share its batch, in whatever order the batches come, and whichever subset a trial trains on;
and trials with the same policy and seed see the same view each epoch. That is what lets the outputs of a frozen
prefix be computed once per view and shared (``pipeline.prefix_cache``), and what makes a trial on cached prefix
outputs the same computation as the trial run on raw images.

The numbers come from a counter-based generator (SplitMix64's finalizer over key + index), drawn on the host
once per epoch for the whole training set and moved to the device in one copy; batches gather their rows there.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from pipeline.registry import AUGMENT_PRESETS  # noqa: F401  (re-exported)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def stream_key(*parts) -> np.uint64:
    """A 64-bit key for one stream of random numbers, from anything printable."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def keyed_uniform(key: np.uint64, index: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1), one per index, each a function of (key, index) only (SplitMix64)."""
    with np.errstate(over="ignore"):
        z = key + np.asarray(index, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass
class ViewParams:
    """Per-image augmentation parameters of one view (None: the policy does not use that transform)."""

    dy: torch.Tensor | None = None  # translation in pixels, RandomCrop with zero padding
    dx: torch.Tensor | None = None
    flip: torch.Tensor | None = None  # bool
    degrees: torch.Tensor | None = None
    brightness: torch.Tensor | None = None  # ColorJitter factors
    contrast: torch.Tensor | None = None
    saturation: torch.Tensor | None = None
    hue: torch.Tensor | None = None  # radians
    pad: int = 0  # bound of |dy|, |dx|

    def take(self, idx: torch.Tensor) -> "ViewParams":
        """The rows of the images ``idx`` (positions in the arrays this view was drawn for)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return ViewParams(**{k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in out.items()})


def view_name(policy: str, seed: int, epoch: int) -> str:
    """Names the training view of an epoch; every epoch of an unaugmented trial sees the same one."""
    return "none" if policy == "none" else f"{policy}/seed{seed}/epoch{epoch}"


def draw(policy: str, seed: int, epoch: int, index: np.ndarray, device: torch.device | str = "cpu") -> ViewParams:
    """The parameters of view (policy, seed, epoch) for the images at decoded-dataset positions ``index``."""
    spec = AUGMENT_PRESETS[policy]
    if not spec:
        return ViewParams()

    def u(stream: str) -> np.ndarray:
        return keyed_uniform(stream_key(policy, seed, epoch, stream), index)

    def signed(stream: str, amount: float) -> np.ndarray:
        return (2 * u(stream) - 1) * amount

    out: dict = {}
    if spec.get("pad"):
        pad = spec["pad"]
        out["pad"] = pad
        out["dy"] = np.floor(u("dy") * (2 * pad + 1)).astype(np.int64) - pad
        out["dx"] = np.floor(u("dx") * (2 * pad + 1)).astype(np.int64) - pad
    if spec.get("flip"):
        out["flip"] = u("flip") < 0.5
    if spec.get("rotate"):
        out["degrees"] = signed("rotate", spec["rotate"]).astype(np.float32)
    if spec.get("jitter"):
        b, c, s, h = spec["jitter"]
        for name, amount in (("brightness", b), ("contrast", c), ("saturation", s)):
            if amount:
                out[name] = (1.0 + signed(name, amount)).astype(np.float32)
        if h:
            out["hue"] = signed("hue", h * 2 * math.pi).astype(np.float32)
    return ViewParams(**{k: torch.from_numpy(v).to(device) if isinstance(v, np.ndarray) else v
                         for k, v in out.items()})
