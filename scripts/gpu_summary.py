"""The GPU check's numbers (scripts/gpu_ray_check.sh) as Markdown tables, from its committed run folders:

    python scripts/gpu_summary.py examples/gpu

1. per trial: when it ran (seconds from the run's first trial start), where its slot went, its second epoch's
   training speed and GPU memory, and which path the prefix cache's cost model chose with its two measurements;
2. where the time went, per run (the runs were stopped by the check's time limits, so the slot time is the span
   from the first trial's start to the last trial's end, not the session's wall time);
3. the estimate against the measured trial times: the estimate the run printed (H100 speeds, 16 s per trial) and
   the current one (the H200 table and the overhead fitted on these same trials, so not an independent check).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import speeds as S  # noqa: E402
from ablations.estimate import Target, trial_seconds  # noqa: E402
from ablations.report.timing import where_the_time_went  # noqa: E402
from pipeline.config import TrialConfig  # noqa: E402

RUNS = {"gpu1": 1, "gpu4": 4, "nocache": 1}  # run folder: trials per GPU
OLD_OVERHEAD_S = 16.0  # the estimate's per-trial overhead when the check ran (all devices)


def finished(folder: Path) -> pd.DataFrame:
    df = pd.read_parquet(folder / "trials.parquet").drop_duplicates("trial_id")
    return df[df.status == "finished"].copy()


def second_epoch_speed(folder: Path) -> dict[str, float]:
    e = pd.read_parquet(folder / "epochs.parquet")
    e = e[e.epoch == 2].drop_duplicates("trial_id")
    return dict(zip(e.trial_id, 9000 / e.seconds))


def trial_table(root: Path) -> list[str]:
    lines = ["| run | trial | level/arm | start s | fit start s | end s | Ray start s | build s | prefix s | train s |"
             " eval s | epoch-2 img/s | GPU MiB | prefix path | recompute / read us per image |",
             "|" + "---|" * 15]
    for run in RUNS:
        df = finished(root / run)
        if df.empty:
            continue
        t0 = (df.t_trainable_start - df.s_launch_to_trainable).min()
        speed = second_epoch_speed(root / run)
        for r in df.sort_values("t_trainable_start").itertuples():
            ray_start = r.s_launch_to_trainable + r.s_trainable_to_worker + r.s_worker_to_fit
            lines.append(
                f"| {run} | {r.trial_id} | {r.level}/{r.arm} | {r.t_trainable_start - t0:.1f} | "
                f"{r.t_fit_start - t0:.1f} | {r.t_fit_end - t0:.1f} | {ray_start:.1f} | {r.build_seconds:.1f} | "
                f"{r.prefix_seconds:.1f} | {r.train_seconds:.1f} | {r.val_seconds + r.eval_seconds:.1f} | "
                f"{speed.get(r.trial_id, float('nan')):.0f} | {r.gpu_peak_mib:.0f} | {r.prefix_path} | "
                f"{r.prefix_recompute_us_per_image:.1f} / {r.prefix_read_us_per_image:.1f} |")
    return lines


def time_table(root: Path) -> list[str]:
    out = []
    for run, slots in RUNS.items():
        df = finished(root / run)
        if df.empty:
            continue
        start = (df.t_trainable_start - df.s_launch_to_trainable).min()
        span = float((df.t_fit_end + df.s_fit_to_driver).max() - start)
        w = where_the_time_went(df, span, slots)
        out += [f"**{run}** ({len(df)} finished trials, {slots} slot(s), {span:.1f} s from the first start to the "
                f"last result): efficiency {w['efficiency']:.0%}", "", "| part | seconds | share of slot time |",
                "|---|---|---|"]
        for k, v in w["parts_s"].items():
            if v > 0:
                out.append(f"| {k} | {v:.1f} | {v / w['slot_s']:.0%} |")
        out += [f"| idle slots and the driver | {w['other_s']:.1f} | {w['other_s'] / w['slot_s']:.0%} |", ""]
    return out


def estimate_table(root: Path) -> list[str]:
    lines = ["| run | trial | level/arm | measured s (Tune start to result) | estimate then (H100, 16 s) | "
             "estimate now (H200 table, overhead fitted here) |", "|---|---|---|---|---|---|"]
    for run, per_gpu in RUNS.items():
        df = finished(root / run)
        for r in df.itertuples():
            cfg = TrialConfig.from_row(r._asdict())
            sizes = (9000, 1000, 10000)
            old = trial_seconds(cfg, *sizes, Target(gpu=True, gpu_model="H100", per_gpu=per_gpu))
            old += OLD_OVERHEAD_S - S.TRIAL_OVERHEAD_S[("cuda", "train")]
            new = trial_seconds(cfg, *sizes, Target(gpu=True, gpu_model="H200", per_gpu=per_gpu))
            lines.append(f"| {run} | {r.trial_id} | {r.level}/{r.arm} | {r.s_trial_wall:.1f} | {old:.1f} | {new:.1f} |")
    return lines


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/gpu")
    print("\n".join(["### Trials", "", *trial_table(root), "", "### Where the time went", "", *time_table(root),
                     "### The estimate against the measured trials", "", *estimate_table(root)]))


if __name__ == "__main__":
    main()
