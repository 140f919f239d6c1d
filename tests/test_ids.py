"""Trial ids survive upgrades: a new config key changes no id and re-runs nothing; a changed default changes the
ids of exactly the configs whose value changed; a weights file counts by content; a folder made with an older id
schema keeps its ids, runs what still computes the same and refuses, in one line, what does not. No Ray."""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from pipeline.config import TrialConfig
from pipeline.errors import ConfigError
from pipeline.ids import ID_BASELINE, ID_SCHEMA, identity, legacy_trial_id

from ablations.plan import grids
from ablations.store.ledger import Ledger
from ablations.store.results import RunFolder, RunFolderError
from ablations.store.runfolder import plan_in_folder, refuse_stale

from .conftest import GRIDS

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class WithNewKey(TrialConfig):
    """A later version of the config: one more key, with the baseline that reproduces what trials computed before."""

    ID_BASELINE: ClassVar = MappingProxyType({**ID_BASELINE, "ema_decay": 0.0})
    ema_decay: float = 0.0


@dataclass(frozen=True)
class WithNewDefault(TrialConfig):
    """A later version in which the default of ``epochs`` changed from 3 to 5 (its baseline stays 3)."""

    epochs: int = 5


def tiny_plan() -> grids.Plan:
    name, spec = grids.load_spec(str(GRIDS / "tiny.yaml"))
    return grids.expand(name, spec)


def as_class(plan: grids.Plan, cls) -> grids.Plan:
    return dataclasses.replace(plan, points=[dataclasses.replace(p, config=cls(**p.config.to_dict()))
                                             for p in plan.points])


def finished_folder(path: Path, plan: grids.Plan, schema: int | None, unfinished: tuple[str, ...] = ()) -> RunFolder:
    """A results folder holding ``plan`` with every trial finished but ``unfinished`` (trial ids)."""
    folder = RunFolder(path)
    folder.path.mkdir(parents=True)
    meta = {"grid": plan.grid, "trial_ids": sorted(plan.trials()), "data": {"fingerprint": None, "source": "s"}}
    if schema is not None:
        meta["id_schema"] = schema
    folder.write_meta(meta)
    folder.write_trials([{**p.row(), "status": "running" if p.trial_id in unfinished else "finished",
                          "val_acc": 0.5} for p in plan.points])
    for tid in plan.trials():
        if tid not in unfinished:
            folder.write_logits(tid, {s: {"none": np.zeros((2, 10), np.float32)} for s in ("val", "test")})
    return folder


def resume(folder: RunFolder, plan: grids.Plan) -> Ledger:
    """What ``python -m ablations.run`` does with an existing folder before it starts Ray."""
    plan, _ = plan_in_folder(folder, plan, None, extend=False)
    ledger = Ledger(folder, plan)
    refuse_stale(folder, ledger)
    return ledger


# ------------------------------------------------------------------ a new key, a changed default


def test_every_identity_key_has_a_frozen_baseline():
    assert set(identity(TrialConfig())) == set(ID_BASELINE)


def test_a_new_key_changes_no_id_and_reruns_nothing(tmp_path):
    plan = tiny_plan()
    newer = as_class(plan, WithNewKey)
    assert [p.trial_id for p in newer.points] == [p.trial_id for p in plan.points]
    assert [p.config_id for p in newer.points] == [p.config_id for p in plan.points]
    folder = finished_folder(tmp_path / "run", plan, ID_SCHEMA)
    assert resume(folder, newer).pending() == []
    # a value other than its baseline is another trial
    changed = WithNewKey(**{**plan.points[0].config.to_dict(), "ema_decay": 0.9})
    assert changed.trial_id not in plan.trials()


def test_a_changed_default_changes_exactly_the_ids_of_configs_whose_value_changed():
    variants = [{}, {"epochs": 3}, {"epochs": 7}, {"lr": 0.01}, {"lr": 0.01, "epochs": 3}, {"epochs": 5}]
    old = [TrialConfig(**v) for v in variants]
    new = [WithNewDefault(**v) for v in variants]
    for o, n in zip(old, new):
        assert (o.trial_id == n.trial_id) == (o.epochs == n.epochs), (o.epochs, n.epochs)
    # no new config takes the id of a different old one, and the new ones stay distinct from each other
    old_ids = {o.trial_id: o.to_dict() for o in old}
    for n in new:
        assert old_ids.get(n.trial_id, n.to_dict()) == n.to_dict()
    assert len({n.trial_id for n in new}) == len({tuple(sorted(n.to_dict().items())) for n in new})


def test_config_id_is_the_id_of_seed_zero():
    cfg = TrialConfig(seed=3, lr=0.01)
    assert cfg.config_id == cfg.replace(seed=0).trial_id != cfg.trial_id
    assert TrialConfig(seed=1, lr=0.01).config_id == cfg.config_id


def test_a_weights_file_counts_by_content(tmp_path):
    a, b, c = tmp_path / "a.pth", tmp_path / "copy_of_a.pth", tmp_path / "c.pth"
    a.write_bytes(b"weights A")
    shutil.copy(a, b)
    c.write_bytes(b"weights C")
    ids = {p.name: TrialConfig(backbone="resnet18", weights=str(p)).trial_id for p in (a, b, c)}
    assert ids["a.pth"] == ids["copy_of_a.pth"] != ids["c.pth"]
    assert TrialConfig(backbone="resnet18").trial_id not in ids.values()
    with pytest.raises(ConfigError, match="file not found"):
        TrialConfig(backbone="resnet18", weights=str(tmp_path / "missing.pth")).trial_id


# ------------------------------------------------------------------ folders of an older schema


def test_schema_1_ids_are_the_ones_the_committed_runs_hold():
    # examples/cpu and examples/smoke (then results/) as committed before id schemas (tests/data/schema1/README.md)
    for run in ("cpu", "smoke"):
        df = pd.read_parquet(REPO / "tests" / "data" / "schema1" / run / "trials.parquet")
        for row in df.to_dict("records"):
            cfg = TrialConfig.from_row(row)
            assert legacy_trial_id(cfg) == row["trial_id"] == cfg.trial_id_in(1)
            assert cfg.config_id_in(1) == row["config_id"]


def test_a_schema_1_folder_keeps_its_ids_and_runs_only_what_computes_the_same(tmp_path):
    plan = tiny_plan()  # L1: frozen, no augmentation (unchanged); L3: basic augmentation (now drawn as views)
    legacy = plan.under_schema(1)
    l1, l3 = (next(p.trial_id for p in legacy.points if p.level == lv) for lv in ("L1", "L3"))
    assert {l1, l3}.isdisjoint(plan.trials())  # the current ids are other ones

    done = finished_folder(tmp_path / "done", legacy, schema=None)  # run.json from before id schemas
    assert resume(done, plan).pending() == []

    l1_left = finished_folder(tmp_path / "l1", legacy, schema=None, unfinished=(l1,))
    assert resume(l1_left, plan).pending() == [l1]  # computes as it did: it runs, under its old id

    l3_left = finished_folder(tmp_path / "l3", legacy, schema=None, unfinished=(l3,))
    with pytest.raises(RunFolderError, match=r"older version \(trial-id schema 1\).*augmentation") as e:
        resume(l3_left, plan)
    assert "\n" not in str(e.value)


def test_a_folder_of_a_newer_version_is_refused(tmp_path):
    folder = finished_folder(tmp_path / "new", tiny_plan(), schema=ID_SCHEMA + 1)
    with pytest.raises(RunFolderError, match="newer version"):
        resume(folder, tiny_plan())
