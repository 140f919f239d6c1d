"""One session of a run in the driver: a trial's events in (started, an epoch, finished with its final
checkpoint, failed), the ledger, the collector and the progress printer out.

``Session`` knows nothing of Ray: ``ablations.driver.recorder`` is the Tune callback that feeds it (and fetches
final checkpoints from Tune's storage), and ``python -m ablations.bench --only driver_scale`` feeds it synthetic
events to show that the cost of an event does not grow with the number of trials.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ablations.session.progress import Progress
from ablations.store.collector import Collector
from ablations.store.ledger import Ledger

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
