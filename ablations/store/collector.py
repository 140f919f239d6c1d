"""The collector: a finished trial's final checkpoint into the results folder.

The worker's final checkpoint holds ``final.json`` (metrics and per-epoch history), ``logits.npz`` and
``model.pt`` (``ablations.driver.trainable``). The collector copies the logits and (unless ``--keep-models none``) the
weights into the run folder, atomically, and returns the trial's row metrics: the worker's, where its wall time
went (driver and worker clocks), and the driver's memory. At the end of a complete run ``prune_models`` keeps
only the weights the report needs (``--keep-models best``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.store.results import RunFolder, atomic_write


@dataclass
class Collected:
    metrics: dict[str, Any]  # the trials-table columns of a finished trial
    history: list[dict[str, Any]]  # its epoch rows


class Collector:
    def __init__(self, folder: RunFolder, keep_models: str, parents: set[str] | None = None):
        """``parents``: trials that others start from (``init_from``); their weights are always kept."""
        self.folder, self.keep_models, self.parents = folder, keep_models, set(parents or ())

    def collect(self, tid: str, checkpoint: Path, launched: float, received: float) -> Collected:
        """Copy a final checkpoint directory (already on this machine) into the run folder. ``launched`` and
        ``received``: the driver's clock when the trial started and when its final result arrived."""
        final = json.loads((checkpoint / "final.json").read_text())
        self.folder.copy_logits(tid, checkpoint / "logits.npz")
        if self.keep_models != "none" or tid in self.parents:
            atomic_write(self.folder.model_path(tid), lambda tmp: shutil.copyfile(checkpoint / "model.pt", tmp))
        m = final["metrics"]
        return Collected({**m, **timeline(m, launched, received), "driver_rss_mb": rss_mb()}, final["history"])

    def prune_models(self, rows: list[dict[str, Any]]) -> None:
        """--keep-models best, once every trial has finished: keep the weights of each level's best config only.
        (Not earlier: a config that is not the best yet may become it, and its weights would be gone.)"""
        if self.keep_models != "best":
            return
        import pandas as pd

        from ablations.store.best import best_config_ids

        keep_cfg = set(best_config_ids(pd.DataFrame(rows)).values())
        keep = {r["trial_id"] for r in rows if r["config_id"] in keep_cfg} | self.parents
        models = self.folder.path / "models"
        if models.exists():
            for f in models.glob("*.pt"):
                if f.stem not in keep:
                    f.unlink()


def timeline(m: dict[str, Any], launched: float, received: float) -> dict[str, float]:
    """Where a trial's wall time went (driver and worker clocks; same machine or NTP-synced). ``s_trial_wall``:
    from Tune starting the trial to its final result in the driver (what the ETA is calibrated on)."""
    return {
        "s_launch_to_trainable": m["t_trainable_start"] - launched,
        "s_trainable_to_worker": m["t_worker_start"] - m["t_trainable_start"],
        "s_worker_to_fit": m["t_fit_start"] - m["t_worker_start"],
        "s_fit": m["t_fit_end"] - m["t_fit_start"],
        "s_fit_to_driver": received - m["t_fit_end"],
        "s_trial_wall": received - launched,
    }


def rss_mb() -> float:
    """This process's resident memory in MiB: now on Linux, the peak elsewhere. Each finished trial's row
    records the driver's, so ``trials.parquet`` shows whether the driver grows with the number of trials."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
