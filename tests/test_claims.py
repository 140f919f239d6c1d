"""Claims (declared in grids, validated at load time, given verdicts in the report), the seed recipes, the
citations of the built-in grids, and seed-aware verdicts on a synthetic 5-seed run, with its LaTeX tables read
back. No Ray, no training: the run's logits are written by hand.

The synthetic run (4 classes x 500 test images, seeds 0-4), per seed s:
  L2 reference          ship/truck 80% right, cat/dog 60% (70% overall)
  L2 lr=0.01 "steady"   the reference plus 40, 42, 38, 40, 44 of its errors fixed: +2.0 .. +2.2 pp
  L2 lr=0.0001 "wobbly" +4, -3, +5 pp on seeds 0-2 (fixes or breaks; seeds 3-4 pending)
  L1 reference          the L2 reference with 200, 190, 210, 200, 205 correct images broken: about -10 pp
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate import summary

from ablations.plan import grids
from ablations.report import main, write_report
from ablations.store.best import best_config_ids
from ablations.store.results import RunFolder

from .conftest import run_cli
from .test_report import make_logits

REPO = Path(__file__).resolve().parents[1]


def _load(tmp_path, text: str, name: str = "g.yaml") -> grids.Plan:
    (tmp_path / name).write_text(text)
    return grids.expand(*grids.load_spec(str(tmp_path / name)))


# ----------------------------------------------------------------------------- claims in grids

GRID = """
levels: {L1: {set: {}}, L2: {from: L1, set: {lr: 0.01}}}
axes:
  lr: {around: L2, key: lr, values: [1.0e-4, 1.0e-3]}
  tta: {around: L2, key: tta, values: [none, flip], eval: true}
claims:
"""


@pytest.mark.parametrize("claim, message", [
    ("{c: {says: x, source: s, better: L3, worse: L1}}", "unknown level 'L3'"),
    ("{c: {says: x, source: s, axis: colour, better: a, worse: b}}", "unknown axis 'colour'"),
    ("{c: {says: x, source: s, axis: lr, better: 0.1, worse: 0.001}}", "axis 'lr' has no arm '0.1'"),
    ("{c: {says: x, source: s, axis: tta, better: flip_crops, worse: none}}", "has no arm 'flip_crops'"),
    ("{c: {says: x, source: s, level: L2, better: [ship, lorry], worse: [cat]}}", "unknown class(es) ['lorry']"),
    ("{c: {says: x, source: s, level: L9, better: [ship], worse: [cat]}}", "unknown level 'L9'"),
    ("{c: {says: x, better: L2, worse: L1}}", "'source' must be a non-empty text"),
    ("{c: {says: x, source: s, better: L2, worse: L1, margin: -1}}", "'margin' must be a number"),
    ("{c: {says: x, source: s, better: L2, worse: L1, colour: red}}", "unknown key(s) ['colour']"),
    ("{c: {says: x, source: s, better: L2, worse: L2}}", "both 'L2'"),
    ("[{says: x, source: s, better: L2, worse: L1}]", "needs an 'id'"),
])
def test_bad_claims_are_one_line_grid_errors(tmp_path, claim, message):
    with pytest.raises(grids.GridError) as e:
        _load(tmp_path, GRID + "  " + claim)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_claims_as_list_or_mapping_and_their_kinds(tmp_path):
    plan = _load(tmp_path, GRID + """
  - {id: up, says: L2 beats L1, source: "001", better: L2, worse: L1, margin: 2}
  - {id: low_lr, says: low lr, source: "002", axis: lr, better: 1.0e-4, worse: 1.0e-3}
  - {id: rigid, says: rigid, source: "004", level: L2, better: [ship, truck], worse: [cat, dog]}
""")
    kinds = {c.id: (c.kind, c.better, c.worse) for c in plan.claims}
    assert kinds == {"up": ("levels", "L2", "L1"), "low_lr": ("arms", "0.0001", "0.001"),
                     "rigid": ("classes", ("ship", "truck"), ("cat", "dog"))}
    assert next(c for c in plan.claims if c.id == "up").compared() == "L2 reference − L1 reference (margin 2 pp)"


def test_extends_replaces_claims_by_id_and_keeps_those_of_removed_axes_as_not_in_the_grid(tmp_path):
    (tmp_path / "base.yaml").write_text(GRID + """
  a: {says: a, source: s, better: L2, worse: L1}
  b: {says: b, source: s, axis: lr, better: 1.0e-4, worse: 1.0e-3}
  c: {says: c, source: s, axis: tta, better: flip, worse: none}
