"""The frozen-prefix cache: a trial on cached prefix outputs computes what the same trial on raw images computes;
entries are shared between processes and computed once under a lock, evicted least recently used first,
recomputed when damaged; a trial whose prefix outputs exceed the budget, or that mixes images, runs plain and its
row says why."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import TrialConfig
from pipeline.device import Precision
from pipeline.models import build_model
from pipeline.prefix_cache import PrefixCache
from pipeline.sources import Inputs, load_data, plan_prefix
from pipeline.train import fit


@pytest.fixture(scope="module")
def data(small_splits) -> dict:
    """200 training images (20 per class, with their dataset positions), 100 validation, 100 test: real CIFAR-10."""
    s = small_splits
    keep = np.concatenate([np.flatnonzero(s.train_y == c)[:20] for c in range(10)])
    return {"train_x": s.train_x[keep], "train_y": s.train_y[keep], "train_idx": s.train_idx[keep],
            "val_x": s.val_x[:100], "val_y": s.val_y[:100], "test_x": s.test_x[:100], "test_y": s.test_y[:100]}


def lite(**kw) -> TrialConfig:
    base = dict(backbone="efficientnet_lite0", resolution=32, epochs=2, batch_size=50, eval_batch_size=64, lr=1e-3,
                optimizer="adamw", device="cpu", threads=2)
    return TrialConfig(**{**base, **kw})


# ------------------------------------------------------------------ the same computation


CASES = {
    "top stage, basic augmentation, flip TTA": dict(train_stages="1", augment="basic", tta="flip"),
    "head only, strong augmentation": dict(train_stages="0", augment="strong", head="fusion", dropout=0.3),
    "two-phase: head, then two stages": dict(train_stages="2", freeze_epochs=1, augment="basic"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cached_trial_is_the_plain_trial(case, data, tmp_path):
    """fp32 storage, same evaluation batches: logits within 1e-3 and the same validation accuracy each epoch."""
    cfg = lite(**CASES[case])
    cached = fit(cfg, data, prefix_cache=PrefixCache(tmp_path, dtype="float32"))
    plain = fit(cfg.replace(feature_cache=False), data)
    assert cached.metrics["prefix_path"] == "cached" and cached.metrics["feature_cache_state"] == "miss"
    assert plain.metrics["prefix_path"] == "plain" and plain.metrics["feature_cache_state"] == "off"
    for split, by_view in plain.logits.items():
        for view, logits in by_view.items():
            diff = np.abs(cached.logits[split][view].astype(np.float32) - logits.astype(np.float32)).max()
            assert diff <= 1e-3, (split, view, diff)
    assert [h["val_acc"] for h in cached.history] == [h["val_acc"] for h in plain.history]
    assert [h["train_loss"] for h in cached.history] == pytest.approx([h["train_loss"] for h in plain.history],
                                                                      abs=1e-4)
    assert cached.metrics["val_acc"] == plain.metrics["val_acc"]


def test_a_trial_resumed_after_an_epoch_ends_as_the_uninterrupted_one(data, tmp_path):
    """The checkpoint (TrainState) holds what the next epoch needs; the views are keyed by epoch, so the resumed
    trial reads the same ones."""
    cfg = lite(train_stages="1", augment="strong")
    first = tmp_path / "epoch1.pt"

    def save_first(row, make_checkpoint):  # as the Ray trainable does: written at once
        if row["epoch"] == 1:
            torch.save(make_checkpoint(), first)

    whole = fit(cfg, data, prefix_cache=PrefixCache(tmp_path), on_epoch=save_first)
    resumed = fit(cfg, data, prefix_cache=PrefixCache(tmp_path), resume=torch.load(first, weights_only=False))
    assert resumed.metrics["resumed_from_epoch"] == 1 and len(resumed.history) == 2
    assert np.array_equal(resumed.logits["test"]["none"], whole.logits["test"]["none"])
    assert resumed.history[1]["train_loss"] == whole.history[1]["train_loss"]


def test_trials_that_differ_in_lr_share_the_prefix_and_the_store_is_float16(data, tmp_path):
    first = fit(lite(train_stages="1", augment="basic", epochs=1), data, prefix_cache=PrefixCache(tmp_path))
    second = fit(lite(train_stages="1", augment="basic", epochs=1, lr=3e-3, head="se"), data,
                 prefix_cache=PrefixCache(tmp_path))
    other_seed = fit(lite(train_stages="1", augment="basic", epochs=1, seed=1), data,
                     prefix_cache=PrefixCache(tmp_path))
    assert first.metrics["feature_cache_state"] == "miss" and first.metrics["prefix_computed"] == 3
    assert second.metrics["feature_cache_state"] == "hit" and second.metrics["prefix_hits"] == 3
    # another seed sees another training view, and the same validation and test images
    assert other_seed.metrics["prefix_computed"] == 1 and other_seed.metrics["prefix_hits"] == 2
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json") if "." not in p.stem]
    assert len(records) == 4 and {r["dtype"] for r in records} == {"<f2"}
    assert {tuple(r["shape"][1:]) for r in records} == {(112, 2, 2)}  # Lite0's stage-3 output at 32 px
    plain = fit(lite(train_stages="1", augment="basic", epochs=1, feature_cache=False), data)
    assert abs(first.metrics["val_acc"] - plain.metrics["val_acc"]) <= 0.03  # half-precision storage


def test_entries_computed_in_another_batch_size_are_not_read(data, tmp_path):
    """oneDNN can round a prefix output differently in batches of another size, and training amplifies the last
    bit: a trial never reads entries filled at another evaluation batch size (an execution setting, so both are
    the same trial id). Before the batch was in the key, entries filled at 512 by an older version were read by
    later runs filling at 64, and examples/smoke differed from a fresh clone's run by 1.2 pp."""
    first = fit(lite(train_stages="1", epochs=1), data, prefix_cache=PrefixCache(tmp_path))
    again = fit(lite(train_stages="1", epochs=1), data, prefix_cache=PrefixCache(tmp_path))
    other = fit(lite(train_stages="1", epochs=1, eval_batch_size=32), data, prefix_cache=PrefixCache(tmp_path))
    assert first.metrics["prefix_computed"] == 3 and again.metrics["prefix_hits"] == 3
    assert other.metrics["prefix_computed"] == 3 and other.metrics["prefix_hits"] == 0


