"""The results folder: the contract between runner, reporter and users.

    results/<run>/
      run.json              grid, expanded plan, data source and hash, versions, machine, times
      trials.parquet        one row per plan point (trial_id, level, axis, arm, seed, config..., metrics)
      epochs.parquet        one row per (trial_id, epoch)
      labels.npz            val and test labels (once)
      logits/<trial_id>.npz val/test logits per TTA view, float16 (keys 'val/none', 'test/flip', ...)
      models/<trial_id>.pt  trained weights (head + trained stages) of the models the report needs
      REPORT.md, tables/, figures/

Every file is written atomically (temporary file + rename), so a crash never leaves a torn file.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.ids import ID_SCHEMA

FORMAT = "ablations-run/1"
STATUSES = ("finished", "failed", "running", "pending")


class RunFolderError(UserError, RuntimeError):
    """A results folder that cannot be used for this run; one line for the user."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then rename the temporary file over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "torchvision", "ray", "numpy", "pandas", "scikit-learn", "efficientnet-lite-pytorch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    machine = {"hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
               "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return {"versions": versions, "machine": machine}


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---------------------------------------------------------------- identity

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    def exists(self) -> bool:
        return self.run_json.exists()

    def read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RunFolderError(f"{self.path}: unreadable run.json ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RunFolderError(f"{self.path} is not an ablations results folder (run.json format is not {FORMAT})")
        return meta

    def id_schema(self) -> int:
        """The trial-id schema the folder was made with (``pipeline.ids``): 1 for folders from before schemas were
        recorded, the current one for a new folder. A folder of a newer version is refused."""
        if not self.exists():
            return ID_SCHEMA
        schema = int(self.read_meta().get("id_schema", 1))
        if schema > ID_SCHEMA:
            raise RunFolderError(f"{self.path} was made by a newer version of this tool (trial-id schema {schema}, "
                                 f"this one knows up to {ID_SCHEMA}); upgrade, or choose another --name")
        return schema

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.run_json, json.dumps({"format": FORMAT, **meta}, indent=1, default=str))

    def check_usable(self, grid: str, data_fingerprint: str | None, trial_ids: set[str], extend: bool) -> dict | None:
        """Refuse folders that belong to something else. Returns the existing meta, or None for a new folder."""
        if not self.path.exists():
            return None
        if not self.exists():
            if any(self.path.iterdir()):
                raise RunFolderError(f"{self.path} exists and is not an ablations results folder (no run.json); "
                                     f"choose another --name")
            return None
        meta = self.read_meta()
        if data_fingerprint and meta.get("data", {}).get("fingerprint") not in (None, data_fingerprint):
            raise RunFolderError(f"{self.path} was run on other data ({meta['data'].get('source')}); "
                                 f"choose another --name")
        if extend:
            return meta
        if meta.get("grid") != grid:
            raise RunFolderError(f"{self.path} holds grid {meta.get('grid')!r}, not {grid!r}; "
                                 f"choose another --name, or pass --extend to add these trials to it")
        old = set(meta.get("trial_ids", []))
        if old != trial_ids:
            raise RunFolderError(f"{self.path} was run with a different plan ({len(trial_ids - old)} new, "
                                 f"{len(old - trial_ids)} dropped trials); choose another --name, or pass --extend")
        return meta

    # ---------------------------------------------------------------- tables

    def read_table(self, name: str) -> pd.DataFrame:
        p = self.path / f"{name}.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame()

    def write_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        df = pd.DataFrame(rows)
        atomic_write(self.path / f"{name}.parquet", lambda tmp: df.to_parquet(tmp, index=False))

    def read_trials(self) -> pd.DataFrame:
        return self.read_table("trials")

    def write_trials(self, rows: list[dict[str, Any]]) -> None:
        self.write_table("trials", rows)

    def read_epochs(self) -> pd.DataFrame:
        return self.read_table("epochs")

    def write_epochs(self, rows: list[dict[str, Any]]) -> None:
        self.write_table("epochs", rows)

    # ---------------------------------------------------------------- arrays

    def write_labels(self, labels: dict[str, np.ndarray], classes) -> None:
        atomic_write(self.path / "labels.npz",
                     lambda tmp: _savez(tmp, {**labels, "classes": np.asarray(classes)}))

    def read_labels(self) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        with np.load(self.path / "labels.npz") as z:
            return {"val": z["val"], "test": z["test"]}, tuple(str(c) for c in z["classes"])

    def logits_path(self, trial_id: str) -> Path:
        return self.path / "logits" / f"{trial_id}.npz"

    def write_logits(self, trial_id: str, logits: dict[str, dict[str, np.ndarray]]) -> None:
        flat = {f"{split}/{view}": a.astype(np.float16) for split, d in logits.items() for view, a in d.items()}
        atomic_write(self.logits_path(trial_id), lambda tmp: _savez(tmp, flat))

    def copy_logits(self, trial_id: str, npz: Path) -> None:
        """A logits file as a trial's worker wrote it (same keys and float16), copied in atomically."""
        atomic_write(self.logits_path(trial_id), lambda tmp: shutil.copyfile(npz, tmp))

    def read_logits(self, trial_id: str) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        with np.load(self.logits_path(trial_id)) as z:
            for key in z.files:
                split, view = key.split("/", 1)
                out.setdefault(split, {})[view] = z[key].astype(np.float32)
        return out

    def model_path(self, trial_id: str) -> Path:
        return self.path / "models" / f"{trial_id}.pt"


def _savez(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