""")
    plan = _load(tmp_path, "extends: base.yaml\naxes: {lr: null}\nclaims: {a: null, c: {says: c2, source: t, "
                           "axis: tta, better: none, worse: flip}}\n", "child.yaml")
    # 'a' removed on purpose; 'b' kept but listed as not in this grid (its axis was removed); 'c' replaced
    assert [(c.id, c.says, c.better, c.not_in_grid) for c in plan.claims] == [
        ("b", "b", "0.0001", "its axis 'lr' is not in this grid"), ("c", "c2", "none", "")]
    # redefining an axis so that a claim's arm is gone is an error, not a silent drop
    with pytest.raises(grids.GridError, match="claim 'b': axis 'lr' has no arm '0.0001'"):
        _load(tmp_path, "extends: base.yaml\naxes: {lr: {around: L2, key: lr, values: [0.5]}}\n", "child2.yaml")


def test_builtin_grids_declare_the_seeds_claims():
    claims = {c.id: c for c in grids.expand(*grids.load_spec("full")).claims}
    assert set(claims) == {"finetune_beats_frozen", "transfer_beats_scratch", "flip_tta_helps",
                           "deeper_finetune_from_imagenet", "continuation_helps", "augment_helps_finetuning",
                           "fusion_head_helps", "se_head_helps", "label_smoothing_helps", "mixup_helps",
                           "rigid_beat_organic", "augment_helps_frozen", "unfreezing_beats_more_epochs",
                           "augment_helps_finetuning_longer"}
    # the grid's own questions (controls, a question no seed asked) are a group apart from the seeds' claims
    assert {k for k, c in claims.items() if c.group == "grid"} == {
        "deeper_finetune_from_imagenet", "unfreezing_beats_more_epochs", "augment_helps_finetuning_longer"}
    # every seed claim that a seed ran says at what setting; the proxy's verdicts are worded for their own
    assert all(dict(c.seed_setting).get("backbone") for c in claims.values()
               if c.group == "seeds" and "not run" not in c.source)
    # a claim per level step, as its seed ran it: L1 -> L2, L2 -> L3 (the same recipe, another head), L3 -> L4 (the
    # continuation of each seed's own L3 model), and TTA on L4
    steps = {k: (c.kind, c.better, c.worse) for k, c in claims.items()}
    assert steps["finetune_beats_frozen"] == ("levels", "L2", "L1")
    assert steps["fusion_head_helps"] == ("levels", "L3", "L2")
    assert steps["continuation_helps"] == ("levels", "L4", "L3")
    assert steps["flip_tta_helps"] == ("arms", "flip", "none") and steps["se_head_helps"] == ("arms", "se", "linear")
    assert (claims["finetune_beats_frozen"].better, claims["finetune_beats_frozen"].worse) == ("L2", "L1")
    assert claims["transfer_beats_scratch"].margin >= 10
    rigid = claims["rigid_beat_organic"]
    assert rigid.kind == "classes" and set(rigid.better) == {"automobile", "ship", "truck", "airplane"}
    assert "004" in rigid.source
    for c in claims.values():  # every claim cites a write-up by number
        assert re.search(r"\b00[0-4]\b", c.source), c.id
    for name in ("cpu-extended", "L1", "L2", "L3", "L4"):  # the children inherit them
        assert {c.id for c in grids.expand(*grids.load_spec(name)).claims} == set(claims)
    # cpu drops the loss axis, and lists the claims about it as not in the grid
    cpu = {c.id: c.not_in_grid for c in grids.expand(*grids.load_spec("cpu")).claims}
    assert set(cpu) == set(claims)
    assert {k for k, v in cpu.items() if v} == {"label_smoothing_helps", "mixup_helps"}


def test_citations_match_the_seed_write_ups():
    """003 is only the CNN from scratch (the same text as 001's level 3); ResNet-50 and the SE head are 002's."""
    for lv, text in grids.SEED_REPORTED.items():
        for cite in re.findall(r"\((00\d)[^)]*\)", text):
            assert cite != "003", (lv, text)
    assert "003" in grids.SEED_REPORTED["L3"] and "CNN from scratch (001 and 003)" in grids.SEED_REPORTED["L3"]
    assert "82.1% (002, ResNet-50" in grids.SEED_REPORTED["L1"] and "SE head (002" in grids.SEED_REPORTED["L3"]
    assert "94.6% (002, ResNet-50)" in grids.SEED_REPORTED["L2"]
    full = (REPO / "ablations" / "plan" / "builtin_grids" / "full.yaml").read_text()
    assert "(003)" not in full and "001/002" not in full and "(seeds 000, 001, 003)" not in full


# ----------------------------------------------------------------------------- seed recipes


def test_seed_recipes_rerun_each_write_up_and_do_not_compete(tmp_path):
    plan = grids.expand(*grids.load_spec("full"))
    arms = {p.arm: p for p in plan.points if p.axis == "seed_recipes" and p.seed == 0}
    c = {k: p.config for k, p in arms.items()}
    assert c["002_L1"].backbone == "resnet50" and c["002_L1"].train_stages == "0" and c["002_L1"].lr == 1e-3
    assert (c["002_L2"].optimizer, c["002_L2"].schedule, c["002_L2"].lr, c["002_L2"].epochs) == ("adamw", "cosine",
                                                                                                  3e-4, 10)
    assert c["002_L3"].head == "se" and c["002_L3"].epochs == 12
    assert (c["001_L1"].backbone, c["001_L1"].optimizer, c["001_L1"].lr, c["001_L1"].epochs,
            c["001_L1"].augment) == ("resnet18", "adam", 1e-4, 5, "none")
    assert c["001_L2"].augment == "strong" and c["001_L2"].dropout == 0.5
    assert c["001_L3"].backbone == "small_cnn" and not c["001_L3"].pretrained
    assert c["000_L3"].head == "fusion" and c["000_L3"].epochs == 3
    assert not any(p.competes for p in arms.values())
    reported = plan.spec["axes"]["seed_recipes"]["reported"]
    assert reported["002_L1"] == 82.06 and reported["001_L3"] == 65.89 and set(reported) <= set(arms)
    assert "seed_recipes" not in {p.axis for p in grids.expand(*grids.load_spec("cpu")).points}
    # a recipe that beats L1's reference on validation is still not L1's best config
    rows = []
    for arm, val, competes in (("reference", 0.80, True), ("001_L2", 0.95, False)):
        rows += [{"trial_id": f"{arm}{s}", "config_id": arm, "level": "L1", "axis": "seed_recipes", "arm": arm,
                  "seed": s, "is_reference": arm == "reference", "competes": competes, "status": "finished",
                  "val_acc": val} for s in (0, 1)]
    assert best_config_ids(pd.DataFrame(rows)) == {"L1": "reference"}
    with pytest.raises(grids.GridError, match="'reported' names arm 'nope'"):
        _load(tmp_path, "levels: {L1: {set: {}}}\naxes: {r: {around: L1, arms: {a: {lr: 0.1}}, "
                        "reported: {nope: 50}}}\n")


def test_dry_run_lists_claims_and_ensembles():
    proc = run_cli("--grid", "full", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "claims (verdicts in REPORT.md):" in out and "rigid_beat_organic:" in out
    assert "measures architecture: pretrained_fusion − scratch_cnn (margin 10 pp)" in out
    assert "ensembles (formed by the report from stored logits):" in out
    assert "loss_arms: every arm of axis loss (4 arms)" in out and "soft vote of its 3 seeds" in out
    assert "seed_recipes" in out
    data = json.loads(run_cli("--grid", "smoke", "--dry-run", "--json").stdout)
    assert len(data["claims"]) == 3 and data["ensembles"]


# ----------------------------------------------------------------------------- a synthetic 5-seed run

CLASSES = ("cat", "dog", "ship", "truck")
PER_CLASS = 500
SPEC = {
    "seeds": 5,
    "base": {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "resolution": 32, "epochs": 1,
             "train_per_class": 20, "val_size": 40, "test_per_class": PER_CLASS, "lr": 1e-3},
    "levels": {"L1": {"set": {"head": "linear"}}, "L2": {"from": "L1", "set": {"head": "mlp"}}},
    "axes": {"lr": {"around": "L2", "key": "lr", "values": [1e-4, 1e-3, 1e-2], "reported": {1e-2: 93.54}}},
    "claims": {
        "l2_beats_l1": {"says": "L2 beats L1 by 5 pp", "source": "s 001", "better": "L2", "worse": "L1", "margin": 5},
        "steady_helps": {"says": "lr 0.01 helps", "source": "s 002", "axis": "lr", "better": 0.01, "worse": 0.001},
        "steady_by_5pp": {"says": "lr 0.01 helps by 5 pp", "source": "s 002", "axis": "lr", "better": 0.01,
                          "worse": 0.001, "margin": 5},
        "ref_beats_steady": {"says": "lr 0.001 beats 0.01", "source": "s 003", "axis": "lr", "better": 0.001,
                             "worse": 0.01},
        "wobbly_helps": {"says": "lr 0.0001 helps", "source": "s 003", "axis": "lr", "better": 0.0001,
                         "worse": 0.001},
        "rigid": {"says": "ships and trucks beat cats and dogs", "source": "s 004", "level": "L2",
                  "better": ["ship", "truck"], "worse": ["cat", "dog"]},
    },
}
STEADY = [40, 42, 38, 40, 44]
WOBBLY = {0: 80, 1: -60, 2: 100}
L1_BREAKS = [200, 190, 210, 200, 205]


def _correct_sets(seed: int, y: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = np.zeros(y.size, bool)
    for k in range(len(CLASSES)):
        idx = rng.permutation(np.flatnonzero(y == k))
        ref[idx[:400 if CLASSES[k] in ("ship", "truck") else 300]] = True

    def change(n: int) -> np.ndarray:
        out = ref.copy()
        pool = rng.permutation(np.flatnonzero(~ref if n > 0 else ref))[:abs(n)]
        out[pool] = n > 0
        return out

    sets = {"ref": ref, "steady": change(STEADY[seed]), "l1": change(-L1_BREAKS[seed])}
    if seed in WOBBLY:
        sets["wobbly"] = change(WOBBLY[seed])
    return sets


def build_verdict_run(root: Path, spec: dict = SPEC) -> Path:
    y = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    yv = np.repeat(np.arange(len(CLASSES)), 10)
    labels = {"val": yv, "test": y}
    plan = grids.expand("verdicts", spec)
    folder = RunFolder(root / "run")
    folder.path.mkdir(parents=True)
    folder.write_meta({"grid": "verdicts", "grid_spec": spec, "eval_axes": [], "plan": plan.to_json(),
                       "trial_ids": sorted(plan.trials()),
                       "data": {"source": "synthetic", **plan.data_settings(), "classes": list(CLASSES),
                                "sizes": {"train": 80, "val": 40, "test": y.size}},
                       "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T01:00:00+00:00"})
    folder.write_labels(labels, CLASSES)
    sets = {s: _correct_sets(s, y) for s in range(5)}
    status, metrics = {}, {}
    for p in plan.points:
        key = "l1" if p.level == "L1" else {1e-4: "wobbly", 1e-3: "ref", 1e-2: "steady"}[p.config.lr]
        if p.trial_id in status:
            continue
        if key not in sets[p.seed]:
            status[p.trial_id] = {"status": "pending", "error": None}
            continue
        vc = np.arange(yv.size) < 30 + p.seed  # validation: nothing here depends on it
        logits = {"test": {"none": make_logits(y, sets[p.seed][key], len(CLASSES))},
                  "val": {"none": make_logits(yv, vc, len(CLASSES))}}
        folder.write_logits(p.trial_id, logits)
        metrics[p.trial_id] = summary(folder.read_logits(p.trial_id), labels, CLASSES)
        status[p.trial_id] = {"status": "finished", "error": None}
    folder.write_trials([{**p.row(), **status[p.trial_id], **metrics.get(p.trial_id, {})} for p in plan.points])
    return folder.path


@pytest.fixture(scope="module")
def verdict_run(tmp_path_factory):
    path = build_verdict_run(tmp_path_factory.mktemp("verdicts"))
    write_report(path, figures=False, n_boot=2000)
    return path


def _csv(path: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(path / "tables" / f"{name}.csv", dtype={"arm": str, "claim": str})


@pytest.fixture(scope="module")
def exploratory_run(tmp_path_factory):
    """The same trials without claims: the ablation table is an exploratory family of its own."""
    path = build_verdict_run(tmp_path_factory.mktemp("exploratory"), {k: v for k, v in SPEC.items() if k != "claims"})
    write_report(path, figures=False, n_boot=2000)
    return path


def test_seed_aware_verdicts_in_the_ablation_table(exploratory_run):
    ab = _csv(exploratory_run, "ablation_lr").set_index("arm")
    wobbly, steady = ab.loc["0.0001"], ab.loc["0.01"]
    # wobbly: +4, -3, +5 pp; every seed's McNemar test and the seed-averaged image bootstrap reject 0 ...
    assert [wobbly[f"diff_seed{s}"] for s in range(3)] == pytest.approx([0.04, -0.03, 0.05])
    assert all(wobbly[f"mcnemar_seed{s}_p"] < 1e-10 for s in range(3)) and wobbly["boot_lo"] > 0
    # ... but the seeds disagree: no verdict, and the headline interval (seeds and images) covers 0
    assert wobbly["p_seed"] > 0.3 and wobbly["verdict"] == "inconclusive"
    assert wobbly["ci_lo"] < 0 < wobbly["ci_hi"]
    # steady: +2.0 .. +2.2 pp on 5 seeds: higher
    assert steady["diff"] == pytest.approx(0.0204) and steady["paired_seeds"] == 5
    assert steady["verdict"] == "higher" and steady["p_holm"] < 0.05 and steady["ci_lo"] > 0
    # Holm over the two arms, by hand from the table's own p_both: the smaller doubled, the larger at least that
    small, large = sorted([wobbly["p_both"], steady["p_both"]])
    assert steady["p_holm"] == pytest.approx(2 * small) and wobbly["p_holm"] == pytest.approx(max(2 * small, large))
    text = (exploratory_run / "REPORT.md").read_text()
    assert "Exploratory: Holm over the arms compared with the reference of this table (2)." in text
    md = (exploratory_run / "tables" / "ablation_lr.md").read_text()
    assert "| 0.01 " in md and "(n=5)" in md and "± 0.0 " not in md
    # a write-up's number for an arm ('reported') stands beside ours
    assert ab.loc["0.01", "reported_test_acc"] == pytest.approx(0.9354)
    assert math.isnan(ab.loc["0.001", "reported_test_acc"])
    assert "Write-up's test acc % (their single run)" in md and "| 93.54 " in md
    text = (exploratory_run / "REPORT.md").read_text()
    assert "Minimum detectable effect" in text and "at n = 5 seeds" in text


def test_a_comparison_that_is_a_claim_has_the_claims_verdict_everywhere(verdict_run):
    """One comparison, one verdict: the ablation rows that compare the same two configs as a claim show the
    claim's verdict and Holm-adjusted p (the claims' family), and are not counted in the table's own family."""
    ab = _csv(verdict_run, "ablation_lr").set_index("arm")
    cl = _csv(verdict_run, "claims").set_index("claim")
    wobbly, steady = ab.loc["0.0001"], ab.loc["0.01"]
    assert wobbly["verdict"] == "inconclusive (claim wobbly_helps)"
    assert wobbly["p_holm"] == pytest.approx(cl.loc["wobbly_helps", "p_holm"])
    # three claims measure 0.01 against 0.001 (two ways round, one with a margin): the row shows all three
    assert steady["verdict"] == ("confirmed (claim steady_helps); no effect ≥ 5 pp (claim steady_by_5pp); "
                                 "contradicted (claim ref_beats_steady)")
    text = (verdict_run / "REPORT.md").read_text()
    assert "Exploratory: Holm over the arms compared with the reference of this table (0); 4 row(s) make" in text


