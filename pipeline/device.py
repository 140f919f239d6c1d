"""Where and in what precision a trial computes: its device, and the autocast dtype there."""
from __future__ import annotations

import contextlib

import torch

from pipeline.config import TrialConfig


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


# batch of evaluation and of prefix-cache fills (``eval_batch_size=0``): measured on each device kind. On these
# AVX2 CPUs Lite0's prefix at 96 px ran at 286 images/s in batches of 64 against 177 in batches of 512 (and at 64
# its outputs equal the plain path's training batches of 64 bit for bit); on GPUs large batches fill the device.
EVAL_BATCH = {"cpu": 64, "cuda": 512}


def eval_batch(cfg: TrialConfig, device: torch.device) -> int:
    """The batch size of evaluation and prefix-cache fills: the config's, else the device kind's (``EVAL_BATCH``)."""
    return cfg.eval_batch_size or EVAL_BATCH.get(device.type, 64)