# ------------------------------------------------------------------ which trials use it


def _plan(cfg: TrialConfig, data: dict, cache: PrefixCache):
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    tdata = load_data(data, device)
    model = build_model(cfg, tdata.num_classes)
    return plan_prefix(cfg, model, tdata, Inputs(cfg, device), cache, Precision(cfg, device))


@pytest.mark.parametrize("changes, reason", [
    (dict(mix="cutmix", train_stages="1"), "mix=cutmix"),
    (dict(mix="mixup", train_stages="0", augment="basic"), "mix=mixup"),
    (dict(train_stages="all"), "nothing is frozen"),
    (dict(feature_cache=False), "feature_cache=false"),
])
def test_trials_that_cannot_use_the_cache_say_why(changes, reason, data, tmp_path):
    plan = _plan(lite(**changes), data, PrefixCache(tmp_path))
    assert plan.path == "plain" and reason in plan.reason


def test_a_prefix_over_the_budget_runs_plain_and_the_row_says_so(data, tmp_path):
    cfg = lite(train_stages="1", augment="basic", epochs=1)
    need = _plan(cfg, data, PrefixCache(tmp_path)).nbytes
    assert need == 2 * (200 + 100 + 100) * 112 * 2 * 2  # fp16 bytes of the train, val and test entries
    result = fit(cfg, data, prefix_cache=PrefixCache(tmp_path, budget_bytes=need - 1))
    assert result.metrics["prefix_path"] == "plain" and result.metrics["feature_cache_state"] == "off"
    assert "over the cache budget" in result.metrics["prefix_reason"]
    assert not list(tmp_path.glob("*.npy"))
    assert _plan(cfg, data, PrefixCache(tmp_path, budget_bytes=need)).path == "cached"


# ------------------------------------------------------------------ storage: processes, lock, LRU, damage


def _fit_in_process(directory: str, data: dict, barrier, out) -> None:
    torch.set_num_threads(1)
    barrier.wait()  # both trials start together
    r = fit(lite(train_stages="1", augment="basic", epochs=1, threads=1), data, prefix_cache=PrefixCache(directory))
    out[os.getpid()] = (r.metrics["prefix_computed"], r.metrics["prefix_hits"], r.logits["test"]["none"])


