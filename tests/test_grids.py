"""Grid specs, their expansion into trials, overrides, and the CLI's refusal of bad input (no Ray)."""
from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, TrialConfig

from ablations.plan import grids
from ablations.plan.overrides import parse_overrides

from .conftest import run_cli


def _plan(name="full", **kw):
    n, spec = grids.load_spec(name)
    return grids.expand(n, spec, **kw)


@pytest.fixture(scope="module")
def full_json():
    proc = run_cli("--grid", "full", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _arms(points, axis):
    return {p["arm"]: p for p in points if p["axis"] == axis}


def test_full_dry_run_json_lists_every_level_and_axis_for_three_seeds(full_json):
    points = full_json["points"]
    assert {p["level"] for p in points} == {"L1", "L2", "L3", "L4"}
    # every (level, axis, arm) point runs for seeds 0, 1, 2
    by_point: dict[tuple, set] = {}
    for p in points:
        by_point.setdefault((p["level"], p["axis"], p["arm"]), set()).add(p["seed"])
    assert all(seeds == {0, 1, 2} for seeds in by_point.values())

    ref = {p["level"]: p for p in points if p["axis"] == "reference" and p["seed"] == 0}
    # the levels at the seeds' settings
    assert all(r["backbone"] == "resnet18" and r["resolution"] == 224 and r["batch_size"] == 64 for r in ref.values())
    assert ref["L1"]["train_stages"] == "0" and ref["L1"]["optimizer"] == "adam" and ref["L1"]["epochs"] == 5
    l2 = ref["L2"]
    assert (l2["augment"], l2["dropout"], l2["weight_decay"], l2["optimizer"], l2["schedule"], l2["train_stages"]) == \
        ("strong", 0.5, 1e-4, "adamw", "cosine", "1")
    assert ref["L3"]["head"] == "fusion"
    assert ref["L4"]["train_stages"] == "2"
    # 000 halved its rate from level 3 to level 4 (1e-4 -> 5e-5): L4 runs at half its L3 parent's
    assert ref["L4"]["lr"] == pytest.approx(ref["L3"]["lr"] / 2) and ref["L4"]["backbone_lr_mult"] == 1.0

    assert {p["lr"] for p in _arms(points, "l1_lr").values()} == {1e-4, 1e-3}
    assert {p["backbone"] for p in _arms(points, "backbone").values()} >= {"resnet18", "resnet50"}
    assert {p["augment"] for p in _arms(points, "augment").values()} == {"none", "basic", "strong"}
    assert {p["train_stages"] for p in _arms(points, "freeze_depth").values()} == {"0", "1", "2", "all"}
    assert len(_arms(points, "lr")) == 4
    assert {p["resolution"] for p in _arms(points, "resolution").values()} >= {32, 224}
    assert {p["head"] for p in _arms(points, "head").values()} == {"linear", "mlp", "fusion", "se"}
    assert _arms(points, "architecture")["scratch_cnn"]["backbone"] == "small_cnn"
    assert not _arms(points, "architecture")["scratch_cnn"]["pretrained"]
    loss = _arms(points, "loss")
    assert loss["label_smoothing"]["label_smoothing"] > 0
    assert loss["mixup"]["mix"] == "mixup" and loss["cutmix"]["mix"] == "cutmix"
    opt = _arms(points, "optimizer")
    assert opt["adamw_onecycle"]["schedule"] == "onecycle"
    assert opt["two_phase"]["freeze_epochs"] > 0
    assert opt["differential_lr"]["backbone_lr_mult"] < 1
    assert set(_arms(points, "tta")) == {"none", "flip", "flip_crops"}
    cross = _arms(points, "augment_x_finetune")
    assert {(p["augment"], p["train_stages"]) for p in cross.values()} == {(a, s) for a in ("none", "strong")
                                                                            for s in ("0", "1")}


def test_tta_is_an_evaluation_axis_not_extra_trials(full_json):
    points = full_json["points"]
    tta = [p for p in points if p["axis"] == "tta"]
    ref_l4 = {p["trial_id"] for p in points if p["axis"] == "reference" and p["level"] == "L4"}
    assert {p["trial_id"] for p in tta} == ref_l4
    assert all(p["tta"] == "flip_crops" for p in tta)  # the widest mode is evaluated once


def test_same_config_is_one_trial():
    plan = _plan("full")
    ids = [p.trial_id for p in plan.points]
    assert len(plan.trials()) < len(ids)  # reference arms are shared
    for tid, cfg in plan.trials().items():
        assert cfg.trial_id == tid
    # the lr axis's 3e-4 arm is the L2 reference itself
    l2 = next(p for p in plan.points if p.level == "L2" and p.axis == "reference" and p.seed == 0)
    lr_arm = next(p for p in plan.points if p.axis == "lr" and p.arm == "0.0003" and p.seed == 0)
    assert lr_arm.trial_id == l2.trial_id and lr_arm.is_reference


def test_trial_id_ignores_execution_keys_and_auto_normalization():
    a = TrialConfig()
    assert a.trial_id == a.replace(device="cuda", threads=4, workers=2, amp="bf16").trial_id
    assert a.trial_id != a.replace(lr=0.01).trial_id
    assert a.trial_id == a.replace(normalize="tf").trial_id  # auto means tf for EfficientNet-Lite0
    assert a.trial_id != a.replace(normalize="imagenet").trial_id


def test_builtin_grids_expand_and_per_level_grids_select_one_level():
    for name in grids.builtin_names():
        plan = _plan(name)
        assert plan.points
    for lv in ("L1", "L2", "L3", "L4"):
        plan = _plan(lv)
        extra = [p for p in plan.points if p.level != lv]  # only the references a level starts from (init_from)
        assert {p.level for p in plan.points} - {lv} == ({"L3"} if lv == "L4" else set())
        assert all(p.axis == "reference" for p in extra) and set(plan.parents().values()) >= {p.trial_id for p in extra}
    cpu, extended = _plan("cpu"), _plan("cpu-extended")
    # cpu: every level, the axes its claims need (with their controls), the scratch CNN; 3 seeds, the full test
    # set, 5,000 val
    assert {p.level for p in cpu.points} == {"L1", "L2", "L3", "L4"}
    assert {p.axis for p in cpu.points} == {"reference", "augment", "freeze_depth", "augment_x_finetune", "tta",
                                           "architecture", "head", "augment_2x_epochs", "continuation"}
    assert {p.seed for p in cpu.points} == {0, 1, 2}
    assert cpu.data_settings() == {"train_per_class": 1000, "val_size": 5000, "test_per_class": 0, "split_seed": 0,
                                   "data_size": 0}
    # equal budgets: every trained arm of cpu's wave 1 runs 3 epochs (L4 continues L3's model for 2 more), but the
    # budget pair at twice that, which does not compete for L2's best config
    assert {p.config.epochs for p in cpu.points if p.level != "L4" and p.axis != "augment_2x_epochs"} == {3}
    assert {p.config.epochs for p in cpu.points if p.axis == "augment_2x_epochs" and not p.is_reference} == {6}
    assert not any(p.competes for p in cpu.points if p.axis in ("augment_2x_epochs", "continuation"))
    # cpu-extended: everything cpu runs, and every other axis of full but the seed recipes (ResNet ImageNet
    # weights, not offline)
    assert set(cpu.trials()) <= set(extended.trials())
    assert {p.axis for p in extended.points} >= {p.axis for p in _plan("full").points} - {"seed_recipes"}
    assert {c.id for c in extended.claims} == {c.id for c in _plan("full").claims}
    assert all(p.config.backbone in ("efficientnet_lite0", "resnet18", "small_cnn") for p in extended.points)


def test_user_grid_file_with_extends(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("extends: cpu\nseeds: 1\nbase: {epochs: 1}\naxes: {lr: null, head: null}\n"
                 "levels: {L2: {set: {lr: 0.002}}}\n")
    plan = grids.expand(*grids.load_spec(str(f)))
    assert plan.grid == "mine"
    assert {p.seed for p in plan.points} == {0}
    assert not {"lr", "head"} & {p.axis for p in plan.points}
    l2 = next(p for p in plan.points if p.level == "L2" and p.axis == "reference")
    assert l2.config.lr == 0.002 and l2.config.augment == "strong" and l2.config.backbone == "efficientnet_lite0"


def test_levels_axes_seeds_and_overrides():
    plan = _plan("full", levels=["L2"], axes=["lr"], seeds=2, overrides={"epochs": 1, "augment": "basic"})
    assert {p.level for p in plan.points} == {"L2"} and {p.axis for p in plan.points} == {"reference", "lr"}
    assert {p.seed for p in plan.points} == {0, 1}
    assert all(p.config.epochs == 1 and p.config.augment == "basic" for p in plan.points)
    # an axis arm keeps its own value over an override of the same key
    plan = _plan("full", levels=["L2"], axes=["lr"], overrides={"lr": 0.5})
    assert {p.config.lr for p in plan.points if p.axis == "lr"} == {3e-5, 1e-4, 3e-4, 1e-3, 0.5}


def test_override_parsing_types_and_rejections():
    assert parse_overrides(["lr=1e-3", "augment=strong", "epochs=2", "pretrained=false", "dropout=0.5"]) == \
        {"lr": 1e-3, "augment": "strong", "epochs": 2, "pretrained": False, "dropout": 0.5}
    for bad, msg in [("lr", "key=value"), ("lr=abc", "expected float"), ("lr=-1", "must be in"),
                     ("epochs=1.5", "expected int"), ("augment=extreme", "must be one of"),
                     ("lrr=0.1", "did you mean lr"), ("pretrained=maybe", "expected bool"), ("=3", "key=value")]:
        with pytest.raises(ConfigError, match=msg):
            parse_overrides([bad])


@pytest.mark.parametrize("args, message", [
    (["--grid", "nope"], "unknown grid 'nope'"),
    (["--grid", "full", "--levels", "L9"], "unknown level"),
    (["--grid", "full", "--axes", "colour"], "unknown axis"),
    (["--grid", "smoke", "--set", "lr=fast"], "lr='fast': expected float"),
    (["--grid", "smoke", "--set", "resolution=8"], "resolution=8: must be in"),
    (["--grid", "smoke", "--set", "epochs"], "expected key=value"),
    (["--grid", "smoke", "--seeds", "0"], "at least 1"),
    (["--grid", "smoke", "--levels", "L2", "--set", "freeze_epochs=5"], "freeze_epochs=5 must be below"),
    (["--grid", "smoke", "--set", "freeze_epochs=1"], "needs train_stages above 0"),
    (["--grid", "missing.yaml"], "grid file not found"),
])
def test_cli_rejects_bad_input_with_one_line(args, message, tmp_path):
    proc = run_cli(*args, "--dry-run", "--results", str(tmp_path), timeout=60)  # a hang fails: TimeoutExpired
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_grid_files(tmp_path):
    cases = {
        "notmap.yaml": "- a\n- b\n",
        "badyaml.yaml": "levels: {L1: [\n",
        "badkey.yaml": "levels: {L1: {set: {lrate: 1}}}\n",
        "badaxis.yaml": "levels: {L1: {set: {}}}\naxes: {x: {around: L7, key: lr, values: [1]}}\n",
        "badens.yaml": "levels: {L1: {set: {}}}\nensembles: {e: {axis: nope}}\n",
        "section.yaml": "levels: {L1: {set: {}}}\nsurprise: 1\n",
        "axiskey.yaml": "levels: {L1: {set: {}}}\naxes: {x: {around: L1, key: lr, values: [1], colour: red}}\n",
        "compete.yaml": "levels: {L1: {set: {}}}\naxes: {x: {around: L1, key: lr, values: [1], compete: maybe}}\n",
        "cycle.yaml": "extends: cycle.yaml\nlevels: {L1: {set: {}}}\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(grids.GridError):
            grids.expand(*grids.load_spec(str(tmp_path / name)))


def test_dry_run_prints_counts_resources_and_estimate():
    proc = run_cli("--grid", "cpu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "grid cpu:" in out and "trials" in out and "resources:" in out and "estimated time" in out
    for axis in ("freeze_depth", "augment", "augment_x_finetune", "continuation", "tta", "architecture"):
        assert axis in out
    proc = run_cli("--grid", "full", "--dry-run", "--gpus-per-trial", "0.25", "--num-gpus", "1", "--num-cpus", "8")
    assert "0.25 GPU" in proc.stdout and "up to 4 trials at once" in proc.stdout, proc.stdout + proc.stderr


def test_removing_an_axis_removes_its_ensembles_and_lists_its_claims_as_not_in_the_grid():
    full, cpu, extended = _plan("full"), _plan("cpu"), _plan("cpu-extended")
    assert "loss_arms" in full.spec["ensembles"] and "loss_arms" not in cpu.spec["ensembles"]
    assert "loss_arms" in extended.spec["ensembles"]  # declared again with its axis
    # every grid lists every claim of the study; cpu cannot measure the loss axis's, and says why
    assert [c.id for c in cpu.claims] == [c.id for c in full.claims] == [c.id for c in extended.claims]
    absent = {c.id: c.not_in_grid for c in cpu.claims if c.not_in_grid}
    assert absent == {"label_smoothing_helps": "its axis 'loss' is not in this grid",
                      "mixup_helps": "its axis 'loss' is not in this grid"}
    assert not [c for c in full.claims + extended.claims if c.not_in_grid]
    assert any("[not in this grid: its axis 'loss'" in line for line in grids.describe_claims(cpu))
