"""The Tune callback that feeds a run's ``Session`` (``ablations.session.events``) with Tune's events, and the error a
failed trial really raised, from the traceback Ray stored."""
from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ablations.driver.trackers import final_metrics

if TYPE_CHECKING:
    from ablations.session.events import Session


def make_recorder(session: "Session", storage: str, demand=None):
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
