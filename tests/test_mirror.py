"""``python -m ablations.mirror``: a run folder mirrored to S3 (a moto server) brought down to another folder, as
from a laptop after ``ray down``."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from ablations.store.mirror import Mirror

from .conftest import BUCKET, REPO


def test_a_mirrored_run_folder_comes_down_whole_and_a_missing_one_is_one_line(s3, tmp_path):
    folder = tmp_path / "head" / "full"
    (folder / "tables").mkdir(parents=True)
    (folder / "run.json").write_text('{"name": "full"}')
    pd.DataFrame({"trial_id": ["a", "b"], "val_acc": [0.5, 0.75]}).to_parquet(folder / "trials.parquet")
    (folder / "tables" / "summary.csv").write_text("trial_id,val_acc\na,0.5\nb,0.75\n")
    (folder / "ray").mkdir()
    (folder / "ray" / "checkpoint.pt").write_bytes(b"not mirrored")
    env = {**os.environ, **s3}
    os.environ.update(s3)
    try:
        assert Mirror(folder, f"s3://{BUCKET}/mirror-cli/full").push() == 3
    finally:
        for k in s3:
            os.environ.pop(k, None)
    dest = tmp_path / "laptop" / "full"
    out = subprocess.run([sys.executable, "-m", "ablations.mirror", f"s3://{BUCKET}/mirror-cli/full", str(dest)],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"3 files from s3://{BUCKET}/mirror-cli/full in {dest}"
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["run.json", "tables/summary.csv", "trials.parquet"]
    for rel in got:
        assert (dest / rel).read_bytes() == (folder / rel).read_bytes()
    assert pd.read_parquet(dest / "trials.parquet").val_acc.tolist() == [0.5, 0.75]

    missing = subprocess.run([sys.executable, "-m", "ablations.mirror", f"s3://{BUCKET}/mirror-cli/none",
                              str(tmp_path / "x")], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: s3://{BUCKET}/mirror-cli/none: no run folder at s3://{BUCKET}/mirror-cli/none (no run.json there)"]
    assert not (tmp_path / "x").exists()
