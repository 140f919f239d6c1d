"""Reliability on a real local Ray cluster: the driver killed mid-grid and resumed, a worker node lost
mid-trial, a trial that raises, atomic writes, and one test per kind of bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablations.store.results import RunFolder

from .conftest import (
    GRIDS,
    REPO,
    in_cluster,
    kill_mid_grid,
    read_trials,
    run_cli,
    start_cli,
    wait_for,
)

pytestmark = pytest.mark.ray


# ------------------------------------------------------------------ resume after SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, mini_archive, tmp_path_factory):
    results = tmp_path_factory.mktemp("plain")
    proc = run_cli("--grid", str(GRIDS / "resume.yaml"), "--seeds", "3", "--data", str(mini_archive),
                   "--results", str(results), "--address", ray_cluster.address, "--no-report")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return results / "resume"


def test_driver_killed_mid_grid_resumes_without_rerunning_finished_trials(ray_cluster, mini_archive, tmp_path,
                                                                          uninterrupted):
    # two trials at a time, so the third is early in its run when the first has finished
    args = ["--grid", str(GRIDS / "resume.yaml"), "--seeds", "3", "--data", str(mini_archive),
            "--results", str(tmp_path), "--address", ray_cluster.address, "--no-report", "--max-concurrent", "2"]
    folder = tmp_path / "resume"
    before, killed_at = kill_mid_grid(args, folder)
    finished_before = before[before.status == "finished"].set_index("trial_id")
    assert (folder / "run.json").exists()

    again = run_cli(*args)  # the same command continues the run
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert f"{len(finished_before)} of 3 trials already finished" in again.stdout
    after = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert (after.status == "finished").all() and len(after) == 3
    # finished trials were not run again: their rows are the ones written before the kill
    for tid, row in finished_before.iterrows():
        assert after.loc[tid, "t_fit_end"] == row.t_fit_end < killed_at
    # the trial under way continued from its last epoch checkpoint instead of starting over
    resumed = after.drop(index=finished_before.index)
    assert resumed.resumed_from_epoch.max() >= 1
    # and the results equal those of a run without the crash
    plain = pd.read_parquet(uninterrupted / "trials.parquet").set_index("trial_id")
    assert set(plain.index) == set(after.index)
    for tid in plain.index:
        assert after.loc[tid, "val_acc"] == pytest.approx(plain.loc[tid, "val_acc"], abs=1e-9), tid
        assert after.loc[tid, "test_acc"] == pytest.approx(plain.loc[tid, "test_acc"], abs=1e-9), tid
        with np.load(folder / "logits" / f"{tid}.npz") as a, np.load(uninterrupted / "logits" / f"{tid}.npz") as b:
            assert np.allclose(a["test/none"], b["test/none"], atol=1e-2)
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert epochs.groupby("trial_id").epoch.apply(list).map(lambda e: e == [1, 2, 3, 4]).all()


def test_sigterm_stops_the_driver_like_ctrl_c_and_the_same_command_continues(ray_cluster, mini_archive, tmp_path):
    """A polite kill (SIGTERM: `kill PID`, `timeout`, a scheduler) after Ray started: exit 130 with the state
    flushed and the session recorded, not Ray's stack dump and exit 1; the same command then finishes the run."""
    args = ["--grid", str(GRIDS / "resume.yaml"), "--seeds", "8", "--data", str(mini_archive),
            "--results", str(tmp_path), "--address", ray_cluster.address, "--no-report"]
    folder = tmp_path / "resume"
    proc = start_cli(*args)  # 8 trials, at most 4 at once: some are pending when the first has finished
    wait_for(lambda: (df := read_trials(folder)) is not None and bool((df.status == "finished").any()), 400, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "SIGTERM received" not in out and "interrupted" in out
    meta = json.loads((folder / "run.json").read_text())
    assert meta["sessions"][-1]["interrupted"] is True and not (folder / "ledger.jsonl").exists()
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert (pd.read_parquet(folder / "trials.parquet").status == "finished").all()


# ------------------------------------------------------------------ node loss


def test_worker_node_lost_mid_trial_and_the_grid_still_completes(mini_archive, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20,
                                                            "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    try:
        # 8 epochs: seconds between two trials' first epoch and any trial's end, to take the node away in
        proc = start_cli("--grid", str(GRIDS / "resume.yaml"), "--seeds", "3", "--data", str(mini_archive),
                         "--set", "epochs=8", "--results", str(tmp_path), "--address", cluster.address,
                         "--retries", "2", "--no-report")
        folder = tmp_path / "resume"

        def under_way():  # two trials past their first epoch, none finished: at most one of them on the head
            df = read_trials(folder)
            return df is not None and not (df.status == "finished").any() and bool((df.epochs_done >= 1).sum() >= 2)

        wait_for(under_way, 400, proc)
        cluster.remove_node(worker, allow_graceful=False)  # a trial past its first epoch was running there
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        df = pd.read_parquet(folder / "trials.parquet")
        assert (df.status == "finished").all() and len(df) == 3
        head = cluster.head_node.node_id
        resumed = df[df.resumed_from_epoch >= 1]
        assert len(resumed) >= 1, out[-4000:]  # restarted from a checkpoint, not from scratch
        assert (resumed.node_id == head).all()  # on the only node left
        # a trial may finish on the worker in the moment before the node goes; none finished there after it
        assert (df[df.node_id != head].resumed_from_epoch.fillna(0) == 0).all()
    finally:
        cluster.shutdown()


# ------------------------------------------------------------------ storage the trials' nodes do not share


def can_unshare_mounts() -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not can_unshare_mounts(), reason="needs mount namespaces (unshare -m) to give a node a disk of "
                                                     "its own")
def test_a_run_whose_storage_the_trials_node_does_not_share_is_refused(ray_cluster, mini_archive, tmp_path):
    """A node of another machine, made real: a raylet joins the cluster from a mount namespace in which the run's
    results folder is a private tmpfs, and only it offers the resource trials ask for. The default storage
    (<run folder>/ray) is then a different disk there: the preflight's marker, written where a trial runs, is not
    visible to the driver, and the run is refused with one line before anything is written. ``ablations.check``
    writes its storage probe from the same kind of node and fails the same way."""
    results = tmp_path / "results"
    results.mkdir()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {results} && exec {ray_bin} start "
         f"--address={ray_cluster.address} --num-cpus=1 --resources='{{\"elsewhere\": 1}}' --block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def joined():
            out = in_cluster(ray_cluster.address, "print(ray.cluster_resources().get('elsewhere', 0))")
            return out.stdout.strip().endswith("1.0")

        wait_for(joined, 120, node, every=2)
        flags = ["--address", ray_cluster.address, "--gpu-resource", "elsewhere", "--gpus-per-trial", "1",
                 "--cpus-per-trial", "1"]
        proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(results),
                       *flags, timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and "not visible to the driver" in err[0] and "--storage s3://" in err[0], err
        assert not (results / "cnn").exists()  # nothing written
        shared = tmp_path / "shared-storage"  # a path outside the node's private disk: every node sees it
        check = subprocess.run([sys.executable, "-m", "ablations.check", *flags, "--storage", str(results / "x"),
                                "--no-micro-run"], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert check.returncode == 2 and any("not visible to the driver" in ln for ln in check.stderr.splitlines())
        ok = subprocess.run([sys.executable, "-m", "ablations.check", *flags, "--storage", str(shared),
                             "--no-micro-run"], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert any(ln.startswith("ok   storage") for ln in ok.stdout.splitlines()), ok.stdout + ok.stderr
    finally:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()


# ------------------------------------------------------------------ failed trials


def test_a_trial_that_raises_is_recorded_and_the_others_finish(ray_cluster, mini_archive, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    grid = tmp_path / "fail.yaml"
    grid.write_text((GRIDS / "cnn.yaml").read_text() + f"""
axes:
  weights:
    around: L3
    arms:
      broken: {{backbone: resnet18, pretrained: true, weights: {junk}}}
""")
    args = ["--grid", str(grid), "--data", str(mini_archive), "--results", str(tmp_path), "--address",
            ray_cluster.address, "--retries", "1"]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "fail" / "trials.parquet").drop_duplicates("trial_id").set_index("arm")
    assert df.loc["broken", "status"] == "failed"
    assert "ModelError: cannot read weights file" in df.loc["broken", "error"]
    assert "after 2 attempts" in df.loc["broken", "error"]
    assert df.loc["reference", "status"] == "finished"
    # one line for the failure, none of Ray's error boxes or tracebacks (those need --verbose)
    assert proc.stdout.count("FAILED L3/weights=broken") == 1, proc.stdout
    assert "Traceback" not in proc.stderr and "Trial task failed" not in proc.stderr, proc.stderr[-2000:]
    assert "errored after" not in proc.stdout and "Configuration for experiment" not in proc.stdout
    report = (tmp_path / "fail" / "REPORT.md").read_text()
    assert "failed" in report and "cannot read weights file" in report
    # the same command retries the failed trial only
    again = run_cli(*args)
    assert again.returncode == 1 and "1 of 2 trials already finished" in again.stdout


# ------------------------------------------------------------------ atomic writes


def test_a_crash_while_writing_leaves_the_old_file(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.write_trials([{"trial_id": "a", "status": "finished", "val_acc": 0.5}])
    good = (tmp_path / "trials.parquet").read_bytes()

    def crash(self, path, *a, **k):
        Path(path).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        folder.write_trials([{"trial_id": "a", "status": "finished", "val_acc": 0.9}])
    assert (tmp_path / "trials.parquet").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.parquet"]  # no temporary file left


# ------------------------------------------------------------------ bad input


@pytest.fixture()
def existing_run(tmp_path):
    """A results folder of ours holding a finished run of another grid; bad input must leave it untouched."""
    folder = RunFolder(tmp_path / "results" / "old")
    folder.path.mkdir(parents=True)
    folder.write_meta({"grid": "smoke", "trial_ids": ["abc"], "data": {"fingerprint": None, "source": "s"}})
    folder.write_trials([{"trial_id": "abc", "status": "finished", "val_acc": 0.5}])
    snapshot = {p: p.read_bytes() for p in folder.path.iterdir()}
    yield folder
    assert {p: p.read_bytes() for p in folder.path.iterdir()} == snapshot


def _bad(args, message, results: Path, timeout=60):
    """Bad input fails with one line. A hang is the failure under test here, so the CLI gets a generous bound
    (``timeout``: subprocess.TimeoutExpired fails the test)."""
    proc = run_cli(*args, "--results", str(results), timeout=timeout)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], proc.stderr
    return proc


def _image_folder(root: Path, sizes: dict[tuple[str, str], tuple[int, int]]) -> Path:
    from PIL import Image

    for (split, cls), size in sizes.items():
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", size, (i * 50, 10, 10)).save(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "limits", "classes"])
def test_bad_data_fails_at_once(case, existing_run, tmp_path):
    if case == "missing":
        data, message = tmp_path / "nope.tar.gz", "data path not found"
    elif case == "empty":
        data, message = tmp_path / "empty", "no images under train"
        data.mkdir()
    elif case == "corrupt":
        data, message = tmp_path / "corrupt.tar.gz", "not a readable tar archive"
        data.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(3000))
    elif case == "limits":  # (images of mixed sizes are taken; 3 per class cannot give val_size=100)
        data, message = _image_folder(tmp_path / "limits", {("train", "a"): (32, 32), ("train", "b"): (28, 28),
                                                            ("test", "a"): (32, 32), ("test", "b"): (32, 32)}), \
            "the data cannot meet the grid's limits: val_size=100"
    else:
        data, message = _image_folder(tmp_path / "cls", {("train", "a"): (32, 32), ("train", "b"): (32, 32),
                                                         ("test", "a"): (32, 32), ("test", "c"): (32, 32)}), "do not match"
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(data), "--name", "new"], message,
         existing_run.path.parent)
    assert not (existing_run.path.parent / "new").exists()


