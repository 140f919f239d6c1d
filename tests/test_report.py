"""The reporter on a hand-made results folder with synthetic logits of known accuracy.

The folder is written the way ``ablations.run`` writes it (``RunFolder`` writers, rows from a real grid
expansion, metrics from ``pipeline.evaluate.summary``), from a tiny ImageFolder of PNGs so that the Grad-CAM
figure can rebuild the test images. The run is partial: one trial failed with an error, one is pending.

Design (4 classes, 200 test images, 40 validation images, seeds 0-2):
  L1 reference              test .70 .72 .74    val .70 .70 .75
  L2 reference (lr=1e-3)    test .80 .81 .82    val .75 .775 .80   flip TTA fixes 8/10/12 more images
  L2 lr=0.0001              test .76 .78 (pending seed 2)   val .85 .875  <- best on validation
  L2 lr=0.01                test .90 .92 (failed seed 2)    val .60 .65   <- best on test, must NOT be chosen
Each trial's correct test images are a window perm[off : off + k] of one permutation per seed, so the
McNemar counts between two configs are known: lr=0.0001 (off 40, k 152) vs reference (off 0, k 160) on seed 0:
40 images only the reference gets right, 32 only the arm.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import data as D
from pipeline.evaluate import summary

from ablations.plan import grids
from ablations.report import main, write_report
from ablations.store.best import best_config_ids, finished
from ablations.store.results import RunFolder

CLASSES = ("cat", "dog", "ship", "truck")
N_TEST, N_VAL = 200, 40
T95 = {1: 12.7062047, 2: 4.3026527}

SPEC = {
    "description": "hand-made",
    "seeds": 3,
    "base": {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "resolution": 32, "epochs": 3,
             "train_per_class": 20, "val_size": N_VAL, "test_per_class": 50, "lr": 1e-3},
    "levels": {"L1": {"set": {"head": "linear"}},
               "L2": {"from": "L1", "set": {"head": "mlp", "augment": "basic"}}},
    "axes": {"lr": {"around": "L2", "key": "lr", "values": [1e-4, 1e-3, 1e-2]},
             "tta": {"around": "L2", "key": "tta", "values": ["none", "flip"], "eval": True}},
    "reported": {"L1": "99.9% (hand-made write-up)"},
    "ensembles": {"lr arms": {"axis": "lr"}},
    "claims": {"l2_beats_l1": {"says": "L2 beats L1", "better": "L2", "worse": "L1", "source": "hand-made 001"},
               "flip_helps": {"says": "flip TTA helps", "axis": "tta", "better": "flip", "worse": "none",
                              "source": "hand-made 002"},
               "low_lr_helps": {"says": "a low lr helps", "axis": "lr", "better": 1.0e-4, "worse": 1.0e-3,
                                "source": "hand-made 003"}},
}

# (level, arm of the lr axis or 'ref') -> per seed: (test correct, test offset, val correct, flip fixes)
DESIGN = {
    ("L1", "ref"): {0: (140, 0, 28, 0), 1: (144, 0, 28, 0), 2: (148, 0, 30, 0)},
    ("L2", "0.001"): {0: (160, 0, 30, 8), 1: (162, 0, 31, 10), 2: (164, 0, 32, 12)},
    ("L2", "0.0001"): {0: (152, 40, 34, 0), 1: (156, 40, 35, 0)},
    ("L2", "0.01"): {0: (180, 0, 24, 0), 1: (184, 0, 26, 0)},
}
FAILED = ("L2", "0.01", 2, "RuntimeError: CUDA out of memory | tried to allocate 2.00 GiB")
PENDING = ("L2", "0.0001", 2)


def _perm(seed: int, n: int, salt: int) -> np.ndarray:
    return np.random.default_rng(1000 * salt + seed).permutation(n)


def correct_set(n: int, k: int, off: int, seed: int, salt: int) -> np.ndarray:
    idx = _perm(seed, n, salt)[(off + np.arange(k)) % n]
    mask = np.zeros(n, bool)
    mask[idx] = True
    return mask


def make_logits(y: np.ndarray, correct: np.ndarray, n_classes: int, strong: float = 5.0) -> np.ndarray:
    """Strong logit on the label where correct, weak logit on the next class where wrong."""
    out = np.zeros((len(y), n_classes), np.float32)
    pred = np.where(correct, y, (y + 1) % n_classes)
    out[np.arange(len(y)), pred] = np.where(correct, strong, 2.0)
    return out


def _write_images(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 50)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] //= 3
                Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def build_run(root: Path) -> tuple[Path, dict]:
    """Write the hand-made results folder; returns its path and what the tests need to know."""
    src = _write_images(root / "images")
    ds = D.load(str(src))
    settings = SPEC["base"]
    splits = D.make_splits(ds, val_size=N_VAL, split_seed=0, train_per_class=settings["train_per_class"],
                           test_per_class=settings["test_per_class"])
    assert len(splits.test_y) == N_TEST and len(splits.val_y) == N_VAL
    labels = {"val": splits.val_y, "test": splits.test_y}
    plan = grids.expand("handmade", SPEC)
    folder = RunFolder(root / "run")
    folder.path.mkdir(parents=True)
    folder.write_meta({
        "grid": "handmade", "grid_spec": SPEC, "eval_axes": list(plan.eval_axes), "plan": plan.to_json(),
        "trial_ids": sorted(plan.trials()),
        "data": {"source": str(src), "fingerprint": ds.fingerprint, **plan.data_settings(),
                 "sizes": {"train": len(splits.train_y), "val": N_VAL, "test": N_TEST}, "classes": list(CLASSES)},
        "started": "2026-01-01T00:00:00+00:00", "updated": "2026-01-01T00:10:00+00:00", "finished": None})
    folder.write_labels(labels, splits.classes)

    def key_of(p) -> tuple[str, str]:
        if p.level == "L1":
            return ("L1", "ref")
        return ("L2", f"{p.config.lr:g}")

    status, metrics, epochs, ids = {}, {}, [], {}
    for p in plan.points:
        key = key_of(p)
        ids[(key, p.seed)] = p.trial_id
        tid = p.trial_id
        if tid in status:
            continue
        if (key[0], key[1], p.seed) == FAILED[:3]:
            status[tid] = {"status": "failed", "error": FAILED[3]}
            continue
        if p.seed not in DESIGN[key]:
            status[tid] = {"status": "pending", "error": None}
            continue
        k, off, kv, fixes = DESIGN[key][p.seed]
        salt = 1 + list(DESIGN).index(key)
        tc = correct_set(N_TEST, k, off, p.seed, 0)  # the same permutation for every config of a seed
        vc = correct_set(N_VAL, kv, 0, p.seed, salt)
        test_none = make_logits(splits.test_y, tc, len(CLASSES))
        logits = {"test": {"none": test_none}, "val": {"none": make_logits(splits.val_y, vc, len(CLASSES))}}
        if p.config.tta == "flip":
            flip = test_none.copy()
            fixed = _perm(p.seed, N_TEST, 0)[(off + k + np.arange(fixes)) % N_TEST]  # the next wrong images
            flip[fixed] = 0.0
            flip[fixed, splits.test_y[fixed]] = 6.0
            logits["test"]["flip"] = flip
            logits["val"]["flip"] = logits["val"]["none"].copy()
        folder.write_logits(tid, logits)
        m = summary(folder.read_logits(tid), labels, splits.classes)
        m.update(trainable_params=1000 * (1 + salt), train_seconds=10.0 * salt, trial_seconds=12.0 * salt)
        metrics[tid] = m
        status[tid] = {"status": "finished", "error": None}
        for e in range(1, 4):
            epochs.append({"trial_id": tid, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e,
                           "val_loss": 2.2 / e, "val_acc": 0.25 * e + 0.01 * p.seed, "lr": 1e-3, "seconds": 1.0})
        if p.seed == 0 and key in (("L1", "ref"), ("L2", "0.0001")):  # the levels' best configs (by val)
            import torch

            from pipeline.models import build_model, trained_state

            torch.manual_seed(0)
            model = build_model(p.config, len(CLASSES))
            folder.model_path(tid).parent.mkdir(exist_ok=True)
            torch.save({"config": p.config.to_dict(), "state": trained_state(model, p.config.train_stages)},
                       folder.model_path(tid))
    rows = [{**p.row(), **status[p.trial_id],
             **metrics.get(p.trial_id, {})} for p in plan.points]
    folder.write_trials(rows)
    folder.write_epochs(epochs)
    return folder.path, {"ids": ids, "labels": labels}


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """The hand-made run folder with its report written (the data cache kept inside the test's tmp dir)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("report")
    mp.setenv("ABLATIONS_CACHE", str(root / "cache"))
    try:
        path, info = build_run(root)
        info["report"] = write_report(path)
        yield path, info
    finally:
        mp.undo()


def _csv(path: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(path / "tables" / f"{name}.csv", dtype={"arm": str, "level": str, "class": str})


def _config_id(info, key, seed=0) -> str:
    df = pd.read_parquet(info["report"].parent / "trials.parquet")
    tid = info["ids"][(key, seed)]
    return df[df["trial_id"] == tid]["config_id"].iloc[0]


# ----------------------------------------------------------------------------- best config


def test_best_config_is_chosen_on_validation_not_test(report_run):
    path, info = report_run
    df = pd.read_parquet(path / "trials.parquet")
    best = best_config_ids(df)
    val_winner = _config_id(info, ("L2", "0.0001"))
    test_winner = _config_id(info, ("L2", "0.01"))
    assert best["L2"] == val_winner != test_winner
    assert best["L1"] == _config_id(info, ("L1", "ref"))
    # the test winner really is best on test, so the choice above was made on validation
    fin = finished(df).drop_duplicates("trial_id")
    by_test = fin.groupby("config_id")["test_acc"].mean()
    assert by_test.idxmax() == test_winner


def test_best_config_ids_handmade_frame():
    rows = []
    for cid, val, test, level, ref in (("a", 0.9, 0.5, "L1", False), ("b", 0.6, 0.99, "L1", True),
                                       ("c", 0.7, 0.7, "L2", True), ("d", 0.7, 0.9, "L2", False)):
        for s in (0, 1):
            rows.append({"trial_id": f"{cid}{s}", "config_id": cid, "level": level, "seed": s, "axis": "x",
                         "arm": cid, "is_reference": ref, "status": "finished", "val_acc": val, "test_acc": test})
    rows.append({"trial_id": "e0", "config_id": "e", "level": "L1", "seed": 0, "axis": "x", "arm": "e",
                 "is_reference": False, "status": "failed", "val_acc": None, "test_acc": None})
    rows.append({"trial_id": "f0", "config_id": "f", "level": "L1", "seed": 0, "axis": "x", "arm": "f",
                 "is_reference": False, "status": "running", "val_acc": 0.99, "test_acc": None})
    best = best_config_ids(pd.DataFrame(rows))
    assert best == {"L1": "a", "L2": "c"}  # 'f' is not finished; the L2 tie goes to the reference
    assert best_config_ids(pd.DataFrame()) == {}


# ----------------------------------------------------------------------------- the report


def test_report_markdown_sections(report_run):
    path, info = report_run
    text = info["report"].read_text()
    headings = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert headings[:2] == ["## Claims", "## Level comparison"]  # the claims come first, then the levels
    for h in ("## Method: how sure is each difference", "## Ablations", "## Test-time augmentation", "## Ensembles",
              "## Per-class results", "## Learning curves", "## Grad-CAM", "## Trials"):
        assert h in headings, h
    assert "### Axis lr (around L2)" in text
    assert "Run not finished" in text
    assert "class-balanced subset" in text and "(200 images)" in text
    assert "L2 lr=0.0001" in text  # the validation winner names the L2 row
    assert "99.9% (hand-made write-up)" in text  # the spec's 'reported' overrides the seeds' numbers
    assert "(n=1, no CI)" not in (path / "tables" / "levels.md").read_text()  # every level has >= 2 seeds
    # the rule is stated: both sources of noise in one test, Holm within each family, no verdict below 3 seeds
    assert "SE² = s²/n + SE_images²" in text and "Holm's step-down correction within its family" in text
    assert "needs ≥ 3 seeds" in text and "Minimum detectable effect" in text
    assert "± 0.0" not in text
    # failed and pending trials are listed, the error with its pipe escaped for markdown
    failed_id = info["ids"][(("L2", "0.01"), 2)]
    pending_id = info["ids"][(("L2", "0.0001"), 2)]
    trials_md = text.split("## Trials")[1]
    line = next(ln for ln in trials_md.splitlines() if failed_id in ln and ln.startswith("|"))
    note = line.split("[")[1].split("]")[0]  # the error is the row's numbered note, its pipe escaped
    assert "failed" in line and any(ln.startswith(f"{note}. ") and "CUDA out of memory | tried to allocate" in ln
                                    for ln in trials_md.splitlines())
    assert "pending" in next(ln for ln in trials_md.splitlines() if pending_id in ln)
    assert "10 finished, 1 failed, 1 pending" in text
    # the saved weights here are random, not the synthetic logits' model: the Grad-CAM check says so
    assert "the saved weights may not match the trial" in text
    # markdown tables have consistent column counts
    for block in text.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in rows}) == 1, rows[:3]


