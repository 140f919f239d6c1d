"""``python -m ablations.run`` end to end on a real local Ray cluster with real images and weights."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.data import CIFAR10_CLASSES

from .conftest import GRIDS, run_cli

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
    assert (folder / "REPORT.md").read_text().startswith("# ")
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
