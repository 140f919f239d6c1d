"""``python -m ablations.report results/<run>``: tables from a results folder into REPORT.md.

Works on a partial or still-running run: unfinished and failed trials are listed as such.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .results import RunFolder, RunFolderError, atomic_write_text, now


def finished(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df) or "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == "finished"]


def best_config_ids(df: pd.DataFrame) -> dict[str, str]:
    """Each level's best config: highest mean validation accuracy over its finished seeds (never test)."""
    fin = finished(df)
    if not len(fin) or "val_acc" not in fin:
        return {}
    per_config = fin.drop_duplicates(["config_id", "seed"]).groupby(["level", "config_id"])["val_acc"].mean()
    out = {}
    for level, s in per_config.groupby(level=0):
        out[level] = s.droplevel(0).idxmax()
    return out


def trials_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["level", "axis", "arm", "seed", "trial_id", "status", "val_acc", "test_acc", "macro_f1",
            "trainable_params", "train_seconds", "error"]
    return df[[c for c in cols if c in df]]


def write_report(run_dir: str | Path) -> Path:
    folder = RunFolder(run_dir)
    meta = folder.read_meta()
    df = folder.read_trials()
    lines = [f"# Ablation report: {meta.get('grid')}", "",
             f"Run folder `{folder.path}`, data `{meta.get('data', {}).get('source')}` "
             f"({meta.get('data', {}).get('sizes')}), written {now()}.", ""]
    if not len(df):
        lines.append("No trials recorded yet.")
    else:
        counts = df.drop_duplicates("trial_id")["status"].value_counts().to_dict()
        lines += [f"Trials: {counts}", "", "## Trials", "",
                  trials_table(df).to_markdown(index=False, floatfmt=".4f"), ""]
    path = folder.path / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a results folder written by ablations.run")
    args = p.parse_args(argv)
    try:
        print(write_report(args.run_dir))
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