def test_claim_verdicts(verdict_run):
    cl = _csv(verdict_run, "claims").set_index("claim")
    assert cl.loc["l2_beats_l1", "diff"] == pytest.approx(np.mean(L1_BREAKS) / 2000)
    assert cl.loc["l2_beats_l1", "null_pp"] == 5  # beyond the margin: tested against it, not against 0
    assert cl.loc["rigid", "diff"] == pytest.approx(0.20)  # 80% - 60% recall, every seed
    # +2.0 pp (5 seeds), claimed to be 5 pp or more: not beyond the margin, and its 90% interval over seeds and
    # images lies inside +-5 pp: the claim is refuted as "no effect >= 5 pp" (two one-sided tests at 5%)
    by5 = cl.loc["steady_by_5pp"]
    assert by5["equivalence_pp"] == 5 and -0.05 < by5["ci90_lo"] < by5["ci90_hi"] < 0.05 and by5["p_tost"] < 0.05
    # wobbly (+4, -3, +5 pp): its 90% interval reaches beyond +-1 pp (the default bound): inconclusive
    assert cl.loc["wobbly_helps", "equivalence_pp"] == 1 and cl.loc["wobbly_helps", "p_tost"] > 0.05
    assert cl["verdict"].to_dict() == {
        "l2_beats_l1": "confirmed", "steady_helps": "confirmed",
        "steady_by_5pp": "no effect ≥ 5 pp", "ref_beats_steady": "contradicted",
        "wobbly_helps": "inconclusive", "rigid": "confirmed"}
    # Holm over the six claims, from their p_both
    p = cl["p_both"].to_numpy()
    order = np.argsort(p, kind="stable")
    expected, running = np.empty(6), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (6 - k) * p[i]))
        expected[i] = running
    assert cl["p_holm"].to_numpy() == pytest.approx(expected)
    text = (verdict_run / "REPORT.md").read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("## ")][0] == "## Claims"


