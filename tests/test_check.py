"""``python -m ablations.check``: one line per check, and for each failure a one-line ``error:`` and exit 2."""
from __future__ import annotations

import glob
import subprocess
import sys
import time

import pytest

from .conftest import REPO


def check(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablations.check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_device_cuda_on_a_machine_without_cuda_fails_within_seconds():
    t0 = time.monotonic()
    proc = check("--device", "cuda")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: torch: --device cuda but CUDA is not usable"), proc.stderr
    assert "CUDA build" in err[0]  # names torch's build so the user can compare it with the driver
    assert time.monotonic() - t0 < 60  # a hang is the failure under test; generous bound


@pytest.mark.ray
def test_every_check_passes_on_a_working_setup(mini_archive, tmp_path):
    proc = check("--storage", str(tmp_path / "storage"), "--data", str(mini_archive), "--num-cpus", "2",
                 "--backbones", "efficientnet_lite0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line[:4] in ("ok  ", "--  ", "FAIL")}
    assert set(lines) >= {"torch", "ray", "gpus", "storage", "data", "weights", "micro"}
    assert lines["storage"].startswith("ok") and "storage written on " in lines["storage"] and "read back here" in lines["storage"]
    assert lines["weights"].startswith("ok") and "efficientnet_lite0" in lines["weights"]
    assert "train images/s" in lines["micro"] and "on cpu" in lines["micro"]
    assert not [p for p in (tmp_path / "storage").rglob("*") if p.is_file()]  # the probe file was deleted


@pytest.mark.ray
def test_a_storage_that_cannot_be_written_is_one_failure(mini_archive, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    proc = check("--storage", str(blocker / "sub"), "--data", str(mini_archive), "--num-cpus", "2",
                 "--no-micro-run", "--backbones", "efficientnet_lite0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: storage: "), proc.stderr


@pytest.mark.ray
@pytest.mark.skipif(bool(glob.glob("/dev/nvidia[0-9]*")), reason="this machine has a GPU its processes can see")
def test_a_node_that_offers_a_gpu_its_processes_cannot_see_is_one_failure(mini_archive):
    """A Ray node that declares a GPU (as cluster.yaml's node types do) whose processes see no NVIDIA device (a
    container started without --gpus all): a Ray GPU with nothing behind it, not a faked CUDA device."""
    proc = check("--num-gpus", "1", "--num-cpus", "2", "--data", str(mini_archive), "--no-micro-run",
                 "--backbones", "efficientnet_lite0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: gpus: Ray gave a task GPU 0 on node "), proc.stderr
    assert "no GPU is visible to it" in err[0] and "--gpus all" in err[0]
