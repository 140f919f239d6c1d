"""The GPU check's numbers (examples/gpu/gpu_ray_check.sh) as Markdown tables, from its run folders:

    python examples/gpu/gpu_summary.py examples/gpu        # the H200 check of issue 20 (gpu1, gpu4, nocache)
    python examples/gpu/gpu_summary.py FOLDER              # a later check: its .tgz files unpacked into FOLDER

Every folder under FOLDER holding a trials.parquet is a run, in the order the runs started.

1. per trial: when it ran (seconds from the run's first trial start), where its slot went, its last epoch's
   training speed, how many other trials trained at the same time, its peak GPU memory against the peak the
   packing plans with (``ablations.plan.gpu_memory``), and which path the prefix cache's cost model chose;
2. where the time went, per run: slot time is the span from the first trial's start to the last result, times
   the run's concurrency (the runs may have been stopped by the check's limits, so not the session's wall time);
3. GPU memory, per run with samples (NAME.gpu.csv beside its folder, nvidia-smi every 0.5 s): the most one
   process held (its CUDA context, torch's cache and all) against the footprint ``--gpus-per-trial auto`` plans for
   the run's heaviest trial, and the most the GPU held in all;
4. the estimate against the measured trial times (``ablations.plan.estimate`` for the run's GPU, trials per GPU and
   runner); for the issue-20 runs also the estimate their run printed (H100 speeds, 16 s per trial).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.config import TrialConfig  # noqa: E402

from ablations.plan import speeds as S  # noqa: E402
from ablations.plan.estimate import Target, trial_seconds  # noqa: E402
from ablations.plan.gpu_memory import trial_peak  # noqa: E402
from ablations.plan.packing import footprint_mib  # noqa: E402
from ablations.report.timing import where_the_time_went  # noqa: E402

LEGACY = {"gpu1": 1, "gpu4": 4, "nocache": 1}  # issue 20's runs (run.json has no resources): trials per GPU
OLD_OVERHEAD_S = 16.0  # the estimate's per-trial overhead when those ran (all devices)


def runs(root: Path) -> dict[str, dict]:
    """{run name: {"per_gpu", "slots", "runner", "sizes", "folder"}} in the order the runs started."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "trials.parquet").exists()):
        meta = json.loads((folder / "run.json").read_text())
        res = next((s["resources"] for s in reversed(meta.get("sessions", [])) if s.get("resources")), None)
        if res:
            per_gpu = max(1, round(1 / res["gpus"])) if res["gpus"] else 1
            slots, runner = res["concurrency"], res["runner"]
        else:  # one GPU: as many slots as trials on it
            per_gpu = slots = LEGACY.get(folder.name, 1)
            runner = "train"
        sizes = meta["data"]["sizes"]
        out.append((meta.get("started", ""), folder.name,
                    {"per_gpu": per_gpu, "slots": slots, "runner": runner, "folder": folder,
                     "sizes": (sizes["train"], sizes["val"], sizes["test"])}))
    return {name: info for _, name, info in sorted(out, key=lambda x: x[0])}


def finished(folder: Path) -> pd.DataFrame:
    df = pd.read_parquet(folder / "trials.parquet").drop_duplicates("trial_id")
    return df[df.status == "finished"].copy()


def last_epoch_speed(folder: Path, n_train: int) -> dict[str, float]:
    """Training images/s of each trial's last epoch (after cuDNN's autotuning in the first)."""
    e = pd.read_parquet(folder / "epochs.parquet")
    e = e[e.epoch >= 1].sort_values("epoch").drop_duplicates("trial_id", keep="last")
    return dict(zip(e.trial_id, n_train / e.seconds))


def overlapping(df: pd.DataFrame) -> dict[str, int]:
    """For each trial, how many other trials' fits overlapped its own."""
    spans = list(zip(df.trial_id, df.t_fit_start, df.t_fit_end))
    return {t: sum(1 for u, s2, e2 in spans if u != t and s2 < e and s < e2) for t, s, e in spans}


def trial_table(all_runs: dict[str, dict]) -> list[str]:
    lines = ["| run | trial | level/arm | start s | fit start s | end s | Ray start s | build s | prefix s | train s |"
             " eval s | last-epoch img/s | others at once | GPU MiB | planned peak MiB | prefix path |",
             "|" + "---|" * 16]
    for run, info in all_runs.items():
        df = finished(info["folder"])
        if df.empty:
            continue
        t0 = (df.t_trainable_start - df.s_launch_to_trainable).min()
        speed, others = last_epoch_speed(info["folder"], info["sizes"][0]), overlapping(df)
        for r in df.sort_values("t_trainable_start").itertuples():
            ray_start = r.s_launch_to_trainable + r.s_trainable_to_worker + r.s_worker_to_fit
            planned = trial_peak(TrialConfig.from_row(r._asdict())).mib
            lines.append(
                f"| {run} | {r.trial_id} | {r.level}/{r.arm} | {r.t_trainable_start - t0:.1f} | "
                f"{r.t_fit_start - t0:.1f} | {r.t_fit_end - t0:.1f} | {ray_start:.1f} | {r.build_seconds:.1f} | "
                f"{r.prefix_seconds:.1f} | {r.train_seconds:.1f} | {r.val_seconds + r.eval_seconds:.1f} | "
                f"{speed.get(r.trial_id, float('nan')):.0f} | {others[r.trial_id]} | {r.gpu_peak_mib:.0f} | "
                f"{planned:.0f} | {r.prefix_path} |")
    return lines


