"""Ray Tune runs the pending trials: one Tune trial per trial config, in waves along ``init_from`` lineage; what
crosses the Tune boundary is a ``spec.TrialSpec``, and what the waves of a session share is a ``TuneRun``."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipeline.config import EXECUTION_KEYS

from ablations.driver.cluster import AutoscalerDemand, share
from ablations.driver.recorder import make_recorder, root_error
from ablations.driver.spec import TrialSpec
from ablations.driver.trackers import trial_name
from ablations.plan.resources import Resources

if TYPE_CHECKING:
    from ablations.session.events import Session


@dataclass(frozen=True)
class TuneRun:
    """What every wave of one session's trials shares: the session that hears their events, each trial's
    resources, the data in the object store, the storage for checkpoints, the retries of a failing trial, Ray's
    verbosity, the autoscaler's demand (None on a local instance) and ``trackers()``, which makes each wave's
    tracker callbacks (a Tuner pickles its callbacks; used ones hold open files)."""

    session: "Session"
    res: Resources
    data: dict
    storage: str
    retries: int
    verbose: bool = False
    demand: AutoscalerDemand | None = None
    trackers: Callable[[], list] = list


def run_in_lineage_order(run: TuneRun, pending: list[str]) -> None:
    """Run the pending trials in waves: a trial that starts from another's trained model (``init_from``) runs
    in a wave after its parent finished, and gets the parent's saved model (config and weights, read from the
    results folder, where they are always kept) through the object store. A trial whose parent failed fails with
    that reason; after an interrupted wave, the later ones stay pending."""
    session = run.session
    ledger = session.ledger
    parents = ledger.plan.parents()
    remaining = list(pending)
    while remaining:
        ready = [t for t in remaining if t not in parents or ledger.status(parents[t]) == "finished"]
        waiting = [t for t in remaining if t not in ready]
        if not ready:
            for t in waiting:
                if ledger.status(parents[t]) == "failed":
                    session.failed(t, f"its parent trial {parents[t]} (init_from) failed")
            return
        refs = _parents_in_object_store(session, ready, parents)
        ready = [t for t in ready if t not in parents or parents[t] in refs]
        if waiting:
            print(f"init_from: {len(ready)} trials now, {len(waiting)} after their parents", flush=True)
        run_tune(run, ready, inits={t: refs[parents[t]] for t in ready if t in parents})
        if any(ledger.status(t) not in ("finished", "failed") for t in ready):
            return  # Tune stopped early (Ctrl-C, SIGTERM): later waves stay pending for the next run
        remaining = waiting


def _parents_in_object_store(session: "Session", ready: list[str], parents: dict[str, str]) -> dict[str, Any]:
    """{parent trial id: an object ref to its saved model} for the ready children; a child whose parent's weights
    are not in the results folder fails with that reason."""
    import torch

    folder = session.ledger.folder
    refs: dict[str, Any] = {}
    for p in dict.fromkeys(parents[t] for t in ready if t in parents):
        if folder.model_path(p).exists():
            saved = torch.load(folder.model_path(p), map_location="cpu", weights_only=True)  # config, state
            refs[p] = share({"config": saved["config"], "state": saved["state"]})
    for t in [t for t in ready if t in parents and parents[t] not in refs]:
        session.failed(t, f"the weights of its parent trial {parents[t]} (init_from) are not in "
                          f"{folder.model_path(parents[t]).parent}; run the grid into a new --name")
    return refs


def run_tune(run: TuneRun, pending: list[str], inits: dict[str, Any] | None = None) -> None:
    """Tune runs the pending trials; the session hears every event first, the trackers' callbacks after it."""
    from ablations.driver.trainable import run_trial, run_trial_in_actor

    session, res = run.session, run.res
    specs = [TrialSpec.of(tid, session.ledger.trials[tid], res, run.storage, run.retries,
                          session.progress.labels[tid], (inits or {}).get(tid)) for tid in pending]
    for s in specs:
        session.ledger.executing(s.trial_id, {k: s.config[k] for k in EXECUTION_KEYS})
    quiet_ray(run.verbose)
    callbacks = [make_recorder(session, run.storage, run.demand), *run.trackers()]
    if res.runner == "actor":  # the trial actor holds the trial's resources; Tune restarts it on an error
        tuner = make_tuner(run_trial_in_actor, run.data, specs, res.concurrency, run.storage, callbacks, run.verbose,
                           resources=res.worker_bundle(), max_failures=run.retries)
    else:  # Ray Train restarts the worker group on an error
        tuner = make_tuner(run_trial, run.data, specs, res.concurrency, run.storage, callbacks, run.verbose)
    for r in tuner.fit():  # errors that bypassed the callback (e.g. the trainable could not start)
        tid = (r.config or {}).get("trial", {}).get("trial_id")
        if tid and r.error is not None and session.ledger.status(tid) not in ("finished", "failed"):
            session.failed(tid, root_error(str(r.error)) if str(r.error).strip() else type(r.error).__name__)


def quiet_ray(verbose: bool) -> None:
    """Without --verbose, Ray Tune prints neither its experiment box nor a traceback per failed trial: the
    driver prints one line per failure (the error column of trials.parquet holds the same), and Ray's full
    error file stays in the Tune folder. Set before ``Tuner.fit``."""
    if verbose:
        return
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the old reporter prints nothing at verbose=0
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # "Trials did not complete: [...]"


# Runner "train": the Tune trial actor (and the Train controller, which Ray Train places beside it) holds no CPU
# and lives on the head node: losing a worker node then loses only Train workers, which the controller restarts
# elsewhere from the trial's last checkpoint.
TRAINABLE_RESOURCES = {"CPU": 0, "memory": 1, "node:__internal_head__": 0.001}


def make_tuner(trainable, data: dict, trials: list[TrialSpec], concurrency: int, storage: str, callbacks: list,
               verbose: bool = False, reuse_actors: bool = True, resources: dict | None = None,
               max_failures: int = 0):
    """One Tune trial per entry of ``trials``. Each Tune trial actor holds ``resources`` (default: none, on the
    head node, for a trainable that only waits for its TorchTrainer, whose workers hold the CPUs and GPUs; runner
    "actor" gives it the trial's own bundle), and is reused from trial to trial (``reuse_actors``), which saves a
    process start and the torch import per trial. ``max_failures``: how often Tune restarts a failing trial. The
    data dict (with the object-store ref inside) goes through ``tune.with_parameters``, so it is stored once, not
    copied into every trial's config.

    Trials are named by their trial ids (Tune's folders, the trackers' runs). Of Tune's automatic loggers only
    the CSV and JSON ones are kept: TensorBoard events are written where ``--log tensorboard`` says
    (``driver.trackers``), and not at all without it."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [*callbacks, CSVLoggerCallback(), JsonLoggerCallback()]
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), resources or TRAINABLE_RESOURCES),
        param_space={"trial": tune.grid_search([t.to_tune() for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse_actors,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                                  callbacks=callbacks, verbose=1 if verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