def _tex_rows(path: Path) -> list[list[str]]:
    body = path.read_text().split("\\midrule")[1].split("\\bottomrule")[0]
    return [[c.strip() for c in ln.rstrip("\\ ").split(" & ")] for ln in body.strip().splitlines()]


def test_latex_tables_carry_the_csv_numbers(verdict_run):
    tex = (verdict_run / "tables" / "ablation_lr.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "±" not in tex
    header = tex.split("\\toprule")[1].split("\\\\")[0].split(" & ")
    col = [h.strip() for h in header].index("Test acc \\%")
    rows = {r[0]: r for r in _tex_rows(verdict_run / "tables" / "ablation_lr.tex")}
    ab = _csv(verdict_run, "ablation_lr").set_index("arm")
    cell = rows["0.01"][col]  # '72.0 $\pm$ 0.3'
    mean, half = (float(x) for x in re.findall(r"[\d.]+", cell))
    assert mean == pytest.approx(round(ab.loc["0.01", "test_acc_mean"] * 100, 1))
    assert half == pytest.approx(round(ab.loc["0.01", "test_acc_ci"] * 100, 1))
    assert rows["0.0001"][-1] == "inconclusive (claim wobbly\\_helps)"
    assert rows["0.01"][-1].startswith("confirmed (claim steady\\_helps)")
    lv = {r[0]: r for r in _tex_rows(verdict_run / "tables" / "levels.tex")}
    levels = _csv(verdict_run, "levels").set_index("level")
    assert lv["L1"][6].startswith(f"{levels.loc['L1', 'test_acc_mean'] * 100:.1f} ")  # Level, What, Best, Configs, Seeds, Val, Test
    for name in ("claims", "per_class", "trials", "ensembles"):
        assert (verdict_run / "tables" / f"{name}.tex").exists(), name


# ----------------------------------------------------------------------------- the committed examples


@pytest.mark.parametrize("example, seeds", [("examples/smoke", 1), ("tests/data/schema1/cpu", 2)])
def test_committed_examples_show_per_seed_values_and_no_verdicts(tmp_path, example, seeds):
    run = tmp_path / "run"
    shutil.copytree(REPO / example, run)
    assert main([str(run), "--no-figures", "--n-boot", "200"]) == 0
    text = (run / "REPORT.md").read_text()
    assert [ln for ln in text.splitlines() if ln.startswith("## ")][:2] == ["## Claims", "## Level comparison"]
    claims = _csv(run, "claims")
    # cpu's grid has no loss axis; an old run predates the claims of axes added since (read from today's grid)
    assert len(claims) and all(v == "needs ≥ 3 seeds" or v == "not in this grid (its axis 'loss' is not in this grid)"
                               or v.startswith("not measured: axis ") for v in claims["verdict"]), claims["verdict"]
    assert (claims["verdict"] == "needs ≥ 3 seeds").any()
    table_lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert not [ln for ln in table_lines if "±" in ln or re.search(r"\| (higher|lower|inconclusive) ", ln)]
    levels = _csv(run, "levels")
    assert levels["test_acc_ci"].isna().all()
    if seeds == 2:  # the per-seed values stand where an interval stood: '60.5 / 57.4'
        l1 = levels.set_index("level").loc["L1"]
        shown = f"{l1['test_acc_seed0'] * 100:.1f} / {l1['test_acc_seed1'] * 100:.1f}"
        assert shown in next(ln for ln in text.splitlines() if ln.startswith("| L1 "))