def time_table(all_runs: dict[str, dict]) -> list[str]:
    out = []
    for run, info in all_runs.items():
        df = finished(info["folder"])
        if df.empty:
            continue
        slots = info["slots"]
        start = (df.t_trainable_start - df.s_launch_to_trainable).min()
        span = float((df.t_fit_end + df.s_fit_to_driver).max() - start)
        w = where_the_time_went(df, span, slots)
        ray = w["parts_s"]["Ray: start of the trial (Tune, Train controller, worker)"]
        out += [f"**{run}** (runner {info['runner']}, {len(df)} finished trials, {slots} slot(s), {span:.1f} s from "
                f"the first start to the last result): Ray's start {ray / w['slot_s']:.0%} of slot time, efficiency "
                f"{w['efficiency']:.0%}", "", "| part | seconds | share of slot time |", "|---|---|---|"]
        for k, v in w["parts_s"].items():
            if v > 0:
                out.append(f"| {k} | {v:.1f} | {v / w['slot_s']:.0%} |")
        out += [f"| idle slots and the driver | {w['other_s']:.1f} | {w['other_s'] / w['slot_s']:.0%} |", ""]
    return out


def memory_table(root: Path, all_runs: dict[str, dict]) -> list[str]:
    lines = ["| run | trials per GPU | processes on the GPU | most one process held MiB | planned per trial MiB "
             "(heaviest: peak x margin + context) | its measured peak MiB | most the GPU held MiB |",
             "|---|---|---|---|---|---|---|"]
    for run, info in all_runs.items():
        samples = root / f"{run}.gpu.csv"
        df = finished(info["folder"])
        if not samples.exists() or df.empty:
            continue
        s = pd.read_csv(samples, dtype=str)
        s["a"], s["b"] = pd.to_numeric(s.a, errors="coerce"), pd.to_numeric(s.b, errors="coerce")  # [N/A]: NaN
        apps = s[s.kind == "app"].dropna().groupby("a").b.max()  # pid -> most MiB
        gpu = s[s.kind == "gpu"].a.max()
        cfgs = [TrialConfig.from_row(r._asdict()) for r in df.itertuples()]
        heavy = max(cfgs, key=lambda c: trial_peak(c).mib)
        lines.append(f"| {run} | {info['per_gpu']} | {len(apps)} | {apps.max():.0f} | "
                     f"{footprint_mib(trial_peak(heavy).mib):.0f} | {df.gpu_peak_mib.max():.0f} | {gpu:.0f} |")
    return lines


def gpu_model(df: pd.DataFrame) -> str:
    names = df.device_name.dropna()
    name = names.iloc[0] if len(names) else ""
    return next((m for m, prefix in S.GPU_NAMES.items() if name.startswith(prefix)), S.DEFAULT_GPU)


def estimate_table(all_runs: dict[str, dict]) -> list[str]:
    lines = ["| run | trial | level/arm | measured s (Tune start to result) | estimate now | estimate then (issue 20: "
             "H100 speeds, 16 s per trial) |", "|---|---|---|---|---|---|"]
    for run, info in all_runs.items():
        df = finished(info["folder"])
        if df.empty:
            continue
        model = gpu_model(df)
        for r in df.itertuples():
            cfg = TrialConfig.from_row(r._asdict())
            now = trial_seconds(cfg, *info["sizes"], Target(gpu=True, gpu_model=model, per_gpu=info["per_gpu"],
                                                            runner=info["runner"]))
            then = ""
            if run in LEGACY:
                old = trial_seconds(cfg, *info["sizes"], Target(gpu=True, gpu_model="H100", per_gpu=info["per_gpu"]))
                then = f"{old + OLD_OVERHEAD_S - S.TRIAL_OVERHEAD_S[('cuda', 'train')]:.1f}"
            lines.append(f"| {run} | {r.trial_id} | {r.level}/{r.arm} | {r.s_trial_wall:.1f} | {now:.1f} ({model}) | "
                         f"{then} |")
    return lines


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/gpu")
    all_runs = runs(root)
    print("\n".join(["### Trials", "", *trial_table(all_runs), "", "### Where the time went", "",
                     *time_table(all_runs), "### GPU memory", "", *memory_table(root, all_runs), "",
                     "### The estimate against the measured trials", "", *estimate_table(all_runs)]))


if __name__ == "__main__":
    main()