def test_unreachable_address_fails_at_once(existing_run, mini_archive):
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--name", "new", "--address",
          "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1", existing_run.path.parent)
    assert not (existing_run.path.parent / "new").exists()


def test_a_folder_that_is_not_ours_is_refused(tmp_path, mini_archive):
    foreign = tmp_path / "results" / "photos"
    foreign.mkdir(parents=True)
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--name", "photos"],
         "not an ablations results folder", tmp_path / "results")
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]
    (foreign / "run.json").write_text(json.dumps({"format": "something-else"}))
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--name", "photos"],
         "not an ablations results folder", tmp_path / "results")
    (foreign / "run.json").write_text("{ torn")
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--name", "photos"],
         "unreadable run.json", tmp_path / "results")


def test_another_grid_or_other_data_into_an_existing_run_is_refused(existing_run, mini_archive):
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--name", "old"],
         "holds grid 'smoke', not 'cnn'", existing_run.path.parent)
    _bad(["--grid", "smoke", "--data", str(mini_archive), "--name", "old"],
         "different plan", existing_run.path.parent)
    meta = existing_run.read_meta()
    meta["data"]["fingerprint"] = "another-dataset"
    existing_run.write_meta({k: v for k, v in meta.items() if k != "format"})
    _bad(["--grid", "smoke", "--data", str(mini_archive), "--name", "old"], "was run on other data",
         existing_run.path.parent)
    meta["data"]["fingerprint"] = None
    existing_run.write_meta({k: v for k, v in meta.items() if k != "format"})


def test_resume_of_a_run_that_does_not_exist(tmp_path, mini_archive):
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--resume"], "holds no run to resume",
         tmp_path)


def test_missing_weights_file_is_bad_input(tmp_path, mini_archive):
    _bad(["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--set", "backbone=resnet18",
          "--set", "pretrained=true", "--set", f"weights={tmp_path / 'none.pth'}"], "file not found", tmp_path)
