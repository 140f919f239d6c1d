"""The driver's ledger: the status and results of every trial of a run, persisted as they change.

Each event (a trial started, an epoch, a trial finished or failed) costs one line appended to the run folder's
``ledger.jsonl`` (format: ``ablations.store.results``), whatever the size of the plan. The tables ``trials.parquet``
and ``epochs.parquet`` are rewritten in full only when the ledger is compacted into them: when a session
starts (``open``: the plan's rows, with what earlier sessions finished) and when it ends (``close``). Readers
fold the ledger's events into the tables meanwhile (``RunFolder.read_trials``), so a report on a running run or
a resumed run after a SIGKILL sees every event that reached the disk.

In memory the ledger keeps one small record per trial (status, execution keys, final metrics), never the
epoch rows.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from pipeline.config import EXECUTION_KEYS

from ablations.plan.grids import Plan
from ablations.store.results import RunFolder


@dataclass
class TrialRecord:
    """What the trials table says about one trial besides its plan columns."""

    status: str = "pending"
    error: str | None = None
    epochs_done: int = 0
    executed: dict[str, Any] = field(default_factory=dict)  # execution keys it ran with (device, threads, ...)
    metrics: dict[str, Any] = field(default_factory=dict)  # final metrics (finished trials)

    def columns(self) -> dict[str, Any]:
        return {**self.executed, "status": self.status, "error": self.error, "epochs_done": self.epochs_done,
                **self.metrics}


class Ledger:
    """Trial records of one run, each change appended to the run folder's ledger as one event."""

    def __init__(self, folder: RunFolder, plan: Plan):
        self.folder, self.plan = folder, plan
        self.trials = plan.trials()
        self.records: dict[str, TrialRecord] = {tid: TrialRecord() for tid in self.trials}
        self.counts: Counter[str] = Counter({"pending": len(self.records)})
        self._out: IO[str] | None = None
        self._load()

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        """Keep what earlier sessions finished (with its logits on disk); everything else runs (again)."""
        old = self.folder.read_trials()
        if not len(old):
            return
        plan_columns = set(self.plan.points[0].row()) | {"status", "error", "epochs_done"}
        for rec in old.drop_duplicates("trial_id").to_dict("records"):
            tid = rec["trial_id"]
            if tid in self.records and rec.get("status") == "finished" and self.folder.logits_path(tid).exists():
                self._set_status(tid, "finished")
                r = self.records[tid]
                r.metrics = {k: v for k, v in rec.items() if k not in plan_columns and k not in EXECUTION_KEYS}
                r.executed = {k: rec[k] for k in EXECUTION_KEYS if k in rec}
                r.epochs_done = int(_number(rec.get("epochs_done")))

    def grow(self, plan: Plan) -> list[str]:
        """The run's plan grew (``--until-decided`` added seeds): its new trials are pending, and the tables are
        compacted so that they hold the new rows (readers see them at once). Returns the new trial ids."""
        self.plan, self.trials = plan, plan.trials()
        new = [tid for tid in self.trials if tid not in self.records]
        for tid in new:
            self.records[tid] = TrialRecord()
        self.counts["pending"] += len(new)
        self.compact()
        return new

    def status(self, tid: str) -> str:
        return self.records[tid].status

    def pending(self) -> list[str]:
        """Trials not finished (pending, running or failed): what a session runs."""
        return [tid for tid, r in self.records.items() if r.status != "finished"]

    def with_status(self, *statuses: str) -> list[str]:
        return [tid for tid, r in self.records.items() if r.status in statuses]

    def rows(self) -> list[dict[str, Any]]:
        """The trials table: one row per plan point."""
        return [{**p.row(), **self.records[p.trial_id].columns()} for p in self.plan.points]

    def _set_status(self, tid: str, status: str) -> None:
        r = self.records[tid]
        self.counts[r.status] -= 1
        self.counts[status] += 1
        r.status = status

    # ------------------------------------------------------------------ events

    def executing(self, tid: str, executed: dict[str, Any]) -> None:
        """The execution keys a trial is about to run with (recorded with its next event)."""
        self.records[tid].executed = dict(executed)

    def started(self, tid: str) -> None:
        self._set_status(tid, "running")
        self.records[tid].error = None
        self._append(tid, {**self.records[tid].executed, "status": "running", "error": None})

    def epoch(self, tid: str, row: dict[str, Any]) -> None:
        r = self.records[tid]
        if r.status != "running":
            self._set_status(tid, "running")
        r.epochs_done = int(row.get("epoch", r.epochs_done))
        self._append(tid, {"status": "running", "error": None, "epochs_done": r.epochs_done}, epochs=[row])

    def finished(self, tid: str, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        r = self.records[tid]
        self._set_status(tid, "finished")
        r.error, r.metrics = None, dict(metrics)
        r.epochs_done = sum(1 for h in history if int(h.get("epoch", 1)) >= 1)  # a child's epoch 0 is its start
        self._append(tid, r.columns(), epochs=history, replace_epochs=True)

    def failed(self, tid: str, error: str) -> None:
        self._set_status(tid, "failed")
        self.records[tid].error = error
        self._append(tid, {"status": "failed", "error": error})

    def _append(self, tid: str, columns: dict[str, Any], epochs: list[dict] | None = None,
                replace_epochs: bool = False) -> None:
        event: dict[str, Any] = {"trial_id": tid, "set": columns}
        if epochs is not None:
            event["epochs"] = epochs
        if replace_epochs:
            event["replace_epochs"] = True
        if self._out is None:
            self._out = open(self.folder.ledger_path, "a", encoding="utf-8")
        # one write of one line: a crash leaves at most a torn last line, which readers skip
        self._out.write(json.dumps(event, default=_plain, allow_nan=True) + "\n")
        self._out.flush()

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks (and so this ledger) with every Tuner: without the open append handle,
        which is reopened at the next event."""
        return {**self.__dict__, "_out": None}

    # ------------------------------------------------------------------ compaction

    def open(self) -> None:
        """Start a session: the tables hold every plan point (an --extend adds some), trials that did not
        finish are pending again, and the ledger is empty."""
        self.compact()

    def close(self) -> None:
        """End a session (normally or interrupted): the ledger compacted into the tables."""
        self.compact()

    def compact(self) -> None:
        """Write trials.parquet and epochs.parquet with everything the ledger holds, then empty the ledger. A crash
        in between leaves the ledger to be folded in again, which changes nothing (events are idempotent)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        epochs = self.folder.read_epochs()  # the ledger's epoch rows folded in
        self.folder.write_trials(self.rows())
        if len(epochs):
            known = set(self.records)
            self.folder.write_epochs([r for r in epochs.to_dict("records") if r["trial_id"] in known])
        try:
            os.unlink(self.folder.ledger_path)
        except FileNotFoundError:
            pass


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(v) else v


def _plain(value: Any) -> Any:
    """numpy scalars and other JSON strangers in a row, as plain values."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)

