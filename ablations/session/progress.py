"""What the driver prints while a run goes on: one line per event, and a status line with an ETA.

    [12/40 done, 4 running, 23 pending, 1 failed | 6m10s elapsed, ETA 14m (dry-run estimate x1.21, from 12 trials)]

The ETA starts from the dry run's per-trial estimate (``ablations.plan.estimate.plan_seconds``) and is calibrated
as trials finish: the factor is the finished trials' measured seconds (Tune starting the trial to its final
result in the driver) over their estimates. Remaining work is the calibrated estimate of every pending trial
plus what is left of every running one, spread over the run's concurrency. Every update is O(1) (running
trials: O(concurrency)); labels come from an index built once, not from a scan of the plan.

A status line is printed at every trial that ends (in ``--quiet`` mode only when ``every_s`` seconds have passed
since the last one, or when it was the last trial) and at least every ``every_s`` seconds while trials run
(the driver's Tune callback calls ``status`` on every step of Tune's loop). ``--quiet`` prints the status lines
and errors only.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from ablations.plan.grids import Plan


def labels(plan: Plan) -> dict[str, str]:
    """Each trial's label (its first plan point), indexed once."""
    out: dict[str, str] = {}
    for p in plan.points:
        out.setdefault(p.trial_id, f"{p.level}/{p.axis}={p.arm} seed {p.seed} [{p.trial_id}]")
    return out


def duration(seconds: float) -> str:
    """7s, 6m10s, 2h05m."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Eta:
    """Remaining wall time from per-trial estimates, calibrated on finished trials' measured seconds."""

    estimates: dict[str, float]  # trial -> the dry run's seconds
    concurrency: int
    pending_s: float = 0.0  # sum of the estimates of trials not started
    running: dict[str, float] = field(default_factory=dict)  # trial -> when it started
    measured_s: float = 0.0  # finished trials: sum of measured seconds
    estimated_s: float = 0.0  # finished trials: sum of their estimates
    calibrated_on: int = 0

    def __post_init__(self) -> None:
        self.pending_s = sum(self.estimates.values())

    @property
    def factor(self) -> float:
        return self.measured_s / self.estimated_s if self.calibrated_on and self.estimated_s > 0 else 1.0

    def add(self, estimates: dict[str, float]) -> None:
        """More trials to run (an adaptive round): their estimates join the pending work."""
        for tid, sec in estimates.items():
            if tid not in self.estimates:
                self.estimates[tid] = sec
                self.pending_s += sec

    def started(self, tid: str, when: float) -> None:
        if tid not in self.running:
            self.pending_s -= self.estimates.get(tid, 0.0)
            self.running[tid] = when

    def ended(self, tid: str, seconds: float | None) -> None:
        """A trial finished (``seconds``: measured) or failed (None: not a measurement)."""
        if self.running.pop(tid, None) is None:
            self.pending_s -= self.estimates.get(tid, 0.0)
        if seconds is not None and seconds == seconds and tid in self.estimates:
            self.measured_s += seconds
            self.estimated_s += self.estimates[tid]
            self.calibrated_on += 1

    def remaining(self, now: float) -> float:
        k = self.factor
        left = k * max(self.pending_s, 0.0)
        for tid, t in self.running.items():
            left += max(k * self.estimates.get(tid, 0.0) - (now - t), 0.0)
        return left / max(self.concurrency, 1)

    def describe(self) -> str:
        if not self.calibrated_on:
            return "dry-run estimate"
        return f"dry-run estimate x{self.factor:.2f}, from {self.calibrated_on} trial{'s' * (self.calibrated_on > 1)}"


class Progress:
    """Prints the run's events and status lines; knows nothing of Ray (``ablations.run`` feeds it)."""

    def __init__(self, labels: dict[str, str], counts: Counter, eta: Eta, *, quiet: bool = False,
                 every_s: float = 30.0, out: IO[str] | None = None, clock: Callable[[], float] = time.time,
                 start: float | None = None):
        self.labels, self.counts, self.eta = labels, counts, eta
        self.quiet, self.every_s, self.clock = quiet, every_s, clock
        self.out = out or sys.stdout
        self.t0 = clock() if start is None else start  # elapsed: since the command started
        self.last_status = float("-inf")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def status_line(self) -> str:
        c = self.counts
        total = sum(c[k] for k in ("finished", "running", "pending", "failed"))
        now = self.clock()
        eta = self.eta.remaining(now)
        eta_txt = f"ETA {duration(eta)} ({self.eta.describe()})" if c["running"] + c["pending"] else "done"
        return (f"[{c['finished']}/{total} done, {c['running']} running, {c['pending']} pending, {c['failed']} failed"
                f" | {duration(now - self.t0)} elapsed, {eta_txt}]")

    def status(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last_status >= self.every_s:
            self.last_status = now
            self._print(self.status_line())

    def add(self, labels: dict[str, str], estimates: dict[str, float]) -> None:
        """Trials added while the run goes on (``--until-decided``): their labels and estimates."""
        for tid, label in labels.items():
            self.labels.setdefault(tid, label)
        self.eta.add(estimates)

    def say(self, line: str) -> None:
        """A line of the run's own (an adaptive round), printed in --quiet mode too."""
        self._print(line)

    # ------------------------------------------------------------------ events

    def started(self, tid: str) -> None:
        self.eta.started(tid, self.clock())

    def epoch(self, tid: str, epochs: int, row: dict[str, Any]) -> None:
        if not self.quiet and row.get("epoch") == 0:  # a child validated from its parent's weights
            self._print(f"  {self.labels[tid]} epoch 0/{epochs} (its parent's model): "
                        f"val_acc {row.get('val_acc', float('nan')):.3f}")
        elif not self.quiet:
            self._print(f"  {self.labels[tid]} epoch {row.get('epoch')}/{epochs}: "
                        f"train_acc {row.get('train_acc', float('nan')):.3f} "
                        f"val_acc {row.get('val_acc', float('nan')):.3f}")
        self.status()

    def finished(self, tid: str, metrics: dict[str, Any]) -> None:
        self.eta.ended(tid, metrics.get("s_trial_wall"))
        if not self.quiet:
            self._print(f"finished {self.labels[tid]}: val_acc {metrics.get('val_acc', float('nan')):.3f} "
                        f"test_acc {metrics.get('test_acc', float('nan')):.3f} "
                        f"({metrics.get('trial_seconds', float('nan')):.0f} s in trial)")
        self.status(force=not self.quiet or self.all_ended())

    def failed(self, tid: str, error: str) -> None:
        self.eta.ended(tid, None)
        self._print(f"FAILED {self.labels[tid]}: {error}")
        self.status(force=True)

    def all_ended(self) -> bool:
        return not (self.counts["running"] or self.counts["pending"])


def estimate_comparison(wall_s: float, estimated_s: float, trials: int) -> str:
    """The closing line: this session's wall time against the dry run's estimate for the trials it ran."""
    if not trials:
        return f"wall time {duration(wall_s)} (no trial to run)"
    ratio = wall_s / estimated_s if estimated_s > 0 else float("nan")
    which = f"these {trials} trials" if trials > 1 else "its one trial"
    return f"wall time {duration(wall_s)} against the dry run's estimate of {duration(estimated_s)} for {which}: {ratio:.2f}x"

