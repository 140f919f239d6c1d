"""``--until-decided`` in the driver and the report (ablations.session.rounds, ablations.report.adaptive).

Without Ray: the round loop on a real results folder (a real grid expansion, the driver's ledger, run.json as the
driver writes it) whose trials are synthetic: a reference, an arm that cannot learn (lr 1e-8: a large effect), an
arm that changes nothing the model computes (the hidden width of a linear head: no effect), a claim and a class
claim; each trial's logits have a known number of correct images. The rounds, a resume in the middle of a round,
the budget, a later ``--seeds k`` run that reuses the added trials, the dry run, and the report.

On a real local Ray cluster (marked ``ray``): the same design trained for real (``tests/grids/adaptive.yaml``),
with the driver killed by SIGKILL in the middle of a round.
"""
from __future__ import annotations

import io
import json
import signal
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import CIFAR10_CLASSES
from pipeline.errors import ConfigError
from pipeline.evaluate import summary

from ablations.plan import grids
from ablations.plan.compared import comparisons_from_plan
from ablations.report import write_report
from ablations.run import main
from ablations.session import rounds as A
from ablations.stats import sequential as Q
from ablations.store.ledger import Ledger
from ablations.store.results import RunFolder, RunFolderError
from ablations.store.runfolder import plan_in_folder

from .conftest import GRIDS, read_trials, run_cli, start_cli, wait_for
from .test_report import correct_set, make_logits

N_VAL = N_TEST = 200
PLANNED, CAP = 3, 6
SPEC = {
    "description": "adaptive seeds, synthetic",
    "seeds": PLANNED,
    "base": {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "head": "linear", "resolution": 32,
             "epochs": 1, "val_size": N_VAL},
    "levels": {"L1": {"set": {}}},
    "axes": {"probe": {"around": "L1", "arms": {"frozen": {"lr": 1.0e-8}, "same": {"hidden": 64}}}},
    "claims": {"learning_helps": {"says": "a head that learns beats one that cannot", "axis": "probe",
                                  "better": "reference", "worse": "frozen", "margin": 10, "source": "synthetic 001"},
               "ships_easier": {"says": "ships are easier than cats", "level": "L1", "better": ["ship"],
                                "worse": ["cat"], "source": "synthetic 002"}},
}
LABELS = {"val": np.arange(N_VAL) % 10, "test": np.arange(N_TEST) % 10}


def arm_of(cfg) -> str:
    return "frozen" if cfg.lr < 1e-6 else ("same" if cfg.hidden == 64 else "reference")


def accuracy(arm: str, split: str, seed: int) -> float:
    """The world: the reference and 'same' at 60% +- 2, 'frozen' at 10% +- 2 (other seed noise)."""
    z = np.random.default_rng([seed, split == "test", arm == "frozen"]).standard_normal()
    return (0.10 if arm == "frozen" else 0.60) + 0.02 * float(z)


