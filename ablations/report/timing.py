"""Where a run's time went: each finished trial's measured parts, summed, against the slot time the run had.

A trial slot is one place a trial can run (the run's concurrency); slot time is wall time x slots. The parts come
from the trial rows (``pipeline.train.Clock``'s ``<part>_seconds`` and the driver's ``s_*`` timeline): Ray's
start of the trial (Tune actor, Train controller and worker processes), building the model and loading its
weights, moving the data to the device, computing frozen-prefix outputs (and, apart, waiting while another trial
computes one this trial reads), training, evaluation (validation every epoch and the final TTA views),
checkpoint writes, and handing the result back to the driver. What is left of the slot time is idle slots and
the driver (data decoding, waves waiting for parents, the tail of the grid). Efficiency is the share of slot time
spent training, evaluating and computing prefixes: the work the study asked for (waiting is not).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

# label -> row columns summed ("-column": subtracted; absent columns count as 0)
PARTS: dict[str, tuple[str, ...]] = {
    "Ray: start of the trial (Tune, Train controller, worker)": ("s_launch_to_trainable", "s_trainable_to_worker",
                                                                  "s_worker_to_fit"),
    "model build and weight load": ("build_seconds",),
    "data to device": ("to_device_seconds",),
    "prefix computation (cache misses)": ("prefix_seconds", "-prefix_wait_seconds"),
    "waiting for another trial's prefix computation": ("prefix_wait_seconds",),
    "training": ("train_seconds",),
    "evaluation (per-epoch validation, final views)": ("val_seconds", "eval_seconds"),
    "checkpoint writes": ("checkpoint_seconds",),
    "result back to the driver": ("s_fit_to_driver",),
}
USEFUL = ("prefix computation (cache misses)", "training", "evaluation (per-epoch validation, final views)")


def where_the_time_went(trials: pd.DataFrame, wall_s: float, slots: int) -> dict[str, Any]:
    """Totals per part over the finished trials of one session (unique trial ids), the rest of the slot time,
    and the efficiency. ``wall_s`` and ``slots``: the session's wall time and concurrency."""
    fin = trials[trials.status == "finished"].drop_duplicates("trial_id") if len(trials) else trials
    def total(col: str) -> float:
        sign, name = (-1.0, col[1:]) if col.startswith("-") else (1.0, col)
        return sign * float(pd.to_numeric(fin[name], errors="coerce").fillna(0).clip(lower=0).sum()) if name in fin \
            else 0.0

    parts = {label: max(sum(total(c) for c in cols), 0.0) for label, cols in PARTS.items()}
    slot = wall_s * max(slots, 1)
    rest = max(slot - sum(parts.values()), 0.0)
    useful = sum(parts[k] for k in USEFUL)
    return {"wall_s": wall_s, "slots": slots, "slot_s": slot, "trials": int(len(fin)), "parts_s": parts,
            "other_s": rest, "efficiency": useful / slot if slot > 0 else float("nan")}


def table_frame(summary: dict[str, Any]) -> pd.DataFrame:
    rows = [{"part": k, "seconds": v} for k, v in summary["parts_s"].items()]
    rows.append({"part": "idle slots and the driver (the rest of the slot time)", "seconds": summary["other_s"]})
    df = pd.DataFrame(rows)
    df["share"] = df.seconds / summary["slot_s"] if summary["slot_s"] else float("nan")
    return df