def test_level_csv_numbers(report_run):
    path, _ = report_run
    lv = _csv(path, "levels").set_index("level")
    assert lv.loc["L1", "best_config"] == "L1 reference"
    assert lv.loc["L1", "seeds"] == 3
    assert lv.loc["L1", "test_acc_mean"] == pytest.approx(0.72)
    assert lv.loc["L1", "test_acc_ci"] == pytest.approx(T95[2] * 0.02 / math.sqrt(3), rel=1e-6)
    assert lv.loc["L1", "val_acc_mean"] == pytest.approx((0.70 + 0.70 + 0.75) / 3)
    assert lv.loc["L2", "best_config"] == "L2 lr=0.0001"
    assert lv.loc["L2", "seeds"] == 2
    assert lv.loc["L2", "test_acc_mean"] == pytest.approx(0.77)
    # two seeds: no t-interval anywhere; the per-seed values are kept and shown instead
    assert math.isnan(lv.loc["L2", "test_acc_ci"])
    assert lv.loc["L2", "test_acc_seed0"] == pytest.approx(0.76)
    assert lv.loc["L2", "test_acc_seed1"] == pytest.approx(0.78)
    md = (path / "tables" / "levels.md").read_text()
    assert "| 76.0 / 78.0 " in next(ln for ln in md.splitlines() if ln.startswith("| L2 "))
    assert f"| {72.0:.1f} ± {T95[2] * 0.02 / math.sqrt(3) * 100:.1f} " in md  # L1: 3 seeds, a t-interval
    assert lv.loc["L2", "val_acc_mean"] == pytest.approx(0.8625)
    # like with like: L2's best evaluated flip TTA, L1's did not, so no level gets a TTA column (L2's flip gain
    # is in the TTA table)
    assert lv.loc["L2", "own_tta"] == "flip" and lv.loc["L1", "own_tta"] == "none"
    assert "test_acc_tta_mean" not in lv.columns and "TTA (every level)" not in md.splitlines()[0]
    assert lv.loc["L2", "configs_finished"] == 3 and lv.loc["L2", "configs_planned"] == 3
    assert lv.loc["L1", "configs_finished"] == 1  # the level table says how many configs each best was chosen from
    # L2's best is not its reference recipe: the recipe's own row stands beneath it
    ref = lv.loc["L2 (reference)"]
    assert ref["best_config"] == "L2 reference" and ref["role"] == "reference recipe"
    assert ref["test_acc_mean"] == pytest.approx(0.81) and "L1 (reference)" not in lv.index
    assert "| L2 (reference) " in md and re.search(r"\| Configs searched +\|", md)
    assert lv.loc["L1", "reported"] == "99.9% (hand-made write-up)"
    assert lv.loc["L2", "reported"] == grids.SEED_REPORTED["L2"]