class World:
    """Runs trials of the synthetic world into a results folder, as the driver's session records them."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.runs: Counter[str] = Counter()

    def run(self, ledger: Ledger, tids: list[str], stop_after: int | None = None) -> None:
        for i, tid in enumerate(tids):
            if stop_after is not None and i == stop_after:
                raise KeyboardInterrupt
            cfg = ledger.trials[tid]
            arm = arm_of(cfg)
            logits = {}
            for split in ("val", "test"):
                n = len(LABELS[split])
                k = round(accuracy(arm, split, cfg.seed) * n)
                correct = correct_set(n, k, 0, cfg.seed, salt=7 if split == "val" else 0)
                logits[split] = {"none": make_logits(LABELS[split], correct, 10)}
            self.folder.write_logits(tid, logits)
            ledger.started(tid)
            ledger.finished(tid, summary(self.folder.read_logits(tid), LABELS, CIFAR10_CLASSES),
                            [{"epoch": 1, "val_acc": 0.5}])
            self.runs[tid] += 1


def command_plan(seeds: int = PLANNED) -> grids.Plan:
    return grids.expand("synthetic", SPEC, seeds=seeds)


def write_meta(folder: RunFolder, plan: grids.Plan, rounds: A.Rounds | None = None) -> None:
    """run.json as the driver writes it (the parts the rounds, a resume and the report read)."""
    meta = {"grid": plan.grid, "grid_spec": SPEC, "trial_ids": sorted(plan.trials()), "id_schema": plan.schema,
            "eval_axes": list(plan.eval_axes), "plan": plan.to_json(),
            "data": {"fingerprint": None, "source": "synthetic", "sizes": {"val": N_VAL, "test": N_TEST},
                     "classes": list(CIFAR10_CLASSES)}, "started": "2026-01-01T00:00:00+00:00"}
    if rounds is not None:
        meta["adaptive"] = rounds.record()
    folder.write_meta(meta)


def session(folder: RunFolder, world: World, settings: A.Settings, stop_after: int | None = None,
            spent=lambda: 0.0, cost=lambda plan: {}) -> tuple[A.Rounds, list[str], Q.RoundPlan | None]:
    """One command of ``--until-decided`` as ``ablations.run`` makes it, with the world's trials: the folder's
    plan merged with the command's, pending trials first, then the rounds (``stop_after``: interrupted after that
    many trials of the last round)."""
    plan, _ = plan_in_folder(folder, command_plan(), None, extend=False)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_labels(LABELS, CIFAR10_CLASSES)
    ledger = Ledger(folder, plan)
    ledger.open()
    rounds = A.Rounds(ledger, settings, A.planned_seeds(command_plan()), comparisons_from_plan(plan),
                      cost_hours=cost, spent_hours=spent,
                      class_recall=A.recall_from_logits(folder.read_logits, LABELS["val"], 10),
                      classes=list(CIFAR10_CLASSES))
    write_meta(folder, plan, rounds)
    lines: list[str] = []
    result = None
    grown = []

    def grew(new_plan, new):
        grown.append(len(new))
        write_meta(folder, new_plan, rounds)

    def run_trials(tids):
        world.run(ledger, tids, stop_after if len(grown) == 2 else None)

    try:
        world.run(ledger, ledger.pending())
        result = rounds.run(run_trials, lines.append, grew)
    except KeyboardInterrupt:
        pass
    finally:
        ledger.close()
    write_meta(folder, ledger.plan, rounds)
    return rounds, lines, result


def seeds_by_arm(plan: grids.Plan) -> dict[str, list[int]]:
    out: dict[str, set[int]] = {}
    for p in plan.points:
        out.setdefault(arm_of(p.config), set()).add(p.seed)
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    """An uninterrupted --until-decided --max-seeds 6 run of the synthetic world."""
    folder = RunFolder(tmp_path_factory.mktemp("adaptive") / "run")
    world = World(folder)
    rounds, lines, result = session(folder, world, A.Settings(max_seeds=CAP))
    return folder, world, rounds, lines, result


# ----------------------------------------------------------------------------- rounds


def test_rounds_add_seeds_to_open_comparisons_until_decided_or_the_cap(adaptive_run):
    folder, world, rounds, lines, result = adaptive_run
    comps = {str(c.id) for c in rounds.comparisons}
    assert comps == {"probe/frozen", "probe/same", "claim/learning_helps", "claim/ships_easier"}
    # 4 comparisons: 8 one-sided hypotheses; the mixture cannot call anything at 4 seeds (2 * 17^1.5 = 140 < 160),
    # so the large effect is decided at 5 seeds, under the cap of 6; the null arm goes on to the cap
    assert seeds_by_arm(rounds.ledger.plan) == {"reference": [0, 1, 2, 3, 4, 5], "frozen": [0, 1, 2, 3, 4],
                                               "same": [0, 1, 2, 3, 4, 5]}
    assert result.stop_reason == "max_seeds" and set(map(str, result.decided)) == {"probe/frozen",
                                                                                  "claim/learning_helps"}
    assert set(map(str, result.at_cap)) == {"probe/same", "claim/ships_easier"}
    # one line per round: the round, the verdicts still open, the trials added
    assert lines == ["round 1: 4 of 4 verdicts open on validation; adding 3 trials (~0.00 h)",
                     "round 2: 4 of 4 verdicts open on validation; adding 3 trials (~0.00 h)",
                     "round 3: 2 of 4 verdicts open on validation; adding 2 trials (~0.00 h)",
                     "round 4: 2 of 4 verdicts open on validation (2 at the cap); stop: max_seeds"]
    # every trial ran once; added seeds are ordinary trials: the same config at seed k has the id it would have
    # had in a grid planned with more seeds
    assert set(world.runs.values()) == {1}
    assert set(world.runs) <= set(command_plan(CAP).trials())
    meta = folder.read_meta()
    assert set(meta["trial_ids"]) == set(world.runs) and len(meta["plan"]) == len(rounds.ledger.plan.points)
    assert meta["adaptive"] == {**A.Settings(max_seeds=CAP).meta(), "planned_seeds": PLANNED, "rounds": 3,
                                     "comparisons": 4, "stop_reason": "max_seeds",
                                     "decided_on_validation": [str(k) for k in result.decided],
                                     "open_on_validation": [str(k) for k in (*result.open, *result.at_cap,
                                                                             *result.deferred)]}
    # the tables hold every added trial, finished
    df = folder.read_trials().drop_duplicates("trial_id")
    assert len(df) == len(world.runs) and (df.status == "finished").all()


def test_the_rounds_decide_on_validation_only(adaptive_run):
    folder, world, rounds, lines, result = adaptive_run
    state = rounds.state()
    assert all(not key.startswith("test") for series in state.val.values() for key in map(str, series))
    # the planner's series are the validation accuracies of the trials, and a class claim's per-seed difference
    # of validation recalls (from the stored validation logits)
    df = folder.read_trials().drop_duplicates("trial_id")
    ref = next(c for c in rounds.comparisons if str(c.id) == "probe/frozen").worse
    want = {int(r.seed): r.val_acc for r in df[df.config_id == ref.config_id].itertuples()}
    assert state.val[ref] == pytest.approx(want)
    tid = df[(df.config_id == ref.config_id) & (df.seed == 0)].trial_id.iloc[0]
    pred = folder.read_logits(tid)["val"]["none"].argmax(1)
    y = LABELS["val"]
    ship, cat = CIFAR10_CLASSES.index("ship"), CIFAR10_CLASSES.index("cat")
    ships = next(c for c in rounds.comparisons if str(c.id) == "claim/ships_easier").better
    assert ships.class_claim == "ships_easier" and state.val[ships][0] == pytest.approx((pred[y == ship] == ship).mean()
                                                                        - (pred[y == cat] == cat).mean())
    # test accuracies play no part: scrambling them changes no plan
    plan_before = rounds.next()
    ledger = rounds.ledger
    for r in ledger.records.values():
        r.metrics = {**r.metrics, "test_acc": 1.0 - r.metrics["test_acc"]}
    assert rounds.next() == plan_before


def test_a_round_is_planned_only_when_all_its_trials_ended(tmp_path):
    folder = RunFolder(tmp_path / "run")
    world = World(folder)
    folder.path.mkdir()
    ledger = Ledger(folder, command_plan())
    ledger.open()
    world.run(ledger, ledger.pending()[:-1])
    rounds = A.Rounds(ledger, A.Settings(max_seeds=CAP), A.planned_seeds(command_plan()),
                      comparisons_from_plan(command_plan()))
    assert rounds.run(lambda tids: pytest.fail("must not run")) is None and rounds.last is None


def test_a_run_interrupted_mid_round_resumes_that_round_and_ends_as_an_uninterrupted_one(adaptive_run, tmp_path):
    _, whole_world, whole, _, whole_result = adaptive_run
    folder = RunFolder(tmp_path / "run")
    world = World(folder)
    settings = A.Settings(max_seeds=CAP)
    # interrupted after one of the 3 trials of round 2
    rounds, lines, result = session(folder, world, settings, stop_after=1)
    assert result is None and lines[-1].startswith("round 2:")
    meta = folder.read_meta()
    assert meta["adaptive"]["stop_reason"] is None and meta["adaptive"]["rounds"] == 2
    df = folder.read_trials().drop_duplicates("trial_id")
    assert sorted(df.status.value_counts().items()) == [("finished", 13), ("pending", 2)]
    finished_before = set(df[df.status == "finished"].trial_id)
    # the same command again: the folder's grown plan is accepted and merged, the round's pending trials run
    # first, then the rounds go on from round 3
    rounds, lines, result = session(folder, world, settings)
    assert lines[0].startswith("round 3:") and result.stop_reason == "max_seeds"
    assert set(world.runs.values()) == {1}  # nothing ran twice: finished trials were kept
    assert finished_before < set(world.runs)
    assert set(world.runs) == set(whole_world.runs)
    assert folder.read_meta()["adaptive"] == whole.record() and result == whole_result


def test_the_budget_stops_the_rounds(tmp_path):
    folder = RunFolder(tmp_path / "run")
    world = World(folder)
    added = lambda: sum(1 for t in world.runs if t not in command_plan().trials())  # noqa: E731
    # 1 h per config-seed, 2.5 h in all: round 1 fits the reference and one arm (the comparisons closest to a
    # decision first); round 2 fits nothing
    rounds, lines, result = session(folder, world, A.Settings(max_seeds=CAP, budget_hours=2.5),
                                    spent=lambda: float(added()), cost=lambda plan: {p.config_id: 1.0
                                                                                     for p in plan.points})
    assert result.stop_reason == "budget" and added() == 2
    assert "over the budget" in lines[-1] and lines[-1].endswith("stop: budget")
    assert rounds.record()["stop_reason"] == "budget"


def test_a_later_run_with_more_seeds_reuses_the_trials_the_rounds_added(adaptive_run):
    folder, world, rounds, _, _ = adaptive_run
    before = folder.read_meta()
    # --seeds 6 (no --until-decided): the plan differs only in seeds, so it is merged, not refused; only the
    # seed the rounds did not give the decided arm is left to run
    plan, old = plan_in_folder(folder, command_plan(CAP), None, extend=False)
    ledger = Ledger(folder, plan)
    missing = [p for p in plan.points if p.trial_id in ledger.pending()]
    assert old == before and {(arm_of(p.config), p.seed) for p in missing} == {("frozen", 5)}
    assert set(world.runs) <= set(plan.trials()) and not set(world.runs) & set(ledger.pending())
    # fewer seeds than the folder holds: the folder keeps all of them, nothing to run
    plan, _ = plan_in_folder(folder, command_plan(2), None, extend=False)
    assert set(plan.trials()) == set(world.runs) and Ledger(folder, plan).pending() == []
    # other configs are still another plan
    other = grids.expand("synthetic", {**SPEC, "axes": {"probe": {"around": "L1", "arms": {"frozen": {"lr": 1e-7}}}}})
    with pytest.raises(RunFolderError, match="different plan"):
        plan_in_folder(folder, other, None, extend=False)
    assert folder.read_meta() == before


def test_added_seeds_bring_their_init_from_parent():
    spec = {"seeds": 2, "base": SPEC["base"], "levels": {"L3": {"set": {}}, "L4": {"from": "L3", "init_from": "L3",
                                                                                     "set": {"epochs": 2}}}}
    plan = grids.expand("lineage", spec)
    child = next(p.config_id for p in plan.points if p.level == "L4")
    grown = plan.with_seeds({child: 2})
    new = [p for p in grown.points if p.seed == 2]
    assert sorted(p.level for p in new) == ["L3", "L4"]
    assert grown.parents()[next(p.trial_id for p in new if p.level == "L4")] == next(p.trial_id for p in new
                                                                                    if p.level == "L3")
    assert set(grown.trials()) == set(grids.expand("lineage", spec, seeds=3).trials())


def test_the_repeated_t_test_calls_large_effects_at_the_planned_seeds(tmp_path):
    folder = RunFolder(tmp_path / "run")
    world = World(folder)
    settings = A.Settings(max_seeds=CAP, test="repeated-t", first_look=PLANNED)
    rounds, lines, result = session(folder, world, settings)
    # exact repeated t-tests at 3..6 seeds: 4 comparisons need |t| >= 15.3 at 3 seeds, which +50 pp +- 3 gives
    assert settings.procedure.critical_t(3, Q.ALPHA / 8) == pytest.approx(15.3, abs=0.1)
    assert seeds_by_arm(rounds.ledger.plan) == {"reference": [0, 1, 2, 3, 4, 5], "frozen": [0, 1, 2],
                                               "same": [0, 1, 2, 3, 4, 5]}
    assert lines[0] == "round 1: 2 of 4 verdicts open on validation; adding 2 trials (~0.00 h)"
    assert folder.read_meta()["adaptive"]["procedure"] == "repeated-t"
    # a later run with more seeds than the horizon: the report uses the first 6 of them, and says so
    plan, _ = plan_in_folder(folder, command_plan(8), None, extend=False)
    ledger = Ledger(folder, plan)
    ledger.open()
    world.run(ledger, ledger.pending())
    ledger.close()
    write_meta(folder, plan, rounds)
    write_report(folder.path, figures=False, n_boot=500)
    axis = _csv(folder.path, "ablation_probe").set_index("arm")
    assert axis.loc["frozen", ["verdict", "seeds", "seeds_used", "status"]].tolist() == \
        ["lower", 8, 6, "decided at the cap"]
    assert axis.loc["same", ["seeds", "seeds_used", "status"]].tolist() == [8, 6, "open at the cap"]
    text = (folder.path / "REPORT.md").read_text()
    assert Q.RepeatedT(CAP, PLANNED).name in text and "beyond the repeated t-test's horizon (6)" in text


def test_a_run_keeps_its_test_and_the_repeated_t_tests_horizon():
    mixture, repeated = A.Settings(max_seeds=6), A.Settings(max_seeds=6, test="repeated-t")
    A.Settings(max_seeds=8).check(3, mixture.meta())  # the mixture has no horizon: its cap may change
    repeated.check(3, repeated.meta())
    with pytest.raises(ConfigError, match="--sequential-test mixture"):
        repeated.check(3, mixture.meta())
    with pytest.raises(ConfigError, match="looks at 3 to 6 seeds"):
        A.Settings(max_seeds=8, test="repeated-t").check(3, repeated.meta())
    assert A.Settings.from_meta(repeated.meta()) == repeated and A.Settings.from_meta(mixture.meta()) == mixture


# ----------------------------------------------------------------------------- the command line


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_dry_run_until_decided_on_a_finished_run_previews_its_first_round(tmp_path):
    """--dry-run --until-decided on a folder that holds a finished fixed run: the first round as the planner would
    make it from the run's validation numbers (the synthetic world: at 3 seeds nothing can be called yet, so every
    comparison is open and each compared config gets a 4th seed); nothing in the folder changes."""
    folder = RunFolder(tmp_path / "synthetic")
    plan, _ = plan_in_folder(folder, command_plan(), None, extend=False)
    folder.path.mkdir(parents=True)
    folder.write_labels(LABELS, CIFAR10_CLASSES)
    ledger = Ledger(folder, plan)
    ledger.open()
    World(folder).run(ledger, ledger.pending())
    ledger.close()
    write_meta(folder, plan)
    grid = tmp_path / "synthetic.json"
    grid.write_text(json.dumps(SPEC))
    before = {p.name: p.stat().st_mtime_ns for p in folder.path.rglob("*") if p.is_file()}
    code, out, _ = _main("--grid", str(grid), "--dry-run", "--until-decided", "--max-seeds", "6", "--num-cpus", "2",
                         "--results", str(tmp_path))
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("--until-decided on the run in"))
    assert "(mixture, cap 6)" in line and "round 1: 4 of 4 verdicts open on validation; adding 3 trials" in line
    assert "  configs given another seed: 3" in out and "decided on validation: none" in out
    assert {p.name: p.stat().st_mtime_ns for p in folder.path.rglob("*") if p.is_file()} == before


def test_dry_run_shows_the_planned_seeds_and_the_worst_case(tmp_path):
    grid = tmp_path / "synthetic.json"
    grid.write_text(json.dumps(SPEC))
    code, out, _ = _main("--grid", str(grid), "--dry-run", "--until-decided", "--max-seeds", "6", "--num-cpus", "2")
    assert code == 0
    assert "--until-decided: planned 3 seed(s) per config first" in out
    assert "(4 comparisons: 2 claims, 2 axis arms, over 3 configs), until decided or 6 seeds" in out
    assert "the earliest call is at 5 seeds" in out
    assert "--until-decided worst case: 18 trials (9 planned + 9 added, every compared config at 6 seeds)" in out
    worst = next(line for line in out.splitlines() if line.strip().startswith("worst case estimated time:"))
    plain = next(line for line in out.splitlines() if line.startswith("estimated time:"))
    minutes = [float(t.split()[0]) for t in (worst.split("time: ")[1], plain.split("time: ")[1])]
    assert minutes[0] == pytest.approx(2 * minutes[1], rel=0.01)  # every config at 6 seeds instead of 3
    code, out, _ = _main("--grid", str(grid), "--dry-run", "--json", "--until-decided", "--max-seeds", "6",
                         "--budget", "1.5")
    u = json.loads(out)["until_decided"]
    assert (u["worst_case_trials"], u["worst_case_added_trials"], u["budget_hours"]) == (18, 9, 1.5)
    assert sorted(u["comparisons"]) == ["claim/learning_helps", "claim/ships_easier", "probe/frozen", "probe/same"]


@pytest.mark.parametrize("argv,message", [
    (["--max-seeds", "6"], "--max-seeds only applies with --until-decided"),
    (["--budget", "2"], "--budget only applies with --until-decided"),
    (["--sequential-test", "repeated-t"], "--sequential-test only applies with --until-decided"),
    (["--until-decided", "--max-seeds", "3"], "--max-seeds 3 must be above the seeds the grid plans (3)"),
    (["--until-decided", "--budget", "0"], "--budget must be a positive number of hours"),
])
def test_bad_adaptive_flags_are_one_line_errors(tmp_path, argv, message):
    grid = tmp_path / "synthetic.json"
    grid.write_text(json.dumps(SPEC))
    code, _, err = _main("--grid", str(grid), "--dry-run", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), err


# ----------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def reports(adaptive_run, tmp_path_factory):
    """REPORT.md of the adaptive run, and of the same folder with run.json saying nothing of rounds."""
    import shutil

    folder = adaptive_run[0]
    write_report(folder.path, figures=False, n_boot=1000)
    fixed = tmp_path_factory.mktemp("fixed") / "run"
    shutil.copytree(folder.path, fixed)
    meta = RunFolder(fixed).read_meta()
    RunFolder(fixed).write_meta({k: v for k, v in meta.items() if k not in ("format", "adaptive")})
    write_report(fixed, figures=False, n_boot=1000)
    return folder.path, fixed


def _csv(path: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(path / "tables" / f"{name}.csv", dtype={"arm": str, "level": str})


def test_report_of_an_adaptive_run_gives_each_verdict_its_seeds_and_how_they_stopped(reports):
    path, _ = reports
    claims = _csv(path, "claims").set_index("claim")
    assert claims.loc["learning_helps", ["verdict", "status", "seeds_used"]].tolist() == \
        ["confirmed", "decided early", 5]
    assert claims.loc["ships_easier", "status"] == "open at the cap" and claims.loc["ships_easier", "seeds_used"] == 6
    assert claims.loc["ships_easier", "verdict"] == "inconclusive"
    axis = _csv(path, "ablation_probe").set_index("arm")
    assert axis.loc["frozen", ["verdict", "status", "seeds_used"]].tolist() == ["lower", "decided early", 5]
    assert axis.loc["same", ["verdict", "status", "seeds_used"]].tolist() == ["inconclusive", "open at the cap", 6]
    # one family: Holm over the 8 one-sided hypotheses of the 4 comparisons, not within each table
    # (the smallest p_both: max of the seeds' and the images'; within its own table Holm would multiply by 4)
    frozen = axis.loc["frozen"]
    assert frozen.p_holm == pytest.approx(8 * max(frozen.p_seed_anytime, frozen.p_image_one_sided))
    assert claims.loc["learning_helps", "p_holm"] == pytest.approx(frozen.p_holm)  # Holm's running maximum
    assert frozen.cs_lo < frozen["diff"] < frozen.cs_hi < 0
    # the reported verdicts are sequential.verdicts' on the test differences the table shows
    diffs = {s: axis.loc["frozen", f"diff_seed{s}"] for s in range(5)}
    assert axis.loc["frozen", "p_seed_anytime"] == pytest.approx(Q.p_values(list(diffs.values()))[1], rel=1e-6)
    levels = _csv(path, "levels").set_index("level")
    assert levels.loc["L1", "adaptive_verdicts"] == "2 decided early (5 seeds); 2 open at the cap (6 seeds)"
    text = (path / "REPORT.md").read_text()
    assert "### Adaptive seeds: the verdicts of the claims, ablation and level tables" in text
    assert Q.MixtureT().name in text and "Holm's step-down method over the two one-sided hypotheses" in text
    assert "cap 6 seeds (`--max-seeds`), budget none; 3 round(s); stopped: the comparisons still open had " \
           "reached the cap" in text
    assert "p Holm (whole study)" in text and "Seeds: how they stopped" in text
    assert "5: decided early" in text and "6: open at the cap" in text


def test_report_of_a_fixed_run_is_unchanged(reports):
    path, fixed = reports
    text = (fixed / "REPORT.md").read_text()
    assert "anytime" not in text and "Adaptive seeds" not in text and "95% CI, pp (seeds and test images)" in text
    assert "seeds_used" not in _csv(fixed, "ablation_probe") and "adaptive_verdicts" not in _csv(fixed, "levels")
    assert "Minimum detectable effect" in text


# ----------------------------------------------------------------------------- a real grid on Ray


@pytest.mark.ray
def test_until_decided_on_a_real_grid_killed_mid_round(ray_cluster, mini_archive, tmp_path):
    """A frozen pretrained Lite0 + linear head on cached features (about a second of training per trial), an arm
    that cannot learn (lr 1e-8) and one that changes nothing it computes (hidden units of a linear head): 3
    planned seeds, cap 5. Two comparisons: 4 one-sided hypotheses, so 4 seeds can decide (|t| >= 12.1)."""
    args = ["--grid", str(GRIDS / "adaptive.yaml"), "--until-decided", "--max-seeds", "5", "--data",
            str(mini_archive), "--results", str(tmp_path), "--address", ray_cluster.address, "--max-concurrent", "2",
            "--log", "none", "--no-report"]
    folder = tmp_path / "adaptive"
    proc = start_cli(*args)

    def mid_round():
        df = read_trials(folder)
        if df is None:
            return None
        added = df[df.seed >= 3].drop_duplicates("trial_id")
        return df if (added.status == "finished").any() and (added.status != "finished").any() else None

    wait_for(mid_round, 400, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the record as the killed driver left it: read before the kill it can lag by a trial or a new round (a trial
    # here takes about a second; seen: 11 of 12 finished when read, 12 of 14 when the same command continued)
    before = read_trials(folder).drop_duplicates("trial_id")
    finished_before = before[before.status == "finished"].set_index("trial_id")
    again = run_cli(*args)  # the same command continues the round it was in
    out = again.stdout
    assert again.returncode == 0, out[-3000:] + again.stderr[-2000:]
    assert f"{len(finished_before)} of {len(before)} trials already finished" in out
    df = pd.read_parquet(folder / "trials.parquet")
    trials = df.drop_duplicates("trial_id").set_index("trial_id")
    assert (trials.status == "finished").all()
    for tid, row in finished_before.iterrows():  # not run again
        assert trials.loc[tid, "t_fit_end"] == row.t_fit_end
    seeds = {arm: sorted(df[df.arm == arm].seed.unique()) for arm in ("reference", "frozen", "same")}
    # the arm that cannot learn is decided at 4 seeds, before the fixed design of --max-seeds 5 everywhere; the
    # arm without an effect gets seeds up to the cap, and the reference with it
    assert seeds == {"reference": [0, 1, 2, 3, 4], "frozen": [0, 1, 2, 3], "same": [0, 1, 2, 3, 4]}
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    assert rounds[-1] == "round 3: 1 of 2 verdicts open on validation (1 at the cap); stop: max_seeds", out[-3000:]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["adaptive"]["stop_reason"] == "max_seeds" and meta["adaptive"]["rounds"] == 2
    assert len(meta["trial_ids"]) == 14 and meta["finished"]
    write_report(folder, figures=False, n_boot=1000)
    axis = _csv(folder, "ablation_probe").set_index("arm")
    assert axis.loc["frozen", ["verdict", "status", "seeds_used"]].tolist() == ["lower", "decided early", 4]
    assert axis.loc["same", ["verdict", "status", "seeds_used"]].tolist() == ["inconclusive", "open at the cap", 5]
    # a later fixed run with --seeds 5 reuses every trial the rounds added and runs only the missing seed
    fixed = run_cli(*[a for a in args if a not in ("--until-decided", "--max-seeds", "5")], "--seeds", "5")
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-2000:]
    assert "14 of 15 trials already finished" in fixed.stdout
    after = pd.read_parquet(folder / "trials.parquet").drop_duplicates("trial_id").set_index("trial_id")
    assert (after.loc[trials.index, "t_fit_end"] == trials.t_fit_end).all()
    assert after[after.arm == "frozen"].seed.nunique() == 5
