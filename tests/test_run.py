"""``python -m ablations.run`` end to end on a real local Ray cluster with real images and weights."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.data import CIFAR10_CLASSES

from .conftest import GRIDS, REPO, run_cli

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tiny_run(ray_cluster, mini_archive, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_cli("--grid", str(GRIDS / "tiny.yaml"), "--data", str(mini_archive), "--results", str(results),
                   "--name", "tiny", "--address", ray_cluster.address)
    return proc, results / "tiny"


def test_tiny_grid_runs_to_completion(tiny_run):
    proc, folder = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2/2 done" in proc.stdout
    assert not (folder / "ledger.jsonl").exists()  # compacted into the tables at the end


def test_progress_status_lines_and_the_estimate_against_the_wall_time(tiny_run):
    proc, folder = tiny_run
    status = [line for line in proc.stdout.splitlines() if line.startswith("[") and " | " in line]
    assert status[0].startswith("[0/2 done, 0 running, 2 pending, 0 failed | ") and "ETA" in status[0]
    assert status[-1].startswith("[2/2 done, 0 running, 0 pending, 0 failed | ") and status[-1].endswith("done]")
    assert any("(dry-run estimate x" in line for line in status)  # calibrated once a trial finished
    assert "epoch 1/2" in proc.stdout  # per-epoch lines without --quiet
    assert "Trial task failed" not in proc.stderr and "Configuration for experiment" not in proc.stdout
    session = json.loads((folder / "run.json").read_text())["sessions"][-1]
    assert session["trials_run"] == 2 and session["estimated_wall_s"] > 0 and session["wall_s"] > 0
    line = next(line for line in proc.stdout.splitlines() if line.startswith("wall time"))
    assert "against the dry run's estimate of" in line and line.endswith("x")


def test_where_the_time_went_adds_up_to_the_slot_time(tiny_run):
    proc, folder = tiny_run
    t = json.loads((folder / "run.json").read_text())["sessions"][-1]["time"]
    df = pd.read_parquet(folder / "trials.parquet").drop_duplicates("trial_id")
    assert t["trials"] == 2 and t["parts_s"]["training"] == pytest.approx(df.train_seconds.sum(), rel=1e-6)
    assert t["parts_s"]["Ray: start of the trial (Tune, Train controller, worker)"] > 0
    assert sum(t["parts_s"].values()) + t["other_s"] == pytest.approx(t["slot_s"], rel=1e-6)
    assert 0 < t["efficiency"] < 1
    report = (folder / "REPORT.md").read_text()
    assert "## Where the time went" in report and f"Efficiency {t['efficiency']:.0%}" in report
    assert (folder / "tables" / "where_the_time_went.csv").exists()


def test_run_json_and_report_carry_no_absolute_paths(tiny_run, mini_archive):
    proc, folder = tiny_run
    meta = json.loads((folder / "run.json").read_text())

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    absolute = [s for s in strings(meta) if s.startswith("/") or str(folder.parent) in s or str(mini_archive) in s]
    assert not absolute, absolute
    assert meta["storage"] == "ray" and meta["argv"][:3] == ["python", "-m", "ablations.run"]
    # the recorded paths resolve from the run folder, the command's too (it was typed with absolute ones)
    assert (folder / meta["data"]["source"]).resolve() == mini_archive.resolve()
    data_arg = meta["argv"][meta["argv"].index("--data") + 1]
    assert (folder / data_arg).resolve() == mini_archive.resolve()
    assert meta["argv"][meta["argv"].index("--results") + 1] == ".."
    report = (folder / "REPORT.md").read_text()
    assert str(folder.parent) not in report and str(REPO) not in report and str(mini_archive.parent) not in report
    assert not re.search(r"`/[^`]*`", report)  # no absolute path in code spans (data source, run folder)
    assert "Grad-CAM skipped" not in report  # the relative data source was found again for the figures


def test_trials_parquet_reads_back(tiny_run):
    _, folder = tiny_run
    df = pd.read_parquet(folder / "trials.parquet")
    assert set(df["level"]) == {"L1", "L3"}
    assert (df["status"] == "finished").all()
    for col in ("trial_id", "axis", "arm", "seed", "backbone", "lr", "train_stages", "resolution", "val_acc",
                "test_acc", "macro_f1", "trainable_params", "train_seconds"):
        assert col in df, col
    for cls in CIFAR10_CLASSES:
        assert df[f"test_acc_{cls}"].between(0, 1).all()
    assert df["val_acc"].between(0, 1).all() and df["test_acc"].between(0, 1).all()
    l1 = df[df.level == "L1"].iloc[0]
    assert l1["backbone"] == "efficientnet_lite0" and l1["train_stages"] == "0"
    assert l1["test_acc"] > 0.2  # pretrained features on 300 training images; chance is 0.1
    assert "test_acc_flip" in df and not np.isnan(l1["test_acc_flip"])
    # the mean of per-class accuracies of a balanced test set is the accuracy
    per_class = np.mean([l1[f"test_acc_{c}"] for c in CIFAR10_CLASSES])
    assert per_class == pytest.approx(l1["test_acc"], abs=1e-9)
    # the config is printed into every row, and the execution keys say how it ran
    assert (df["device"] == "cpu").all()
    # every row names the code that made it (this checkout: its commit, +dirty with uncommitted code) and how its
    # TTA views were combined; run.json names the code of the last command
    from pipeline.provenance import code_version

    assert (df["code_version"] == code_version()).all() and code_version().startswith("git:")
    assert json.loads((folder / "run.json").read_text())["code_version"] == code_version()
    assert (df["tta_combine"] == "logits").all()
    import torch

    assert (df["cpu_capability"] == torch.backends.cpu.get_cpu_capability()).all()  # oneDNN's kernels follow it


def test_epochs_logits_labels_and_report(tiny_run):
    _, folder = tiny_run
    df = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    for _, row in df.iterrows():
        mine = epochs[epochs.trial_id == row.trial_id]
        assert mine["epoch"].tolist() == list(range(1, row.epochs + 1))
        assert mine[["train_loss", "val_loss", "val_acc", "lr", "seconds"]].notna().all().all()
        with np.load(folder / "logits" / f"{row.trial_id}.npz") as z:
            assert z["test/none"].shape == (200, 10) and z["val/none"].shape == (100, 10)
            assert z["test/none"].dtype == np.float16
            with np.load(folder / "labels.npz") as lab:
                acc = (z["test/none"].astype(np.float32).argmax(1) == lab["test"]).mean()
            assert acc == pytest.approx(row.test_acc, abs=1e-9)
        # the final val_acc in the row equals the last epoch's
        assert mine["val_acc"].iloc[-1] == pytest.approx(row.val_acc, abs=1e-6)
    meta = json.loads((folder / "run.json").read_text())
    assert meta["grid"] == "tiny" and meta["finished"]
    assert meta["data"]["sizes"] == {"train": 300, "val": 100, "test": 200}
    assert meta["versions"]["torch"] and meta["versions"]["ray"]
    assert meta["sessions"][-1]["code_version"] == meta["code_version"]
    assert (folder / "REPORT.md").read_text().startswith("# ")
    assert f"code {meta['code_version']} (its last command)" in (folder / "REPORT.md").read_text()
    # --keep-models best (the default): each level's best config keeps its weights (one config per level here)
    assert {p.stem for p in (folder / "models").glob("*.pt")} == set(df.trial_id)


def test_second_run_finds_everything_done(tiny_run, ray_cluster, mini_archive):
    _, folder = tiny_run
    before = (folder / "trials.parquet").read_bytes()
    proc = run_cli("--grid", str(GRIDS / "tiny.yaml"), "--data", str(mini_archive), "--results",
                   str(folder.parent), "--name", "tiny", "--address", ray_cluster.address)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 of 2 trials already finished" in proc.stdout
    after = pd.read_parquet(folder / "trials.parquet")
    assert (after["status"] == "finished").all()
    assert len(after) == len(pd.read_parquet(__import__("io").BytesIO(before)))


def test_extend_adds_another_grids_trials_to_a_run(tiny_run, ray_cluster, mini_archive):
    _, folder = tiny_run
    args = ["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(folder.parent),
            "--name", "tiny", "--address", ray_cluster.address, "--no-report"]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--extend" in refused.stderr
    proc = run_cli(*args, "--extend")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 of 3 trials already finished" in proc.stdout
    df = pd.read_parquet(folder / "trials.parquet")
    assert df.trial_id.nunique() == 3 and (df.status == "finished").all()
    meta = json.loads((folder / "run.json").read_text())
    assert len(meta["trial_ids"]) == 3


def test_the_train_runner_computes_the_same_trials_as_the_actor_runner(tiny_run, ray_cluster, mini_archive, tmp_path):
    """One-worker trials run in their reused Tune actor by default; ``--trial-runner train`` runs each as a Ray
    Train run (a controller and a worker process). Same trials, same numbers; the rows say which ran."""
    proc, folder = tiny_run
    again = run_cli("--grid", str(GRIDS / "tiny.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                    "--name", "tiny", "--address", ray_cluster.address, "--trial-runner", "train", "--no-report",
                    "--log", "none")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(a Ray Train run)" in again.stdout and "(in its Tune actor, reused)" in proc.stdout
    actor = pd.read_parquet(folder / "trials.parquet").drop_duplicates("trial_id").set_index("trial_id")
    train = pd.read_parquet(tmp_path / "tiny" / "trials.parquet").drop_duplicates("trial_id").set_index("trial_id")
    assert len(train) == 2 and set(train.index) <= set(actor.index)  # (other tests may add to tiny_run's folder)
    for col in ("val_acc", "test_acc"):
        assert np.allclose(actor.loc[train.index, col], train[col], atol=1e-6), col
    assert (train.s_trainable_to_worker > 0).all() and (actor.s_trainable_to_worker == 0).all()
