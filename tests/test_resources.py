"""Resources on a real Ray cluster: GPU packing and spreading (with a custom resource standing in for GPUs),
and a clear error instead of a silent wait when GPUs are asked for where there are none."""
from __future__ import annotations

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


def test_auto_packs_trials_by_the_stated_gpu_memory(ray_cluster, mini_archive, tmp_path):
    """No --gpus-per-trial: auto. With 'accel' standing in for a GPU of 3 GiB (--gpu-memory) and the grid's trial
    (the small CNN at 32 px: 202 MiB measured, 1,276.5 MiB with the margin), two trials share each accel, as
    --gpus-per-trial 0.5 would: four at once, two on each node."""
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--seeds", "4", "--data", str(mini_archive),
                   "--results", str(tmp_path), "--name", "auto", "--address", ray_cluster.address,
                   "--gpu-resource", "accel", "--gpu-memory", "3", "--cpus-per-trial", "0.5", "--no-report")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "0.5 accel" in proc.stdout and "up to 4 trials at once" in proc.stdout, proc.stdout
    assert "--gpus-per-trial auto: 2 trial(s) per accel: memory holds 2" in proc.stdout
    assert "202 MiB peak of small_cnn at 32 px" in proc.stdout
    df = pd.read_parquet(tmp_path / "auto" / "trials.parquet")
    assert (df.status == "finished").all() and len(df) == 4
    assert df.groupby("node_id").size().tolist() == [2, 2]


@pytest.mark.parametrize("flags", [["--gpus-per-trial", "1"], ["--device", "cuda"]])
def test_gpus_asked_for_but_absent_fail_after_the_wait_with_one_line(ray_cluster, mini_archive, tmp_path, flags):
    """On an existing cluster GPU nodes may still join (Ray cannot tell whether it autoscales): trials wait, for
    --wait-for-resources seconds, then the run fails with one line and writes nothing. A hang is the failure
    under test, hence a generous bound (the CLI's timeout: TimeoutExpired fails the test); how long it takes is
    measured by ``python -m ablations.bench --only fail_fast``."""
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--wait-for-resources", "3", *flags, timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "GPU" in err[0], proc.stderr
    assert not (tmp_path / "cnn").exists()  # nothing written


def test_device_cuda_with_a_custom_resource_fails_in_the_preflight(ray_cluster, mini_archive, tmp_path):
    """--gpu-resource accel --device cuda: the preflight runs on a node with an accel, finds no usable CUDA there
    (this machine has no GPU) and says so in one line, before anything is written."""
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--gpu-resource", "accel", "--device", "cuda", timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CUDA is not usable on node"), proc.stderr
    assert "torch " in err[0] and "device cuda" in proc.stdout  # the plan line said which device trials use
    assert not (tmp_path / "cnn").exists()


def test_a_custom_resource_with_device_auto_says_which_device_trials_use(ray_cluster, mini_archive, tmp_path):
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--gpu-resource", "accel", "--no-report")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "device auto: the node's GPU where it has one, else cpu" in proc.stdout
    assert "no CUDA on the node: trials use cpu" in proc.stdout  # the preflight looked
    assert "1 trial per accel: its memory is not known" in proc.stdout  # so auto gives each trial a whole one
    df = pd.read_parquet(tmp_path / "cnn" / "trials.parquet")
    assert (df.device == "auto").all() and (df.device_type == "cpu").all()


def test_device_cpu_runs_on_a_cluster_with_accelerators(ray_cluster, mini_archive, tmp_path):
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--gpu-resource", "accel", "--device", "cpu", "--no-report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "cnn" / "trials.parquet")
    assert (df.device == "cpu").all() and (df.device_type == "cpu").all()
