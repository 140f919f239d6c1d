"""Where and in what precision a trial computes: its device, and the autocast dtype there."""
from __future__ import annotations

import contextlib

import torch

from .config import TrialConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device")
    return torch.device(name)


def amp_dtype(cfg: TrialConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 (or fp16) on GPUs by default; off on CPUs, where bf16 is measured slower."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class Precision:
    """A trial's autocast: ``with precision.autocast(): ...`` (a no-op without one)."""

    def __init__(self, cfg: TrialConfig, device: torch.device):
        self.device, self.dtype = device, amp_dtype(cfg, device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext()