def test_ablation_csv_numbers_and_significance(report_run):
    path, info = report_run
    ab = _csv(path, "ablation_lr").set_index("arm")
    assert list(ab.index) == ["0.0001", "0.001", "0.01"]
    assert bool(ab.loc["0.001", "is_reference"]) and not bool(ab.loc["0.01", "is_reference"])
    assert ab.loc["0.001", "test_acc_mean"] == pytest.approx(0.81)
    assert ab.loc["0.001", "test_acc_ci"] == pytest.approx(T95[2] * 0.01 / math.sqrt(3), rel=1e-6)
    # lr=0.0001 vs reference on the 2 seeds both finished: -0.04, -0.03
    low = ab.loc["0.0001"]
    assert low["seeds"] == 2 and low["paired_seeds"] == 2
    assert low["diff"] == pytest.approx(-0.035)
    assert (low["diff_seed0"], low["diff_seed1"]) == (pytest.approx(-0.04), pytest.approx(-0.03))
    assert math.isnan(low["diff_ci"]) and math.isnan(low["p_seed"])  # no t-interval or t-test from 2 seeds
    assert low["boot_diff"] == pytest.approx(-0.035)
    assert (low["mcnemar_seed0_n01"], low["mcnemar_seed0_n10"]) == (40, 32)
    from scipy.stats import binomtest

    assert low["mcnemar_seed0_p"] == pytest.approx(binomtest(32, 72, 0.5).pvalue)
    assert low["boot_lo"] < 0 < low["boot_hi"]
    # lr=0.01: nested correct sets, +0.10 and +0.11: every discordant image favours the arm, and still no
    # verdict: two seeds say nothing about seed-to-seed variation
    high = ab.loc["0.01"]
    assert high["diff"] == pytest.approx(0.105)
    assert (high["mcnemar_seed0_n01"], high["mcnemar_seed0_n10"]) == (0, 20)
    assert high["mcnemar_seed0_p"] == pytest.approx(2 * 0.5 ** 20)
    assert high["boot_lo"] > 0
    # lr=0.0001 against the reference is also the claim low_lr_helps: the row shows the claim's verdict
    assert list(ab["verdict"]) == ["needs ≥ 3 seeds (claim low_lr_helps)", "reference", "needs ≥ 3 seeds"]
    md = (path / "tables" / "ablation_lr.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| 0.01 "))
    assert "needs ≥ 3 seeds" in line and "+10.0 / +11.0 (n=2)" in line and "±" not in line


