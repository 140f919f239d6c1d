"""Resources on a real Ray cluster: GPU packing and spreading (with a custom resource standing in for GPUs),
and a clear error instead of a silent wait when GPUs are asked for where there are none."""
from __future__ import annotations

import time

import pandas as pd
import pytest

from .conftest import GRIDS, run_cli

pytestmark = pytest.mark.ray


def _overlaps(rows: pd.DataFrame) -> int:
    """The largest number of trials whose training ran at the same time."""
    events = sorted([(t, 1) for t in rows.t_fit_start] + [(t, -1) for t in rows.t_fit_end], key=lambda e: (e[0], e[1]))
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def test_fractional_gpus_pack_trials_and_spread_over_nodes(ray_cluster, mini_archive, tmp_path):
    """Two nodes with one 'accel' each and 0.5 per trial: four trials run at once, two on each node."""
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--seeds", "4", "--data", str(mini_archive),
                   "--results", str(tmp_path), "--name", "pack", "--address", ray_cluster.address,
                   "--gpu-resource", "accel", "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5", "--no-report")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0.5 accel" in proc.stdout and "up to 4 trials at once" in proc.stdout
    df = pd.read_parquet(tmp_path / "pack" / "trials.parquet")
    assert (df.status == "finished").all() and len(df) == 4
    assert df.groupby("node_id").size().tolist() == [2, 2]  # packed two per accelerator, on both nodes
    assert _overlaps(df) >= 3


@pytest.mark.parametrize("flags", [["--gpus-per-trial", "1"], ["--device", "cuda"]])
def test_gpus_asked_for_but_absent_fail_at_once(ray_cluster, mini_archive, tmp_path, flags):
    t0 = time.monotonic()
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, *flags, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "ask for 1 GPU but the Ray cluster has 0" in err[0], proc.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "cnn").exists()  # nothing written


def test_device_cpu_runs_on_a_cluster_with_accelerators(ray_cluster, mini_archive, tmp_path):
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--gpu-resource", "accel", "--device", "cpu", "--no-report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "cnn" / "trials.parquet")
    assert (df.device == "cpu").all() and (df.device_type == "cpu").all()
