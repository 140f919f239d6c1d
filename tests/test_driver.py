"""The driver's own parts without Ray: the ledger (incremental, atomic, idempotent), the collector, the
progress printer and its ETA, and portable paths. Real files in a real results folder; synthetic trial
results shaped as the workers write them (``ablations.driver.measure.synthetic_checkpoint``)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import CIFAR10_CLASSES

from ablations.driver.measure import SCALE_GRID, synthetic_checkpoint
from ablations.plan import grids
from ablations.session.events import Session, epoch_row
from ablations.session.progress import (
    Eta,
    Progress,
    duration,
    estimate_comparison,
    labels,
)
from ablations.store import portable
from ablations.store.collector import Collector
from ablations.store.ledger import Ledger
from ablations.store.results import LEDGER, RunFolder

EPOCHS = SCALE_GRID["base"]["epochs"]


def make_session(tmp_path: Path, n_trials: int, out=None, keep_models: str = "best"):
    plan = grids.expand("scale", SCALE_GRID, seeds=n_trials)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    ledger = Ledger(folder, plan)
    ledger.open()
    progress = Progress(labels(plan), ledger.counts, Eta({t: 10.0 for t in ledger.trials}, 2), out=out or io.StringIO())
    return Session(ledger, Collector(folder, keep_models), progress), folder


def epoch_result(e: int) -> dict:
    return {"kind": "epoch", "trial_id": "tune-id", "epoch": e, "train_loss": 1.0 / e, "train_acc": 0.1 * e,
            "val_loss": 1.1 / e, "val_acc": 0.05 * e, "lr": 1e-3, "seconds": 2.0, "training_iteration": e,
            "time_this_iter_s": 2.0, "timestamp": 1, "done": False, "hostname": "h", "checkpoint_path": "/x"}


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    return synthetic_checkpoint(tmp_path / "ckpt", CIFAR10_CLASSES, 20, 30)


def test_events_append_to_the_ledger_and_never_rewrite_the_tables(tmp_path, checkpoint):
    session, folder = make_session(tmp_path, 5)
    tables = {name: (folder.path / f"{name}.parquet").stat().st_mtime_ns for name in ("trials",)}
    tids = list(session.ledger.trials)
    for tid in tids[:3]:
        session.started(tid)
        for e in range(1, EPOCHS + 1):
            session.epoch(tid, epoch_result(e))
        session.finished(tid, checkpoint)
    session.started(tids[3])
    session.epoch(tids[3], epoch_result(1))
    # one line per event, and trials.parquet untouched since the session opened
    lines = (folder.path / LEDGER).read_text().splitlines()
    assert len(lines) == 3 * (EPOCHS + 2) + 2
    assert (folder.path / "trials.parquet").stat().st_mtime_ns == tables["trials"]
    assert not (folder.path / "epochs.parquet").exists()
    # a reader (the reporter, a resumed run) sees every event
    live = folder.read_trials().set_index("trial_id")
    assert list(live.loc[tids[:3], "status"]) == ["finished"] * 3
    assert live.loc[tids[3], "status"] == "running" and live.loc[tids[3], "epochs_done"] == 1
    assert live.loc[tids[4], "status"] == "pending"
    assert live.loc[tids[0], "val_acc"] == pytest.approx(0.41) and live.loc[tids[0], "s_trial_wall"] >= 0
    epochs = folder.read_epochs()
    assert len(epochs) == 3 * EPOCHS + 1
    # the finished trial's epochs are its final history, not the live rows
    first = epochs[epochs.trial_id == tids[0]].sort_values("epoch")
    assert first.val_acc.tolist() == pytest.approx([0.04 * e for e in range(1, 11)])
    # the collector copied logits and weights
    for tid in tids[:3]:
        assert folder.logits_path(tid).exists() and folder.model_path(tid).exists()
        with np.load(folder.logits_path(tid)) as z, np.load(checkpoint / "logits.npz") as ref:
            assert np.array_equal(z["test/none"], ref["test/none"])


def test_compaction_writes_the_tables_and_empties_the_ledger(tmp_path, checkpoint):
    session, folder = make_session(tmp_path, 3)
    tids = list(session.ledger.trials)
    session.started(tids[0])
    for e in range(1, EPOCHS + 1):
        session.epoch(tids[0], epoch_result(e))
    session.finished(tids[0], checkpoint)
    session.started(tids[1])
    session.failed(tids[1], "RuntimeError: boom")
    live_trials, live_epochs = folder.read_trials(), folder.read_epochs()
    session.ledger.close()
    assert not (folder.path / LEDGER).exists()
    compact = pd.read_parquet(folder.path / "trials.parquet")
    assert compact.set_index("trial_id").status.to_dict() == {tids[0]: "finished", tids[1]: "failed",
                                                               tids[2]: "pending"}
    assert compact.set_index("trial_id").loc[tids[1], "error"] == "RuntimeError: boom (after 1 attempt)"
    pd.testing.assert_frame_equal(compact[live_trials.columns], live_trials, check_dtype=False)
    assert len(pd.read_parquet(folder.path / "epochs.parquet")) == len(live_epochs) == EPOCHS


def test_a_torn_last_line_is_skipped_and_folding_again_changes_nothing(tmp_path, checkpoint):
    session, folder = make_session(tmp_path, 2)
    tid = next(iter(session.ledger.trials))
    session.started(tid)
    session.epoch(tid, epoch_result(1))
    session.finished(tid, checkpoint)
    before = folder.read_trials()
    # a crash mid-write leaves half a line
    with open(folder.path / LEDGER, "a") as f:
        f.write('{"trial_id": "' + tid + '", "set": {"status": "fai')
    pd.testing.assert_frame_equal(folder.read_trials(), before)
    # a crash between writing the tables and removing the ledger: its events are folded in again, to the same rows
    events = (folder.path / LEDGER).read_text()
    session.ledger.close()
    (folder.path / LEDGER).write_text(events)
    again = folder.read_trials()
    pd.testing.assert_frame_equal(again[before.columns], before, check_dtype=False)
    assert len(folder.read_epochs()) == EPOCHS


def test_a_resumed_ledger_keeps_finished_trials_and_reruns_the_rest(tmp_path, checkpoint):
    session, folder = make_session(tmp_path, 3)
    a, b, c = session.ledger.trials
    session.started(a)
    session.finished(a, checkpoint)
    session.started(b)
    session.epoch(b, epoch_result(1))
    session.ledger._out.close()  # the driver is killed: no compaction
    plan = grids.expand("scale", SCALE_GRID, seeds=3)
    resumed = Ledger(folder, plan)
    assert resumed.pending() == [b, c] and resumed.counts["finished"] == 1
    assert resumed.records[a].metrics["val_acc"] == pytest.approx(0.41)
    resumed.open()
    df = pd.read_parquet(folder.path / "trials.parquet").set_index("trial_id")
    assert df.status.to_dict() == {a: "finished", b: "pending", c: "pending"}
    assert not (folder.path / LEDGER).exists()


def test_epoch_row_keeps_the_epochs_numbers_only():
    assert epoch_row(epoch_result(3)) == {"epoch": 3, "train_loss": 1 / 3, "train_acc": pytest.approx(0.3),
                                          "val_loss": 1.1 / 3, "val_acc": pytest.approx(0.15), "lr": 1e-3,
                                          "seconds": 2.0}


# ------------------------------------------------------------------ progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_eta_starts_from_the_estimate_and_calibrates_on_finished_trials():
    eta = Eta({"a": 100.0, "b": 100.0, "c": 100.0, "d": 100.0}, concurrency=2)
    assert eta.remaining(0.0) == pytest.approx(200.0)  # 400 trial-seconds over 2 at a time
    eta.started("a", 0.0)
    eta.started("b", 0.0)
    assert eta.remaining(50.0) == pytest.approx((200 + 50 + 50) / 2)
    eta.ended("a", 150.0)  # took 1.5x its estimate
    assert eta.factor == pytest.approx(1.5) and "x1.50, from 1 trial" in eta.describe()
    # b has run 150 of its calibrated 150 s; c and d are pending at 150 s each
    assert eta.remaining(150.0) == pytest.approx((0 + 300) / 2)
    eta.ended("b", None)  # failed: no measurement
    assert eta.calibrated_on == 1


def test_status_lines_count_and_quiet_prints_only_status_and_errors(tmp_path, checkpoint):
    clock = Clock()
    out = io.StringIO()
    plan = grids.expand("scale", SCALE_GRID, seeds=3)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    ledger = Ledger(folder, plan)
    ledger.open()
    progress = Progress(labels(plan), ledger.counts, Eta({t: 60.0 for t in ledger.trials}, 1), quiet=True, out=out,
                        clock=clock, every_s=30)
    session = Session(ledger, Collector(folder, "none"), progress)
    a, b, c = ledger.trials
    session.started(a)
    clock.t += 10
    session.epoch(a, epoch_result(1))  # first status line: none printed before
    clock.t += 10
    session.epoch(a, epoch_result(2))  # within 30 s of the last: quiet
    session.launched[a] = time.time() - 120  # it took 120 s (driver clock): twice its estimate
    session.finished(a, checkpoint)
    clock.t += 40
    session.started(b)
    session.failed(b, "ValueError: bad")
    lines = out.getvalue().splitlines()
    assert not any("epoch" in line or line.startswith("finished") for line in lines)
    assert lines[0] == "[0/3 done, 1 running, 2 pending, 0 failed | 10s elapsed, ETA 2m50s (dry-run estimate)]"  # a: 50 s left, b and c: 60 each
    assert lines[-2] == f"FAILED {progress.labels[b]}: ValueError: bad (after 1 attempt)"
    # c pending: 60 s estimated, calibrated x2 on a
    assert lines[-1] == "[1/3 done, 0 running, 1 pending, 1 failed | 1m00s elapsed, ETA 2m00s (dry-run estimate x2.00, " \
                        "from 1 trial)]"
    assert len(lines) == 3


def test_labels_are_indexed_once_per_trial():
    plan = grids.expand("scale", SCALE_GRID, seeds=4)
    found = labels(plan)
    assert set(found) == set(plan.trials()) and all(f"[{t}]" in lab for t, lab in found.items())


def test_duration_and_the_closing_comparison():
    assert [duration(s) for s in (7, 370, 7500)] == ["7s", "6m10s", "2h05m"]
    assert estimate_comparison(150, 100, 3) == ("wall time 2m30s against the dry run's estimate of 1m40s for these "
                                                "3 trials: 1.50x")


# ------------------------------------------------------------------ portable paths


def test_portable_paths_are_relative_and_resolve_back(tmp_path):
    run_dir = tmp_path / "results" / "cpu"
    run_dir.mkdir(parents=True)
    data = tmp_path / "shared" / "cifar.tar.gz"
    assert portable.relative_to(str(data), run_dir) == "../../shared/cifar.tar.gz"
    assert portable.resolve("../../shared/cifar.tar.gz", run_dir) == str(data)
    assert portable.resolve(str(data), run_dir) == str(data)  # folders of older versions recorded absolute paths
    for kept in ("s3://bucket/x", "torchvision"):
        assert portable.relative_to(kept, run_dir) == kept == portable.resolve(kept, run_dir)
    cmd = portable.command(["--data", str(data), "--set", f"weights={tmp_path / 'w.pth'}", "--grid", "cpu",
                            "--results", "results"], run_dir)
    assert cmd == ["python", "-m", "ablations.run", "--data", "../../shared/cifar.tar.gz", "--set",
                   "weights=../../w.pth", "--grid", "cpu", "--results", "results"]  # relative ones as typed
    assert json.dumps(cmd).count(str(tmp_path)) == 0


def test_the_committed_example_runs_carry_no_absolute_paths():
    from .conftest import REPO

    runs = [p.parent for p in sorted((REPO / "examples").glob("**/run.json"))]
    assert runs
    for run in runs:
        meta = json.loads((run / "run.json").read_text())
        recorded = [meta["storage"], meta["data"]["source"], *meta["argv"]]
        assert not [s for s in recorded if s.startswith("/")], (run.name, recorded)
        assert meta["argv"][:3] == ["python", "-m", "ablations.run"]
        header = (run / "REPORT.md").read_text().split("## ", 1)[0]
        assert "`/" not in header, (run.name, header)


def test_waiting_for_another_trials_prefix_is_not_counted_as_work():
    from ablations.report.timing import USEFUL, where_the_time_went

    rows = pd.DataFrame([
        {"trial_id": "a", "status": "finished", "prefix_seconds": 100.0, "prefix_wait_seconds": 0.0,
         "train_seconds": 50.0, "val_seconds": 10.0, "eval_seconds": 5.0},
        {"trial_id": "b", "status": "finished", "prefix_seconds": 90.0, "prefix_wait_seconds": 90.0,
         "train_seconds": 50.0, "val_seconds": 10.0, "eval_seconds": 5.0},
        {"trial_id": "c", "status": "failed", "prefix_seconds": 500.0, "train_seconds": 500.0},
    ])
    t = where_the_time_went(rows, wall_s=200.0, slots=2)
    parts = t["parts_s"]
    assert parts["prefix computation (cache misses)"] == 100.0
    assert parts["waiting for another trial's prefix computation"] == 90.0
    assert sum(parts[k] for k in USEFUL) == 100.0 + 100.0 + 30.0
    assert t["efficiency"] == pytest.approx(230.0 / 400.0)
    assert sum(parts.values()) + t["other_s"] == pytest.approx(400.0)
