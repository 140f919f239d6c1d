"""A level that starts from another level's trained model (``init_from``): grid expansion, ids, loading the
parent's weights in ``fit``, and the driver running the parent first and handing its weights over."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import views
from pipeline.config import TrialConfig
from pipeline.train import epoch_seed, fit

from ablations.plan import grids

from .conftest import GRIDS, run_cli


def plan_of(name: str, **kw) -> grids.Plan:
    return grids.expand(*grids.load_spec(name), **kw)


def saved(result) -> dict:
    """A trial's model as the driver hands it to a child: its config and trained state (models/<id>.pt)."""
    return {"config": result.config, "state": result.state}


def test_full_l4_and_its_arms_start_from_the_same_seeds_l3_reference():
    plan = plan_of("full")
    l3_ref = {p.seed: p for p in plan.points if p.level == "L3" and p.is_reference and p.axis == "reference"}
    l4 = [p for p in plan.points if p.level == "L4"]
    assert l4 and all(p.config.init_from == l3_ref[p.seed].config_id for p in l4)
    parents = plan.parents()
    assert all(parents[p.trial_id] == l3_ref[p.seed].trial_id for p in l4)
    assert not any(p.config.init_from for p in plan.points if p.level != "L4")
    # selecting L4 alone still runs the L3 references it starts from
    only = plan_of("full", levels=["L4"])
    assert {p.trial_id for p in only.points if p.level == "L3"} == {p.trial_id for p in l3_ref.values()}


def test_a_childs_id_follows_its_parents_config():
    name, spec = grids.load_spec("full")
    changed = {**spec, "levels": {**spec["levels"], "L3": {**spec["levels"]["L3"],
                                                           "set": {**spec["levels"]["L3"]["set"], "hidden": 256}}}}
    a, b = grids.expand(name, spec), grids.expand(name, changed)
    l4 = lambda plan: {p.trial_id for p in plan.points if p.level == "L4" and p.is_reference}  # noqa: E731
    assert l4(a).isdisjoint(l4(b))  # L4's own settings did not change, its parent did


@pytest.mark.parametrize("bad, message", [
    ({"L2": {"init_from": "L9"}}, "not one of its levels"),
    ({"L1": {"init_from": "L2"}, "L2": {"init_from": "L1"}}, "starts from itself"),
    ({"L2": {"set": {"init_from": "x"}}}, "is a level's key"),
])
def test_bad_lineage_is_refused(bad, message):
    name, spec = grids.load_spec(str(GRIDS / "lineage.yaml"))
    levels = {lv: {**spec["levels"][lv], **bad.get(lv, {})} for lv in spec["levels"]}
    for lv in levels:
        if "init_from" not in bad.get(lv, {}) and lv in bad and "set" in bad[lv]:
            levels[lv]["set"] = {**spec["levels"][lv].get("set", {}), **bad[lv]["set"]}
    with pytest.raises(grids.GridError, match=message):
        grids.expand(name, {**spec, "levels": levels})


def test_fit_starts_from_the_parents_trained_state(small_splits):
    parent_cfg = TrialConfig(backbone="small_cnn", pretrained=False, head="mlp", train_stages="all", resolution=32,
                             epochs=2, batch_size=50, device="cpu", threads=2)
    parent = fit(parent_cfg, small_splits)
    # head only (BatchNorm statistics stay as the parent left them) at a rate too small to move it
    child_cfg = parent_cfg.replace(init_from=parent_cfg.config_id, train_stages="0", epochs=1, lr=1e-8)
    child = fit(child_cfg, small_splits, init_state=saved(parent))
    np.testing.assert_allclose(child.logits["val"]["none"].astype(np.float32),
                               parent.logits["val"]["none"].astype(np.float32), atol=0.05)
    assert child.metrics["val_acc"] == pytest.approx(parent.metrics["val_acc"], abs=0.01)
    assert parent.metrics["val_acc"] > 0.15  # a trained model, not chance
    with pytest.raises(ValueError, match="trained state was not given"):
        fit(child_cfg, small_splits)