def test_tta_tables(report_run):
    path, _ = report_run
    tta = _csv(path, "tta")
    ref = tta[tta["config"] == "L2 reference"].iloc[0]
    assert ref["mode"] == "flip" and ref["seeds"] == 3
    assert ref["test_acc_none_mean"] == pytest.approx(0.81)
    assert ref["diff"] == pytest.approx(0.05)  # 8, 10, 12 of 200 images fixed
    assert ref["diff_ci"] == pytest.approx(T95[2] * 0.01 / math.sqrt(3), rel=1e-6)
    assert (ref["mcnemar_seed1_n01"], ref["mcnemar_seed1_n10"]) == (0, 10)
    # 3 seeds: t-test on +4, +5, +6 pp (t = 0.05 / (0.01 / sqrt 3) with 2 df) and the image bootstrap
    from scipy.stats import t as student_t

    assert ref["p_seed"] == pytest.approx(2 * student_t.sf(0.05 / (0.01 / math.sqrt(3)), 2), rel=1e-6)
    # seeds and images together: SE^2 = (0.01^2 / 3) + boot_se^2, the seeds' 2 df
    se = math.sqrt(0.01 ** 2 / 3 + ref["boot_se"] ** 2)
    assert ref["se_both"] == pytest.approx(se, rel=1e-6) and ref["df_both"] == 2
    assert ref["p_both"] == pytest.approx(2 * student_t.sf(0.05 / se, 2), rel=1e-6)
    assert ref["p_both"] >= ref["p_seed"]  # the images' noise only adds
    # flip on L2's reference is the claim flip_helps: the TTA table shows the claim's verdict and Holm p
    cl = _csv(path, "claims").set_index("claim")
    assert ref["verdict"] == "confirmed (claim flip_helps)"
    assert ref["p_holm"] == pytest.approx(cl.loc["flip_helps", "p_holm"])
    others = tta[tta["config"] != "L2 reference"]
    assert len(others) and (others["verdict"] == "needs ≥ 3 seeds").all()
    # the evaluation-only axis compares TTA modes of the same trials
    ax = _csv(path, "ablation_tta").set_index("arm")
    assert ax.loc["flip", "test_acc_mean"] == pytest.approx(0.86)
    assert ax.loc["flip", "diff"] == pytest.approx(0.05)
    assert bool(ax.loc["none", "is_reference"]) and ax.loc["flip", "verdict"] == "confirmed (claim flip_helps)"


