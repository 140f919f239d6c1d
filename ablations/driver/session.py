"""One session of a run in the driver: Tune's events in, the ledger, the collector and the progress printer out.

``Session`` knows nothing of Ray: ``make_recorder`` is the Tune callback that feeds it (and fetches final
checkpoints from Tune's storage), and ``python -m ablations.bench --only driver_scale`` feeds it synthetic
events to show that the cost of an event does not grow with the number of trials.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ablations.store.collector import Collector
from ablations.store.ledger import Ledger
from ablations.command.progress import Progress
from ablations.driver.trackers import final_metrics

# what Tune adds to every result, and our own markers: the rest of an epoch result is the epoch's row
NOT_EPOCH_COLUMNS = {"kind", "trial_id", "checkpoint_path", "checkpoint_dir_name", "done", "should_checkpoint",
                     "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp",
                     "date", "pid", "hostname", "node_ip", "config", "experiment_tag", "iterations_since_restore",
                     "timesteps_total", "timesteps_since_restore", "episodes_total"}


def epoch_row(result: dict[str, Any]) -> dict[str, Any]:
    """The epoch's row (epoch, train_loss, val_acc, ...) from a Tune result: its numbers, less Tune's own."""
    return {k: v for k, v in result.items()
            if k not in NOT_EPOCH_COLUMNS and isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Session:
    ledger: Ledger
    collector: Collector
    progress: Progress
    retries: int = 0
    launched: dict[str, float] = field(default_factory=dict)  # driver clock: Tune started the trial
    on_change: Callable[[], Any] | None = None  # after a trial finished or failed (the results mirror)

    def started(self, tid: str) -> None:
        self.launched[tid] = time.time()
        self.ledger.started(tid)
        self.progress.started(tid)

    def epoch(self, tid: str, result: dict[str, Any]) -> None:
        row = epoch_row(result)
        self.ledger.epoch(tid, row)
        self.progress.epoch(tid, self.ledger.trials[tid].epochs, row)

    def finished(self, tid: str, checkpoint: Path, received: float | None = None) -> dict[str, Any]:
        """A final checkpoint (a local directory) collected; the trial's row metrics."""
        received = time.time() if received is None else received
        got = self.collector.collect(tid, checkpoint, self.launched.get(tid, math.nan), received)
        self.ledger.finished(tid, got.metrics, got.history)
        self.progress.finished(tid, got.metrics)
        if self.on_change is not None:
            self.on_change()
        return got.metrics

    def failed(self, tid: str, error: str) -> None:
        attempts = self.retries + 1
        error = f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''})"
        self.ledger.failed(tid, error)
        self.progress.failed(tid, error)
        if self.on_change is not None:
            self.on_change()


def make_recorder(session: Session, storage: str, demand=None):
    """The Tune callback that feeds ``session``. It must come before the trackers' callbacks: on a trial's final
    result it collects the checkpoint and puts the trial's final metrics into the result (``final/...``), which
    Tune hands to every callback after it (only the headline numbers travel through Tune itself)."""
    from ray import tune

    from ablations.driver.trainable import fetch_checkpoint

    def trial_id(trial) -> str:
        return trial.config["trial"]["trial_id"]

    def left() -> int:
        return len(session.ledger.with_status("pending", "running"))

    class Recorder(tune.Callback):
        def on_step_end(self, iteration, trials, **info):  # Tune's loop: a status line every 30 s, events or not
            session.progress.status()

        def on_trial_start(self, iteration, trials, trial, **info):
            session.started(trial_id(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = trial_id(trial)
            if result.get("kind") == "epoch":
                session.epoch(tid, result)
            elif result.get("kind") == "final":
                received = time.time()
                with tempfile.TemporaryDirectory() as d:
                    local = fetch_checkpoint(storage, result.get("checkpoint_path"), Path(d) / "final")
                    metrics = session.finished(tid, local, received)
                result["final"] = final_metrics(metrics)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if demand is not None:  # fewer trials left: the autoscaler may let nodes go
                demand.update(left())

        def on_trial_error(self, iteration, trials, trial, **info):
            session.failed(trial_id(trial), trial_error(trial))
            if demand is not None:
                demand.update(left())

    return Recorder()


# Ray's wrappers around the exception a trial really raised
_WRAPPERS = ("RayTaskError", "WorkerGroupError", "TrainingFailedError", "ControllerError", "RayActorError")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\(\w+\))?: (.+)")


def root_error(text: str) -> str:
    """The exception a trial raised, from the traceback text Ray stored (which wraps it several times)."""
    found = []
    for line in text.splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m and not m.group(1).split(".")[-1].startswith(_WRAPPERS):
            found.append(f"{m.group(1).split('.')[-1]}: {m.group(2).strip()}")
    if found:
        return found[-1][:500]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed (no error recorded)")[:500]


def trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    return root_error(Path(path).read_text() if path and os.path.exists(path) else "")
