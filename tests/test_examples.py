"""The committed worked examples (``examples/``) as a clone has them: tables and reports, no logits or weights.

A user's default run writes into ``results/`` (git-ignored), never into a committed example, and the reporter
works on an example as it is on a clone."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from .conftest import GRIDS, REPO, SUBSET


def _digest(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_committed_examples_hold_no_logits_or_weights():
    examples = sorted(p.parent for p in (REPO / "examples").glob("*/run.json"))
    assert {p.name for p in examples} >= {"smoke", "cpu"}
    for ex in examples:
        assert (ex / "trials.parquet").exists() and (ex / "REPORT.md").exists(), ex
        assert not (ex / "logits").exists() and not (ex / "models").exists(), ex


@pytest.mark.ray
def test_a_default_run_beside_a_committed_example_neither_refuses_nor_touches_it(tmp_path):
    """As on a fresh clone: the committed example of a grid (its parquet, no logits) lies in examples/<grid>; the
    same grid run with the default --results writes results/<grid> and leaves the example byte for byte."""
    shutil.copytree(REPO / "examples" / "smoke", tmp_path / "examples" / "smoke")
    shutil.copy(GRIDS / "tiny.yaml", tmp_path / "smoke.yaml")  # a grid file named like the example
    before = _digest(tmp_path / "examples")
    out = subprocess.run([sys.executable, "-m", "ablations.run", "--grid", "smoke.yaml", "--data", str(SUBSET),
                          "--levels", "L1", "--set", "train_per_class=10", "--set", "test_per_class=10",
                          "--log", "none", "--no-report", "--num-cpus", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "results" / "smoke"
    trials = pd.read_parquet(run / "trials.parquet")
    assert (trials.status == "finished").all() and len(trials) == 1
    assert json.loads((run / "run.json").read_text())["grid"] == "smoke"
    assert _digest(tmp_path / "examples") == before


def test_the_report_works_on_a_committed_example_without_its_logits(tmp_path):
    run = tmp_path / "cpu"
    shutil.copytree(REPO / "examples" / "cpu", run)
    out = subprocess.run([sys.executable, "-m", "ablations.report", str(run), "--no-figures", "--n-boot", "100"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    committed = (REPO / "examples" / "cpu" / "REPORT.md").read_text()
    text = (run / "REPORT.md").read_text()
    assert "## Claims" in text and "## Level comparison" in text
    # the sections that need the stored logits say so, the numbers from trials.parquet stay
    assert "untested (no stored test logits)" in text
    assert "no stored logits" in text
    # finetune_beats_frozen's per-seed difference comes from trials.parquet: the same as in the committed report,
    # which was written with the logits present
    assert _claim_difference(text, "finetune_beats_frozen") == _claim_difference(committed, "finetune_beats_frozen")


def _claim_difference(report: str, claim: str) -> str:
    row = next(line for line in report.splitlines() if line.startswith(f"| {claim} "))
    difference = row.split("|")[2].strip()
    assert re.fullmatch(r"[+-]\d+\.\d ± \d+\.\d \(n=3\)", difference), row
    return difference