def test_claims_table(report_run):
    path, _ = report_run
    cl = _csv(path, "claims").set_index("claim")
    assert list(cl.index) == ["l2_beats_l1", "flip_helps", "low_lr_helps"]
    # L2 reference - L1 reference on 3 seeds: 0.80 - 0.70, 0.81 - 0.72, 0.82 - 0.74
    assert cl.loc["l2_beats_l1", "diff"] == pytest.approx(0.09)
    assert cl.loc["flip_helps", "diff"] == pytest.approx(0.05)
    assert cl.loc["low_lr_helps", "verdict"] == "needs ≥ 3 seeds"  # its arm finished 2 seeds
    # Holm over the two measured claims, by hand: the smaller p_both doubled, the larger kept (at least that)
    p_a, p_b = cl.loc["l2_beats_l1", "p_both"], cl.loc["flip_helps", "p_both"]
    small, large = sorted([p_a, p_b])
    holm_by_hand = {small: 2 * small, large: max(2 * small, large)}
    for cid, p in (("l2_beats_l1", p_a), ("flip_helps", p_b)):
        assert cl.loc[cid, "p_holm"] == pytest.approx(holm_by_hand[p])
        assert cl.loc[cid, "p_holm"] < 0.05 and cl.loc[cid, "verdict"] == "confirmed"
    text = (path / "REPORT.md").read_text()
    assert text.index("## Claims") < text.index("## Level comparison")
    assert "hand-made 002" in text.split("## Level comparison")[0]


