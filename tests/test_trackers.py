"""``--log tensorboard,mlflow,wandb`` on a real local Ray cluster, each tracker read back from its own files: an
MLflow file store, TensorBoard event files, a W&B offline run. One cheap trial (tests/grids/cnn.yaml), run with
--quiet, which must print status lines and no epoch lines."""
from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest

from .conftest import GRIDS, run_cli

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def logged_run(ray_cluster, mini_archive, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(results),
                   "--name", "logged", "--address", ray_cluster.address, "--log", "tensorboard,mlflow,wandb",
                   "--quiet", "--keep-models", "none",
                   env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": "",
                        "WANDB_PROJECT": "ablations-test"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = results / "logged"
    row = pd.read_parquet(folder / "trials.parquet").iloc[0]
    return proc, folder, row


def test_quiet_prints_status_lines_and_no_epochs(logged_run):
    proc, _, row = logged_run
    out = proc.stdout
    assert "epoch 1/1" not in out and "finished L3" not in out
    assert "[1/1 done, 0 running, 0 pending, 0 failed |" in out
    assert "wall time" in out and "against the dry run's estimate" in out


def test_mlflow_file_store_holds_config_epochs_final_metrics_and_report(logged_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked
    _, folder, row = logged_run
    store = folder / "logs" / "mlruns"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("logged")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {row.trial_id, "report"}
    trial = runs[row.trial_id]
    assert trial.info.status == "FINISHED"
    assert trial.data.params["trial/config/backbone"] == "small_cnn"
    assert trial.data.params["trial/label"].startswith("L3/reference=reference seed 0")
    history = client.get_metric_history(trial.info.run_id, "val_acc")
    assert [m.step for m in history][:1] == [1] and history[0].value == pytest.approx(row.val_acc, abs=1e-6)
    assert trial.data.metrics["final/test_acc"] == pytest.approx(row.test_acc, abs=1e-9)
    assert trial.data.metrics["final/macro_f1"] == pytest.approx(row.macro_f1, abs=1e-9)
    artifacts = {a.path for a in client.list_artifacts(runs["report"].info.run_id)}
    assert {"REPORT.md", "tables", "figures"} <= artifacts
    tables = {Path(a.path).name for a in client.list_artifacts(runs["report"].info.run_id, "tables")}
    assert any(t.endswith(".csv") for t in tables) and any(t.endswith(".tex") for t in tables)


def tfrecords(path: Path) -> list[bytes]:
    """The records of a TensorBoard event file (TFRecord: length, its CRC, data, its CRC)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboardX.proto import event_pb2

    found: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for rec in tfrecords(f):
            ev = event_pb2.Event()
            ev.ParseFromString(rec)
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    found.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return found


def test_tensorboard_event_files_hold_epochs_and_final_metrics(logged_run):
    _, folder, row = logged_run
    trial_dir = folder / "logs" / "tensorboard" / row.trial_id
    s = scalars(trial_dir)
    assert s["ray/tune/val_acc"][0] == (1, pytest.approx(row.val_acc, abs=1e-6))
    assert s["ray/tune/final/test_acc"][-1][1] == pytest.approx(row.test_acc, abs=1e-6)
    assert "ray/tune/final/macro_f1" in s
    report_tags = set()
    from tensorboardX.proto import event_pb2

    for f in (folder / "logs" / "tensorboard" / "report").glob("events.out.tfevents.*"):
        for rec in tfrecords(f):
            ev = event_pb2.Event()
            ev.ParseFromString(rec)
            report_tags |= {v.tag for v in ev.summary.value}
    assert any(t.startswith("REPORT.md") for t in report_tags)
    assert any(t.startswith("figures/") for t in report_tags)


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (``run-<id>.wandb``: a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind in (2, 3):
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
            buf = b""
    records = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        records.append(r)
    return records


def test_wandb_offline_run_holds_config_epochs_final_metrics_and_report(logged_run):
    import json

    _, folder, row = logged_run
    runs = {}
    for f in (folder / "logs" / "wandb").glob("offline-run-*/run-*.wandb"):
        recs = wandb_records(f)
        run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
        runs[run.display_name] = (run, recs)
    assert set(runs) == {row.trial_id, "report"}
    run, recs = runs[row.trial_id]
    assert run.run_group == "logged" and run.project == "ablations-test"
    config = {c.key: json.loads(c.value_json) for c in run.config.update}
    assert config["trial"]["config"]["backbone"] == "small_cnn"
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    assert any(h.get("val_acc") == pytest.approx(row.val_acc, abs=1e-6) and h.get("epoch") == 1 for h in history)
    assert any(h.get("final/test_acc") == pytest.approx(row.test_acc, abs=1e-9) for h in history)
    _, report = runs["report"]
    artifact = next(r.artifact for r in report if r.WhichOneof("record_type") == "artifact")
    paths = {m.path for m in artifact.manifest.contents}
    assert "REPORT.md" in paths and any(p.startswith("tables/") for p in paths)
    assert any(p.startswith("figures/") for p in paths)


def test_unknown_tracker_is_bad_input(tmp_path):
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--log", "tensorboard,comet", "--dry-run", "--results",
                   str(tmp_path), timeout=60)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "unknown tracker(s) comet" in err[0], proc.stderr