@pytest.mark.ray
def test_the_parent_runs_first_and_hands_over_its_weights(ray_cluster, mini_archive, tmp_path):
    proc = run_cli("--grid", str(GRIDS / "lineage.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--keep-models", "none", "--no-report")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "lineage" / "trials.parquet").set_index("level")
    assert (df.status == "finished").all()
    assert df.loc["L2", "t_fit_start"] > df.loc["L1", "t_fit_end"]  # after its parent
    assert df.loc["L2", "val_acc"] == pytest.approx(df.loc["L1", "val_acc"], abs=0.02)  # from its weights
    # --keep-models none keeps no weights, except a parent's
    assert [f.stem for f in (tmp_path / "lineage" / "models").glob("*.pt")] == [df.loc["L1", "trial_id"]]


def test_a_child_shares_prefix_outputs_with_a_trial_whose_frozen_stages_hold_the_same_weights(small_splits, tmp_path):
    """Cache entries are keyed by the frozen prefix's weights, not by where a model started: a child whose parent
    trained only the top stage has ImageNet weights below it, so at a deeper cut it reads what a trial started
    from ImageNet computed; a parent that trained deeper stages gives a prefix of its own."""
    from pipeline.prefix_cache import PrefixCache

    base = TrialConfig(backbone="efficientnet_lite0", resolution=32, train_stages="1", augment="basic", epochs=1,
                       batch_size=50, lr=1e-3, device="cpu", threads=2)
    cache = PrefixCache(tmp_path / "cache")
    parent = fit(base, small_splits, prefix_cache=cache)
    sibling = fit(base.replace(train_stages="2", lr=3e-4), small_splits, prefix_cache=cache)  # from ImageNet
    assert sibling.metrics["feature_cache_state"] == "miss"
    child_cfg = base.replace(init_from=base.config_id, train_stages="2", lr=3e-4)
    child = fit(child_cfg, small_splits, prefix_cache=cache, init_state=saved(parent))
    # its validation and test entries are the sibling's; its training view is a later epoch's (it continues its
    # parent's epoch numbering), which it computes
    assert child.metrics["prefix_path"] == "cached" and child.metrics["feature_cache_state"] == "partial"
    assert child.metrics["prefix_hits"] >= 2 and child.metrics["prefix_computed"] >= 1
    # a parent that fine-tuned stages 2-3 changes what a child with train_stages 1 computes below its cut (stage 2)
    deep = fit(base.replace(train_stages="2"), small_splits, prefix_cache=cache)
    child2 = fit(base.replace(init_from=base.replace(train_stages="2").config_id, train_stages="1"), small_splits,
                 prefix_cache=cache, init_state=saved(deep))
    assert child2.metrics["feature_cache_state"] == "miss"  # its prefix holds the parent's trained stage 2


@pytest.mark.ray
def test_ctrl_c_during_the_parents_wave_leaves_the_children_pending(ray_cluster, mini_archive, tmp_path):
    """Interrupted while the parent trains, the run stops with its children not run (pending, not failed), and the
    same command then runs both."""
    import signal

    from .conftest import read_trials, start_cli, wait_for

    args = ["--grid", str(GRIDS / "lineage.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
            "--address", ray_cluster.address, "--keep-models", "none", "--no-report", "--log", "none"]
    folder = tmp_path / "lineage"
    proc = start_cli(*args)

    def parent_running():
        df = read_trials(folder)
        return df if df is not None and (df[df.level == "L1"].status == "running").any() else None

    wait_for(parent_running, 300, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, out[-3000:]
    df = pd.read_parquet(folder / "trials.parquet").set_index("level")
    assert df.loc["L2", "status"] == "pending", df[["status", "error"]]
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert (pd.read_parquet(folder / "trials.parquet").status == "finished").all()


# ----------------------------------------------------------------------------- continuation done as 000 did it

LITE = dict(backbone="efficientnet_lite0", resolution=32, batch_size=50, device="cpu", threads=2)


def test_a_child_continues_its_parents_epoch_numbering(small_splits, monkeypatch):
    """The rule: the child's epoch e is the lineage's epoch parent.epochs + e, so its augmentation views and batch
    order are not its parent's first epochs again; its rows count from its own epoch 1."""
    import pipeline.train as T

    seen: list[int] = []
    real = T.train_one_epoch

    def spy(module, source, state, data, cfg, epoch, *a, **kw):
        seen.append(epoch)
        return real(module, source, state, data, cfg, epoch, *a, **kw)

    monkeypatch.setattr(T, "train_one_epoch", spy)
    parent_cfg = TrialConfig(**LITE, train_stages="1", augment="basic", epochs=2, lr=1e-3)
    parent = fit(parent_cfg, small_splits)
    child = fit(parent_cfg.replace(init_from=parent_cfg.config_id, train_stages="2", epochs=2, lr=5e-4),
                small_splits, init_state=saved(parent))
    assert seen == [0, 1, 2, 3]  # the parent's epochs 0-1, then the child's as lineage epochs 2-3
    assert [h["epoch"] for h in child.history] == [0, 1, 2]  # its start row, then its own epochs
    n, bs = len(small_splits.train_y), 50
    first = lambda e: torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(0, e)))[:bs]  # noqa: E731
    assert not torch.equal(first(seen[2]), first(seen[0]))  # the child's first batch is not its parent's first
    assert views.view_name("basic", 0, seen[2]) != views.view_name("basic", 0, seen[0])