def test_ensemble_table(report_run):
    path, _ = report_run
    ens = _csv(path, "ensembles")
    lr = ens[ens["ensemble"] == "lr arms"]
    assert set(lr["combination"]) == {"soft vote", "val-weighted soft vote"}
    assert (lr["seeds"] == 2).all()
    assert (lr["best_member"] == "L2 lr=0.0001").all()  # best member on validation, not on test
    assert lr["best_member_test_mean"].iloc[0] == pytest.approx(0.77)
    for _, r in lr.iterrows():
        assert 0 <= r["test_acc_mean"] <= 1
        assert r["diff"] == pytest.approx(r["test_acc_mean"] - r["best_member_test_mean"])
        assert r["boot_diff"] == pytest.approx(r["diff"])
    seeds = ens[ens["ensemble"].str.startswith("seeds of")]
    assert set(seeds["ensemble"]) == {"seeds of L1 reference", "seeds of L2 lr=0.0001"}
    assert "best of each level" not in set(ens["ensemble"])  # the spec declares its own ensembles


def test_per_class_and_confusion_pairs(report_run):
    path, _ = report_run
    pc = _csv(path, "per_class")
    l1 = pc[pc["level"] == "L1"].set_index("class")
    assert list(l1.index) == list(CLASSES)
    assert (l1["support"] == 50 * 3).all() and (l1["seeds_pooled"] == 3).all()
    # pooled recall, weighted by support, is the pooled accuracy: the mean of .70, .72, .74
    assert float((l1["recall"] * l1["support"]).sum() / l1["support"].sum()) == pytest.approx(0.72)
    f1 = 2 * l1["precision"] * l1["recall"] / (l1["precision"] + l1["recall"])
    assert np.allclose(f1, l1["f1"])
    pairs = _csv(path, "confusion_pairs")
    assert len(pairs) and (pairs["confusions"] == pairs["a_as_b"] + pairs["b_as_a"]).all()
    for _, r in pairs.iterrows():  # wrong predictions always go to the next class
        i, j = CLASSES.index(r["class_a"]), CLASSES.index(r["class_b"])
        assert (j - i) % len(CLASSES) in (1, len(CLASSES) - 1)


def test_trials_csv(report_run):
    path, info = report_run
    t = _csv(path, "trials")
    assert len(t) == t["trial_id"].nunique() == 12
    assert t["status"].value_counts().to_dict() == {"finished": 10, "failed": 1, "pending": 1}
    failed = t[t["status"] == "failed"].iloc[0]
    assert failed["error"] == FAILED[3]
    ref = t[t["trial_id"] == info["ids"][(("L2", "0.001"), 0)]].iloc[0]
    assert ref["plan"] == "L2/reference; L2/lr=0.001; L2/tta=none; L2/tta=flip"


