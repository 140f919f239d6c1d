"""A run's folder as a command finds and leaves it: the plan it holds (under its id schema; another grid, plan or
data refused, ``--extend`` merged), ``run.json``'s contents, the first writes, and the copy under a remote
``--storage`` (``ablations.store.mirror``)."""
from __future__ import annotations

import sys

from ablations.plan import grids
from ablations.store import portable
from ablations.store.ledger import Ledger
from ablations.store.mirror import Mirror, is_remote, pull
from ablations.store.results import RunFolder, RunFolderError, environment, now


def plan_in_folder(folder: RunFolder, plan: grids.Plan, fingerprint: str | None,
                   extend: bool) -> tuple[grids.Plan, dict | None]:
    """The plan with the trial ids of the folder's id schema, checked against what the folder holds (a different
    grid, plan or data is refused; ``extend`` adds this plan's trials to the folder's), and the folder's meta."""
    schema = folder.id_schema()
    plan = plan.under_schema(schema)
    old_meta = folder.check_usable(plan.grid, fingerprint, set(plan.trials()), extend, plan.memberships())
    if old_meta is not None and (extend or set(old_meta.get("trial_ids", [])) != set(plan.trials())):
        plan = _merge_plans(old_meta, plan)
    return plan, old_meta


def refuse_stale(folder: RunFolder, state) -> None:
    """A folder made with an older id schema runs its unfinished trials with its own ids, unless what they
    compute changed since (``pipeline.ids.COMPUTE_CHANGES``): then the run is refused, so that one folder never
    mixes the two."""
    from pipeline.ids import stale_trials

    schema = folder.id_schema()
    stale = stale_trials({tid: state.trials[tid] for tid in state.pending()}, schema)
    if stale:
        raise RunFolderError(
            f"{folder.path} was made by an older version (trial-id schema {schema}) and {len(stale)} of its unfinished "
            f"trials would now compute differently ({next(iter(stale.values()))}); finish it with the version that "
            f"started it, or choose another --name")


def run_meta(plan: grids.Plan, folder: RunFolder, source: str, fingerprint: str, splits, storage: str,
             old_meta: dict | None, stored: dict | None = None) -> dict:
    """run.json. Paths are relative to the run folder (``ablations.store.portable``): the folder can move. ``stored``:
    what decoding did (``pipeline.data.Dataset.stored``)."""
    trials = plan.trials()
    return {
        "grid": plan.grid, "grid_spec": plan.spec, "argv": portable.command(sys.argv[1:], folder.path),
        "trial_ids": sorted(trials), "id_schema": plan.schema,
        "eval_axes": list(plan.eval_axes), "plan": plan.to_json(),
        "data": {"source": portable.relative_to(source, folder.path), "fingerprint": fingerprint,
                 **plan.data_settings(),
                 "sizes": {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)},
                 "classes": list(splits.classes), **({"stored": stored} if stored else {})},
        "started": (old_meta or {}).get("started", now()), "updated": now(), "finished": None,
        "storage": portable.relative_to(storage, folder.path), **environment(),
    }


def start_folder(folder: RunFolder, meta: dict, splits, ledger: Ledger, mirror: Mirror | None = None) -> None:
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_meta(meta)
    folder.write_labels({"val": splits.val_y, "test": splits.test_y}, splits.classes)
    ledger.open()
    if mirror:
        mirror.push()


def results_mirror(folder: RunFolder, storage: str | None) -> Mirror | None:
    """With a remote --storage, the run folder's copy under ``<storage>/<run name>`` (``ablations.store.mirror``): a run
    whose folder exists only there (a new head node after ``ray down``) is brought down first."""
    if not is_remote(storage):
        return None
    mirror = Mirror(folder.path, f"{storage.rstrip('/')}/{folder.path.name}")
    if not folder.run_json.exists() and mirror.exists():
        n = pull(mirror.uri, folder.path)
        print(f"results: {n} files of {mirror.uri} brought down into {folder.path}", flush=True)
    return mirror


def _merge_plans(old_meta: dict, plan: grids.Plan) -> grids.Plan:
    """The folder's plan with this command's points added: --extend (another grid's trials), or the same grid
    with other seeds (a later --seeds k, the seeds --until-decided added). Claims: this command's for its own
    grid, else those of the grid the folder holds."""
    from ablations.plan import claims as C

    claims = plan.claims
    if old_meta.get("grid") != plan.grid:
        try:
            claims = tuple(C.parse((old_meta.get("grid_spec") or {}).get("claims")))
        except C.ClaimError:
            claims = ()
    old = grids.Plan(grid=old_meta["grid"], spec=old_meta.get("grid_spec", {}),
                     points=grids.points_from_rows(old_meta.get("plan", []), plan.schema),
                     eval_axes=tuple(dict.fromkeys([*old_meta.get("eval_axes", []), *plan.eval_axes])), claims=claims)
    return old.with_points(plan.points)