def test_a_child_is_validated_before_its_first_epoch_and_starts_at_its_parents_accuracy(small_splits, tmp_path):
    """Epoch 0 of a child is a validation pass on its parent's weights. It equals the parent's final validation
    accuracy within 1% of the validation images: the child reads its frozen stages at a shallower cut (another
    prefix-cache entry, stored in float16), so a few borderline images may flip."""
    from pipeline.prefix_cache import PrefixCache

    cache = PrefixCache(tmp_path / "cache")
    parent_cfg = TrialConfig(**LITE, train_stages="1", augment="basic", epochs=2, lr=1e-3)
    parent = fit(parent_cfg, small_splits, prefix_cache=cache)
    rows = []
    child = fit(parent_cfg.replace(init_from=parent_cfg.config_id, train_stages="2", epochs=1, lr=5e-4),
                small_splits, prefix_cache=cache, init_state=saved(parent), on_epoch=lambda r, ck: rows.append(r))
    start = child.history[0]
    assert start["epoch"] == 0 and rows[0]["epoch"] == 0 and math.isnan(start.get("train_loss", math.nan))
    assert abs(start["val_acc"] - parent.metrics["val_acc"]) <= 0.01
    assert parent.metrics["val_acc"] > 0.2  # a trained parent, not chance
    no_parent = fit(parent_cfg, small_splits, prefix_cache=cache)
    assert [h["epoch"] for h in no_parent.history] == [1, 2]  # only children get an epoch 0


@pytest.mark.parametrize("mode", ["batch", "frozen"])
def test_new_stage_bn_decides_the_batchnorm_of_the_stage_a_child_unfreezes(small_splits, mode):
    """The parent trained the last stage; the child also trains the one below it. 'frozen': that stage's BatchNorm
    keeps the running statistics it had (its weights still train); 'batch': it moves to batch statistics."""
    from pipeline.models import build_model

    parent_cfg = TrialConfig(**LITE, train_stages="1", epochs=1, lr=1e-3)
    parent = fit(parent_cfg, small_splits)
    child_cfg = parent_cfg.replace(init_from=parent_cfg.config_id, train_stages="2", epochs=1, new_stage_bn=mode)
    child = fit(child_cfg, small_splits, init_state=saved(parent))
    before = build_model(child_cfg, 10).state_dict()  # the ImageNet weights of the stage below the parent's
    stage = len(build_model(child_cfg, 10).backbone.stages) - 2
    means = [k for k in child.state if f"stages.{stage}." in k and k.endswith("running_mean")]
    weights = [k for k in child.state if f"stages.{stage}." in k and k.endswith(".weight")]
    assert means and weights
    same_stats = all(torch.equal(child.state[k], before[k]) for k in means)
    assert same_stats == (mode == "frozen")
    assert not all(torch.equal(child.state[k], before[k]) for k in weights)  # it trained either way
    assert child.config["new_stage_bn"] == mode


