"""The results folder: the contract between runner, reporter and users.

    results/<run>/
      run.json              grid, expanded plan, data source and hash, versions, machine, times (paths relative to
                            the run folder, or as the user gave them: no absolute path of the machine that made it)
      trials.parquet        one row per plan point (trial_id, level, axis, arm, seed, config..., metrics)
      epochs.parquet        one row per (trial_id, epoch)
      ledger.jsonl          while a run goes on: one JSON line per event since the tables were last compacted
      labels.npz            val and test labels (once)
      logits/<trial_id>.npz val/test logits per TTA view, float16 (keys 'val/none', 'test/flip', ...)
      models/<trial_id>.pt  trained weights (head + trained stages) of the models the report needs
      REPORT.md, tables/, figures/

Every file is written atomically (temporary file + rename), so a crash never leaves a torn file, except the
ledger, which is only ever appended to: a line is one event, a torn last line (a crash mid-write) is skipped.
The driver writes the tables in full only when it compacts the ledger into them (at the start and the end of a
session, ``ablations.store.ledger``); in between, ``read_trials`` and ``read_epochs`` fold the ledger's events into the
tables, so every reader (the reporter, a resumed run, a report on a running run) sees the rows as of its last
event. Folding is idempotent: the ledger is read before the tables, so a compaction between the two reads
folds events that are already in the tables again, to the same rows.

A ledger event: ``{"trial_id": ..., "set": {column: value, ...}, "epochs": [epoch rows], "replace_epochs": bool}``;
``set`` updates every row of that trial (a trial is one row per plan point it belongs to), ``epochs`` upserts
rows by (trial_id, epoch), after dropping all of the trial's rows when ``replace_epochs``.
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
LEDGER = "ledger.jsonl"


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
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes 0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for other threads meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


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

        machine["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            machine["cuda_build"] = torch.version.cuda
            machine["gpu_driver"] = _nvidia_driver()
    except Exception:
        pass
    from pipeline.provenance import code_version

    return {"code_version": code_version(), "versions": versions, "machine": machine}


def _nvidia_driver() -> str | None:
    """The NVIDIA driver's version as nvidia-smi prints it, or None where it cannot be asked."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


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

    def check_usable(self, grid: str, data_fingerprint: str | None, trial_ids: set[str], extend: bool,
                     memberships: set[tuple[str, str, str, str]] | None = None) -> dict | None:
        """Refuse folders that belong to something else. Returns the existing meta, or None for a new folder.

        The same grid with other trials is refused, unless the two plans differ only in their seeds: the same
        configs in the same roles (``memberships``: (level, axis, arm, config id) of every point, as
        ``grids.Plan.memberships``), e.g. a later ``--seeds k``, or the seeds an ``--until-decided`` run added.
        The caller then merges the two plans."""
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
        if old != trial_ids and (memberships is None or plan_memberships(meta) != memberships):
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
        """trials.parquet with the ledger's events since its last compaction folded in."""
        events = self.read_ledger()  # first: see the module docstring
        return fold_trials(self.read_table("trials"), events)

    def write_trials(self, rows: list[dict[str, Any]]) -> None:
        self.write_table("trials", rows)

    def read_epochs(self) -> pd.DataFrame:
        """epochs.parquet with the ledger's events since its last compaction folded in."""
        events = self.read_ledger()
        return fold_epochs(self.read_table("epochs"), events)

    def write_epochs(self, rows: list[dict[str, Any]]) -> None:
        self.write_table("epochs", rows)

    # ---------------------------------------------------------------- ledger (appended events)

    @property
    def ledger_path(self) -> Path:
        return self.path / LEDGER

    def read_ledger(self) -> list[dict[str, Any]]:
        """The events appended since the last compaction, in order; a torn line (a crash mid-write) is skipped."""
        try:
            text = self.ledger_path.read_text()
        except FileNotFoundError:
            return []
        events = []
        for line in text.split("\n"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "trial_id" in event:
                events.append(event)
        return events

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


def plan_memberships(meta: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """(level, axis, arm, config id) of every point of the plan run.json holds: that plan without its seeds."""
    out = set()
    for r in meta.get("plan") or []:
        cid = r.get("config_id")
        if not cid:  # a folder from before plan rows carried their config id
            from pipeline.config import TrialConfig

            cid = TrialConfig.from_row(r).config_id_in(int(meta.get("id_schema", 1)))
        out.add((str(r["level"]), str(r["axis"]), str(r["arm"]), str(cid)))
    return out


def fold_trials(df: pd.DataFrame, events: list[dict[str, Any]]) -> pd.DataFrame:
    """The trials table after ``events``: each event's ``set`` columns on every row of its trial."""
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("set"):
            latest.setdefault(e["trial_id"], {}).update(e["set"])
    if not latest or not len(df):
        return df
    records = df.to_dict("records")
    for r in records:
        r.update(latest.get(r["trial_id"], {}))
    return pd.DataFrame(records)


def fold_epochs(df: pd.DataFrame, events: list[dict[str, Any]]) -> pd.DataFrame:
    """The epochs table after ``events``: rows upserted by (trial_id, epoch); ``replace_epochs`` drops the trial's
    earlier rows first (a finished trial's history is the authority)."""
    if not any(e.get("epochs") or e.get("replace_epochs") for e in events):
        return df
    by_trial: dict[str, dict[int, dict[str, Any]]] = {}
    for r in df.to_dict("records") if len(df) else []:
        by_trial.setdefault(r["trial_id"], {})[int(r["epoch"])] = r
    for e in events:
        tid = e["trial_id"]
        if e.get("replace_epochs"):
            by_trial[tid] = {}
        for r in e.get("epochs") or []:
            by_trial.setdefault(tid, {})[int(r["epoch"])] = {"trial_id": tid, **r}
    return pd.DataFrame([r for rows in by_trial.values() for _, r in sorted(rows.items())])


def _savez(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