def test_two_trial_processes_compute_each_entry_once(data, tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out, barrier = manager.dict(), manager.Barrier(2)
        procs = [ctx.Process(target=_fit_in_process, args=(str(tmp_path), data, barrier, out)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        results = list(out.values())
    assert [p.exitcode for p in procs] == [0, 0] and len(results) == 2
    (computed_a, hits_a, logits_a), (computed_b, hits_b, logits_b) = results
    assert computed_a + computed_b == 3 and hits_a + hits_b == 3  # train view, validation, test: once each
    assert np.array_equal(logits_a, logits_b)


def _hold_entry(directory: str, started, release) -> None:
    def compute(out):
        started.set()
        release.wait()
        out[:] = 7

    PrefixCache(directory).get_or_compute("held", (4, 3), compute)


def _waiting_for(lock: Path) -> bool:
    """Whether a process is blocked on the flock of ``lock`` (Linux: a '->' line of /proc/locks)."""
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line + " " for line in Path("/proc/locks").read_text().splitlines())


def test_a_second_process_waits_for_the_entry_being_computed_and_reads_it(tmp_path):
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_entry, args=(str(tmp_path), started, release))
    holder.start()
    while not started.wait(1):
        assert holder.is_alive()

    def must_not_compute(out):
        raise AssertionError("computed an entry another process was computing")

    got: dict = {}
    reader = threading.Thread(target=lambda: got.update(
        entry=PrefixCache(tmp_path).get_or_compute("held", (4, 3), must_not_compute)))
    reader.start()
    while not _waiting_for(tmp_path / "held.lock"):
        assert reader.is_alive()
        time.sleep(0.05)
    release.set()
    reader.join()
    holder.join()
    assert got["entry"].state == "waited" and (got["entry"].array == 7).all()


def _fill(value: float):
    def compute(out):
        out[:] = value
    return compute


def test_least_recently_used_entries_make_room(tmp_path):
    shape = (10, 8)
    cache = PrefixCache(tmp_path, budget_bytes=3 * 10 * 8 * 2)
    for i, key in enumerate("abc"):
        assert cache.get_or_compute(key, shape, _fill(i)).state == "computed"
    assert cache.get_or_compute("a", shape, _fill(-1)).state == "hit"  # a is now the most recently used
    cache.get_or_compute("d", shape, _fill(3))
    assert cache.keys() == ["c", "a", "d"]  # b, least recently used, made room
    assert not (tmp_path / "b.npy").exists()
    assert cache.get_or_compute("b", shape, _fill(1)).state == "computed"
    assert cache.keys() == ["a", "d", "b"] and cache.used_bytes() <= cache.budget


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "record missing", "record of another shape"])
def test_a_damaged_entry_is_computed_again(damage, tmp_path):
    shape = (64, 16)
    PrefixCache(tmp_path).get_or_compute("k", shape, _fill(1.5))
    data, record = tmp_path / "k.npy", tmp_path / "k.json"
    if damage == "flipped byte":
        raw = bytearray(data.read_bytes())
        raw[-100] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:-512])
    elif damage == "record missing":
        record.unlink()
    else:
        meta = json.loads(record.read_text())
        meta["shape"] = [32, 32]
        record.write_text(json.dumps(meta))
    again = PrefixCache(tmp_path).get_or_compute("k", shape, _fill(1.5))  # a new process's view of the cache
    assert again.state == "computed" and (again.array == 1.5).all()
    assert PrefixCache(tmp_path).get_or_compute("k", shape, _fill(0)).state == "hit"


# ------------------------------------------------------------------ the benchmark section


def test_bench_prefix_cache_section_runs_quick(tmp_path):
    """``python -m ablations.bench --quick --only prefix_cache``: plain, cold and warm runs of the L2-style trial.
    The warm trial reads what the cold one stored, so the two compute the same numbers."""
    import subprocess
    import sys

    from .conftest import SUBSET

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ABLATIONS_DATA": str(SUBSET)}  # the shipped subset: runs without the whole data set
    proc = subprocess.run([sys.executable, "-m", "ablations.bench", "--quick", "--only", "prefix_cache", "--out",
                           str(tmp_path)], cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pc = json.loads((tmp_path / "bench.json").read_text())["prefix_cache"]
    assert (pc["plain"]["path"], pc["cold_cache"]["path"], pc["warm_cache"]["path"]) == ("plain", "cached", "cached")
    assert (pc["cold_cache"]["cache"], pc["warm_cache"]["cache"]) == ("miss", "hit")
    assert pc["warm_cache"]["val_acc"] == pc["cold_cache"]["val_acc"]
    assert pc["speedup_warm"] == pc["plain"]["seconds"] / pc["warm_cache"]["seconds"] > 0
    assert "Frozen-prefix cache" in (tmp_path / "BENCH.md").read_text()