def test_figures_exist(report_run):
    path, info = report_run
    text = info["report"].read_text()
    for name in ("learning_curves", "confusion", "per_class_f1", "axis_lr", "gradcam_L1", "gradcam_L2"):
        f = path / "figures" / f"{name}.png"
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"(figures/{name}.png)" in text
    assert not (path / "figures" / "axis_tta.png").exists()  # evaluation axis: in the TTA table instead


# ----------------------------------------------------------------------------- missing pieces


def test_report_says_what_is_missing(report_run, tmp_path):
    src, info = report_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    lost = info["ids"][(("L2", "0.01"), 1)]
    (run / "logits" / f"{lost}.npz").unlink()
    (run / "models" / f"{info['ids'][(('L2', '0.0001'), 0)]}.pt").unlink()  # L2's best loses its weights
    (run / "tables" / "stale.csv").write_text("x\n1\n")
    text = write_report(run, n_boot=500).read_text()
    assert "## Notes: what is missing" in text
    assert lost in text and "stored logits missing" in text
    assert "Grad-CAM for L2 lr=0.0001 skipped: no saved weights" in text
    assert "(figures/gradcam_L1.png)" in text and not (run / "figures" / "gradcam_L2.png").exists()
    assert not (run / "tables" / "stale.csv").exists()
    ab = _csv(run, "ablation_lr").set_index("arm")
    assert ab.loc["0.01", "test_acc_mean"] == pytest.approx(0.91)  # from trials.parquet
    # the paired tests use the one seed that still has logits on both sides: 0.90 - 0.80
    assert ab.loc["0.01", "paired_seeds"] == 2 and ab.loc["0.01", "boot_seeds"] == 1
    assert ab.loc["0.01", "boot_diff"] == pytest.approx(0.10)
    assert ab.loc["0.01", "diff"] == pytest.approx(0.105)  # the seed CI still uses both seeds' accuracies
    assert "mcnemar_seed1_p" not in ab.columns or math.isnan(ab.loc["0.01", "mcnemar_seed1_p"])
    # without labels: no paired tests, per-class tables or ensembles, but the level table still stands
    (run / "labels.npz").unlink()
    text = write_report(run, figures=False).read_text()
    assert "labels.npz missing" in text
    assert _csv(run, "levels").set_index("level").loc["L1", "test_acc_mean"] == pytest.approx(0.72)


def test_report_on_empty_and_broken_folders(tmp_path, capsys):
    folder = RunFolder(tmp_path / "empty")
    folder.path.mkdir()
    folder.write_meta({"grid": "g", "grid_spec": {}, "data": {}, "started": "now", "finished": None})
    assert main([str(folder.path)]) == 0
    text = (folder.path / "REPORT.md").read_text()
    assert "No trials recorded yet" in text and "Run not finished" in text
    assert main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "notarun").mkdir()
    assert main([str(tmp_path / "notarun")]) == 2
    assert "unreadable run.json" in capsys.readouterr().err


def test_report_all_pending(report_run, tmp_path):
    """A run that has just started: every trial pending, no logits, no epochs."""
    src, _ = report_run
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(src / "run.json", run / "run.json")
    shutil.copy(src / "labels.npz", run / "labels.npz")
    df = pd.read_parquet(src / "trials.parquet")
    keep = [c for c in df.columns if not c.startswith(("val_acc", "test_acc", "macro_f1")) and
            c not in ("trainable_params", "train_seconds", "trial_seconds")]
    df = df[keep].assign(status="pending", error=None)
    df.to_parquet(run / "trials.parquet", index=False)
    text = write_report(run).read_text()
    assert "no finished trial yet (3 pending)" in text  # L1's three trials
    assert "no finished trial yet (9 pending)" in text
    assert "Trials: 12 pending." in text
    assert "could not be computed" not in text


def test_the_level_table_compares_every_level_with_the_same_tta_views():
    """The widest TTA mode every level's best config evaluated (modes nest: none < flip < flip_crops); a level
    with no finished config does not narrow it."""
    from ablations.report.tables import _common_tta

    rows = [{"config_id": "a", "own_tta": "flip"}, {"config_id": "b", "own_tta": "flip_crops"}, {"level": "L9"}]
    assert _common_tta(None, rows) == "flip"
    assert _common_tta(None, [*rows, {"config_id": "c", "own_tta": "none"}]) == "none"
    assert _common_tta(None, []) == "none"


