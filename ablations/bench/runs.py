"""Sections that run the CLI itself in a subprocess: the driver's memory over a run, the two trial runners on the
same trials, the smoke grid's wall time, and how fast bad input fails."""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- 4. driver memory

MEMORY_GRID = """\
description: many cheap real trials, to watch the driver's memory as they finish
seeds: 1
base: {train_per_class: 20, val_size: 100, test_per_class: 10}
levels:
  L3: {set: {backbone: small_cnn, pretrained: false, train_stages: all, head: mlp, resolution: 32, epochs: 1,
             batch_size: 50}}
"""


def run_grid(grid: str, name: str, *flags: str) -> tuple[float, Any]:
    """``python -m ablations.run --grid GRID`` in a subprocess into a temporary folder: (wall seconds, its
    trials.parquet as a DataFrame, or the last line of its error)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ablations.run", "--grid", grid, "--results", d, "--name", name,
                               "--no-report", *flags], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            return wall, (proc.stderr.strip().splitlines()[-1:] or ["failed"])
        return wall, pd.read_parquet(Path(d) / name / "trials.parquet")


def bench_driver_memory(n_trials: int) -> dict:
    """``ablations.run`` on ``n_trials`` cheap real trials: the driver's resident memory recorded in each
    finished trial's row (``driver_rss_mb``), and its growth per trial over the second half of the run."""
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / "memory.yaml"
        grid.write_text(MEMORY_GRID)
        wall, df = run_grid(str(grid), "memory", "--seeds", str(n_trials), "--keep-models", "none")
    if isinstance(df, list):
        return {"error": df, "seconds": wall}
    rss = df.sort_values("t_fit_end").driver_rss_mb.to_numpy()
    tail = rss[len(rss) // 2:]
    slope = float(np.polyfit(np.arange(len(tail)), tail, 1)[0]) if len(tail) > 1 else float("nan")
    return {"trials": len(df), "seconds": wall, "rss_mb_after_first": float(rss[0]),
            "rss_mb_after_last": float(rss[-1]), "kib_per_trial_second_half": slope * 1024}



# ----------------------------------------------------------------------------- 4c. trial runners

RUNNER_GRID = """\
description: identical small real trials, to time what a trial costs besides its work, per trial runner
seeds: {seeds}
base: {{train_per_class: 50, val_size: 200, test_per_class: 20}}
levels:
  L2: {{set: {{backbone: efficientnet_lite0, pretrained: true, resolution: 64, train_stages: "1", epochs: 1,
              batch_size: 64}}}}
"""
WORK_COLUMNS = ("prefix_seconds", "train_seconds", "val_seconds", "eval_seconds")


def bench_runner(n_trials: int, device: str = "cpu") -> dict:
    """The same ``n_trials`` small real trials, one at a time, through ``python -m ablations.run`` with each trial
    runner ("train", then "actor"): wall time per trial, and per trial (medians) its slot time (Tune starting it
    to the driver's receipt) and the part of it that was not work."""
    flags = ["--max-concurrent", "1", "--log", "none"]
    if device == "cuda":
        flags += ["--device", "cuda", "--gpus-per-trial", "1", "--cpus-per-trial", "3"]
    out: dict[str, Any] = {"trials": n_trials, "device": device}
    with tempfile.TemporaryDirectory() as d:
        grid = Path(d) / "runner.yaml"
        grid.write_text(RUNNER_GRID.format(seeds=n_trials))
        for name in ("train", "actor"):
            wall, df = run_grid(str(grid), f"runner-{name}", "--trial-runner", name, *flags)
            if isinstance(df, list):
                out[name] = {"error": df, "seconds": wall}
                continue
            df = df.drop_duplicates("trial_id").sort_values("t_fit_start")
            work = sum(df[c].fillna(0) for c in WORK_COLUMNS)
            rest = df.s_trial_wall - work
            out[name] = {"seconds": wall, "seconds_per_trial": wall / len(df),
                         "slot_s_median": float(df.s_trial_wall.median()), "work_s_median": float(work.median()),
                         "not_work_s_median": float(rest.median()), "not_work_s_first": float(rest.iloc[0]),
                         "not_work_s_later_median": float(rest.iloc[1:].median()) if len(df) > 1 else float("nan"),
                         "build_s_median": float(df.build_seconds.median())}
            print(f"  runner {name}: {wall / len(df):.1f} s per trial, {rest.median():.1f} s of each slot not work",
                  flush=True)
    if "error" not in out.get("train", {}) and "error" not in out.get("actor", {}):
        out["ratio_actor_vs_train_not_work"] = out["actor"]["not_work_s_median"] / out["train"]["not_work_s_median"]
        out["ratio_actor_vs_train_per_trial"] = out["actor"]["seconds_per_trial"] / out["train"]["seconds_per_trial"]
    return out


# ----------------------------------------------------------------------------- 5. smoke grid


def bench_smoke() -> dict:
    wall, df = run_grid("smoke", "smoke")
    if isinstance(df, list):
        return {"error": df, "seconds": wall}
    df = df.drop_duplicates("trial_id")
    overhead = (df.s_launch_to_trainable + df.s_trainable_to_worker + df.s_worker_to_fit + df.s_fit_to_driver)
    return {"seconds": wall, "trials": len(df), "test_acc": dict(zip(df.level + "/" + df.arm, df.test_acc)),
            "median_ray_overhead_per_trial_s": float(overhead.median())}


# ----------------------------------------------------------------------------- 6. failing fast

FAIL_FAST_CASES = {
    "unknown grid": ["--grid", "nope", "--dry-run"],
    "bad --set": ["--grid", "smoke", "--set", "lr=fast", "--dry-run"],
    "unreachable --address": ["--grid", "smoke", "--address", "127.0.0.1:1", "--no-report"],
}


def bench_fail_fast(rounds: int) -> dict:
    """Seconds from starting ``python -m ablations.run`` with bad input to its exit with one ``error:`` line
    (median of ``rounds``)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for name, args in FAIL_FAST_CASES.items():
            times, lines = [], []
            for _ in range(rounds):
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "ablations.run", *args, "--results", d],
                                      capture_output=True, text=True)
                times.append(time.perf_counter() - t)
                lines = proc.stderr.strip().splitlines()
            out[name] = {"seconds": statistics.median(times), "exit_code": proc.returncode,
                         "one_line": len(lines) == 1 and lines[0].startswith("error: ")}
    return out
