"""Frozen-backbone feature cache.

A trial whose backbone is frozen and whose training inputs are deterministic (no augmentation, no
MixUp/CutMix) sees the same backbone features every epoch, and so does every other trial with the same
backbone, weights, resolution and normalization, whatever its learning rate, seed or head. Those
features are computed once per (backbone, weights, resolution, normalization, precision, images, view)
and kept in memory and, when a directory is given, on disk, where trials in other processes on the
same machine find them.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

Features = tuple[np.ndarray, np.ndarray]  # pooled outputs of stage 3 and stage 4, float32


def array_digest(x: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((x.shape, x.dtype.str)).encode())
    h.update(np.ascontiguousarray(x).data)
    return h.hexdigest()


def feature_key(parts: dict) -> str:
    blob = "|".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


class FeatureCache:
    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, Features] = {}
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], Features]) -> Features:
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.directory / f"{key}.npz" if self.directory else None
        if path is not None and path.exists():
            try:
                with np.load(path) as z:
                    feats = (z["p3"], z["p4"])
                self.hits += 1
                self._memory[key] = feats
                return feats
            except (OSError, ValueError, KeyError):
                pass  # a corrupt file: recompute and overwrite
        self.misses += 1
        feats = compute()
        self._memory[key] = feats
        if path is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp.npz")
            os.close(fd)
            np.savez(tmp, p3=feats[0], p4=feats[1])
            os.replace(tmp, path)
        return feats
