"""What `--until-decided` would add to a finished fixed run: the plan of its first round, decided on the run's
validation numbers (never test), for the default mixture (cap 10) and the repeated t-test (cap 6). A round's
hours are the run's own measured trial times (one more seed of a config costs what its first seed took, plus its
``init_from`` parent's), one trial at a time. Works on a copy of the folder (it needs the run's logits and
labels.npz, which stay on the machine that ran it); changes nothing.

    python scripts/round1_preview.py examples/cpu
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.session import rounds as A
from ablations.plan.compared import comparisons_from_plan
from ablations.store.ledger import Ledger
from ablations.report.adaptive import run_plan
from ablations.report.rundata import RunData
from ablations.store.results import RunFolder
from pipeline.ids import trial_id


def preview(src: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ray", "models", "logs"))
        folder = RunFolder(dst)
        plan = run_plan(RunData(dst))
        labels = np.load(dst / "labels.npz", allow_pickle=True)
        classes = [str(c) for c in labels["classes"]]
        recall = A.recall_from_logits(lambda t: folder.read_logits(t) if folder.logits_path(t).exists() else None,
                                      labels["val"], len(classes))
        rows = pd.read_parquet(dst / "trials.parquet")
        measured = dict(zip(rows.trial_id, rows.trial_seconds))
        hours = lambda p: A.config_hours(p, lambda cfg: measured.get(trial_id(cfg), 0.0), 1 / 3600)  # noqa: E731
        for settings in (A.Settings(), A.Settings(max_seeds=6, test="repeated-t", first_look=3)):
            ledger = Ledger(folder, plan)
            ledger.open()
            rounds = A.Rounds(ledger, settings, A.planned_seeds(plan), comparisons_from_plan(plan),
                              class_recall=recall, classes=classes, cost_hours=hours)
            rp = rounds.next()
            print(f"{settings.test}, cap {settings.max_seeds}: {rp.line()}")
            print(f"  decided on validation: {', '.join(rp.decided) or 'none'}")
            print(f"  open: {', '.join([*rp.open, *rp.at_cap]) or 'none'}")
            print(f"  configs given another seed: {len(rp.add_seeds)}")
            ledger.close()


if __name__ == "__main__":
    preview(Path(sys.argv[1]))