def test_new_stage_bn_is_part_of_a_childs_id_only():
    plain = TrialConfig(**LITE)
    assert plain.replace(new_stage_bn="frozen").trial_id == plain.trial_id  # no parent: nothing to decide
    assert plain.replace(new_stage_bn="batch").trial_id == plain.trial_id
    child = plain.replace(init_from="abc")
    assert child.replace(new_stage_bn="batch").trial_id != child.replace(new_stage_bn="frozen").trial_id


@pytest.mark.parametrize("lr, expected", [("parent/2", 5e-4), ("parent*0.1", 1e-4), ("parent", 1e-3)])
def test_a_childs_lr_can_be_relative_to_its_parents(lr, expected):
    name, spec = grids.load_spec(str(GRIDS / "lineage.yaml"))
    spec = {**spec, "levels": {"L1": spec["levels"]["L1"],
                               "L2": {**spec["levels"]["L2"], "set": {**spec["levels"]["L2"]["set"], "lr": lr}}}}
    plan = grids.expand(name, spec)
    assert next(p.config.lr for p in plan.points if p.level == "L2") == pytest.approx(expected)


@pytest.mark.parametrize("levels, message", [
    ({"L2": {"set": {"lr": "parent/0"}}}, "write parent, parent/N or parent"),
    ({"L2": {"set": {"lr": "parents/2"}}}, "write parent"),
])
def test_a_bad_relative_lr_is_refused(levels, message):
    name, spec = grids.load_spec(str(GRIDS / "lineage.yaml"))
    spec = {**spec, "levels": {"L1": spec["levels"]["L1"],
                               "L2": {**spec["levels"]["L2"], "set": {**spec["levels"]["L2"]["set"],
                                                                      **levels["L2"]["set"]}}}}
    with pytest.raises(grids.GridError, match=message):
        grids.expand(name, spec)


def test_a_relative_lr_without_a_parent_is_refused():
    name, spec = grids.load_spec(str(GRIDS / "lineage.yaml"))
    spec = {**spec, "levels": {"L1": {"set": {**spec["levels"]["L1"]["set"], "lr": "parent/2"}}}}
    with pytest.raises(grids.GridError, match="has no init_from"):
        grids.expand(name, spec)


def test_the_builtin_grids_continue_l3_at_half_its_rate_as_000_did():
    for grid in ("full", "cpu"):
        plan = plan_of(grid)
        l3 = next(p.config for p in plan.points if p.level == "L3" and p.axis == "reference")
        l4 = next(p.config for p in plan.points if p.level == "L4" and p.axis == "reference")
        assert l4.lr == pytest.approx(l3.lr / 2) and l4.init_from == l3.config_id
        assert l4.new_stage_bn == "batch"  # what a plain model.train() loop does to the stage it unfreezes


def test_the_continuation_control_is_the_parent_recipe_plus_the_same_epochs_without_a_new_stage():
    """continuation_helps (L4 against its L3 parent) changes two things at once: more epochs and a newly unfrozen
    stage. Its control continues the same parent for the same extra epochs at the same learning-rate restart, and
    trains the parent's own stages only: it differs from L4 in the stages alone."""
    from pipeline.ids import identity

    for grid in ("full", "cpu"):
        plan = plan_of(grid)
        l3 = next(p.config for p in plan.points if p.level == "L3" and p.axis == "reference")
        l4 = next(p.config for p in plan.points if p.level == "L4" and p.axis == "reference")
        control = next(p.config for p in plan.points if p.axis == "continuation" and p.arm == "same_stages")
        assert control.init_from == l3.config_id == l4.init_from  # the same parent
        assert control.epochs == l4.epochs and control.lr == pytest.approx(l4.lr) == pytest.approx(l3.lr / 2)
        assert control.train_stages == l3.train_stages != l4.train_stages  # no stage beyond the parent's
        a, b = identity(control), identity(l4)
        assert {k for k in a if a[k] != b[k]} == {"train_stages"}, grid
        # the control is a control, not a candidate for L4's best config
        assert not any(p.competes for p in plan.points if p.axis == "continuation")