def test_report_tables_paste_with_at_most_nine_short_columns_and_prose_as_notes(report_run):
    """REPORT.md's Markdown tables keep the numbers in at most 9 columns; prose (what a level is, a claim's source,
    an arm's changes) becomes numbered notes under the table; the CSV and LaTeX keep every column."""
    from ablations.report.tablespec import MD_MAX_COLUMNS

    path, _ = report_run
    text = (path / "REPORT.md").read_text()
    widths = {ln.count("|") - 1 for ln in text.splitlines() if ln.startswith("| ")}
    assert widths and max(widths) <= MD_MAX_COLUMNS, widths
    claims_md = (path / "tables" / "claims.md").read_text()
    assert "| l2_beats_l1 [1] " in claims_md and "1. Says: L2 beats L1; Source: hand-made 001" in claims_md
    tex = (path / "tables" / "claims.tex").read_text()
    assert "Source" in tex and "p seeds (t)" in tex  # the LaTeX keeps the prose and every p-value
    levels_tex = (path / "tables" / "levels.tex").read_text()
    assert "What" in levels_tex and "Configs searched" in levels_tex and "Trainable params" in levels_tex


def test_grad_cam_finds_the_data_of_a_folder_that_moved(monkeypatch, tmp_path):
    """A committed or rsync'd folder's relative data path points nowhere; the report then uses the data
    ``--data auto`` finds here, but only when its content is the run's (same fingerprint)."""
    from pipeline import data as D

    from ablations.report.figures import Skip, _data_here

    from .conftest import SUBSET

    monkeypatch.setenv("ABLATIONS_DATA", str(SUBSET))
    moved = str(tmp_path / "../../elsewhere/cifar.tar.gz")
    assert _data_here(moved, D.fingerprint(str(SUBSET))) == str(SUBSET)
    assert _data_here(str(SUBSET), "anything") == str(SUBSET)  # where it was recorded, when it is there
    with pytest.raises(Skip, match="is not on this machine"):
        _data_here(moved, "0123456789abcdef")  # other data here: never silently used
    with pytest.raises(Skip, match="is not on this machine"):
        _data_here(moved, None)


def test_a_folder_of_trials_from_two_code_versions_says_so_in_one_line(report_run, tmp_path):
    """Trials made by different code (a run resumed or extended after a code change) are told apart by their rows'
    code_version; the report's header says so in one line, and says nothing when they share one."""
    import shutil

    from ablations.report.writer import code_versions_line

    path, _ = report_run
    run = tmp_path / "mixed"
    shutil.copytree(path, run)
    df = pd.read_parquet(run / "trials.parquet")
    tids = sorted(set(df.loc[df.status == "finished", "trial_id"]))
    df["code_version"] = ["git:aaaaaaaaaaaa" if t == tids[0] else "git:bbbbbbbbbbbb+dirty" for t in df["trial_id"]]
    df.to_parquet(run / "trials.parquet")
    write_report(run, figures=False, n_boot=200)
    lines = [ln for ln in (run / "REPORT.md").read_text().splitlines() if "code versions" in ln]
    assert lines == [f"**The finished trials come from 2 code versions**: git:bbbbbbbbbbbb+dirty ({len(tids) - 1} "
                     f"trials), git:aaaaaaaaaaaa (1 trial)."]
    df["code_version"] = "git:aaaaaaaaaaaa"
    assert code_versions_line(df[df.status == "finished"]) == ""


def test_code_version_of_a_copy_outside_a_checkout_is_the_package_version(tmp_path):
    """Run from a copy that is not this project's git checkout (as an installed wheel is), the code version is
    the installed package's."""
    import subprocess
    import sys

    from .conftest import REPO

    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    shutil.copy(REPO / "pipeline" / "provenance.py", tmp_path / "pipeline" / "provenance.py")
    out = subprocess.run([sys.executable, "-c", "from pipeline.provenance import code_version; print(code_version())"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    import importlib.metadata as md

    assert out.stdout.strip() == f"package:{md.version('cifar-ablations')}", out.stderr
