"""``python -m ablations.run``: expand a grid, run every trial on Ray, write the results folder and report.

Top to bottom:
  1. grid spec -> plan of trial configs (``ablations.grids``)            [--dry-run stops here]
  2. the run folder is checked (a different grid or data is refused; the same plan resumes)
  3. data: decoded once (disk cache), split, ``ray.put`` once
  4. resources: what the cluster has vs. what a trial asks for (GPUs asked for but absent fail at once)
  5. Tune runs one trial per pending config; each trial is a TorchTrainer (``ablations.trainable``)
  6. every event is one line in the run's ledger (``ablations.ledger``), each finished trial's logits and weights
     are copied into the run folder (``ablations.collector``), and a status line says how long remains
     (``ablations.progress``); trackers log what Tune reports (``ablations.trackers``)
  7. the ledger is compacted into trials.parquet and epochs.parquet, and the report is written (``ablations.report``)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.config import EXECUTION_KEYS
from pipeline.errors import ConfigError, UserError, one_line

from . import adaptive as A
from . import grids, portable, preflight
from . import sequential as Q
from .cluster import (DEFAULT_CLUSTER_WAIT_S, AutoscalerDemand, Resources, cluster_address, connect, fmt_resources,
                      head_memory_mib, local_resources, max_cluster_resources, plan_resources)
from .collector import Collector
from .config import parse_overrides
from .estimate import Target, plan_seconds, trial_seconds
from .speeds import DEFAULT_GPU, GPU, GPU_NAMES

GpuChoice = tuple[float, "str | None"]  # (--gpu-speed, --gpu-model) for the estimate
from .timing import where_the_time_went
from .ledger import Ledger
from .mirror import Mirror, is_remote, pull
from .progress import Eta, Progress, duration, estimate_comparison, labels, quiet_ray
from .results import RunFolder, RunFolderError, environment, now
from .session import Session, make_recorder, root_error
from .trackers import DEFAULT_LOG, TRACKERS, Trackers, parse_log, trial_name

EXIT_BAD_INPUT = 2
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablations.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--grid", default="smoke", help=f"built-in grid ({', '.join(grids.builtin_names())}) or a .yaml/.json grid file")
    g.add_argument("--levels", help="comma-separated levels to keep, e.g. L1,L3")
    g.add_argument("--axes", help="comma-separated axes to keep (level references always run)")
    g.add_argument("--seeds", type=int, help="seeds per config (default: the grid's)")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a config key for every trial (repeatable); axis arms keep their own values")
    g.add_argument("--data", default="auto", help="ImageFolder dir or .tar.gz, 'torchvision' (download), or 'auto'")
    g.add_argument("--dry-run", action="store_true", help="print the plan, resources and a time estimate; start nothing")
    g.add_argument("--json", action="store_true", help="with --dry-run: print the trial configs as JSON")
    g.add_argument("--gpu-model", choices=tuple(GPU),
                   help="the GPU whose measured speeds the estimate uses (default: this machine's GPU if it has a "
                        f"table, else {DEFAULT_GPU})")
    g.add_argument("--gpu-speed", type=float, default=1.0, metavar="X",
                   help="the GPU's speed relative to --gpu-model's table, for a GPU without a table")
    a = p.add_argument_group("adaptive seeds")
    a.add_argument("--until-decided", action="store_true",
                   help="after the grid's seeds, add seeds in rounds: each round gives one more seed to both configs "
                        "of every claim and axis comparison still open on validation accuracy, until all are "
                        "decided, a config reaches --max-seeds or the budget is spent (verdicts: an anytime-valid "
                        "t-test, Holm over all comparisons)")
    a.add_argument("--max-seeds", type=int, metavar="N",
                   help=f"with --until-decided: the most seeds a config gets (default {A.DEFAULT_MAX_SEEDS})")
    a.add_argument("--budget", type=float, metavar="HOURS",
                   help="with --until-decided: wall hours the whole run may take (every session); a round whose "
                        "estimated time does not fit is not started (default: no limit)")
    a.add_argument("--sequential-test", choices=tuple(A.TESTS),
                   help="with --until-decided: mixture (default): an anytime-valid t-test with no horizon, valid at "
                        "any number of seeds, so a later run may add more; repeated-t: exact repeated t-tests from "
                        "the planned seeds to --max-seeds, more power (calls from 3 seeds on), no guarantee beyond "
                        "--max-seeds")
    o = p.add_argument_group("where results go")
    o.add_argument("--results", default="results", help="parent folder of run folders")
    o.add_argument("--name", help="run folder name (default: the grid name); the same name again resumes")
    o.add_argument("--resume", action="store_true", help="require an existing run folder and continue it")
    o.add_argument("--extend", action="store_true", help="allow adding another grid's trials to an existing run folder")
    o.add_argument("--storage", help="Ray storage for checkpoints: a shared path or URI (s3://...) on clusters "
                                     "(default: <run folder>/ray)")
    o.add_argument("--keep-models", choices=("best", "all", "none"), default="best",
                   help="which trained weights to keep in models/ (best: each level's best config, chosen when "
                        "the run is complete)")
    o.add_argument("--no-report", action="store_true", help="do not write REPORT.md at the end")
    o.add_argument("--log", default=DEFAULT_LOG, metavar="TRACKERS",
                   help=f"experiment trackers, comma-separated: {', '.join(TRACKERS)}, or none "
                        f"(files under <run folder>/logs; MLflow: $MLFLOW_TRACKING_URI if set; W&B: $WANDB_PROJECT, "
                        f"$WANDB_MODE)")
    r = p.add_argument_group("resources")
    r.add_argument("--address", help="address of an existing Ray cluster (default: $RAY_ADDRESS, as set for a `ray job "
                                     "submit` driver, else a new instance on this machine)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPUs when the cluster has them; cpu: run everything on CPUs")
    r.add_argument("--gpus-per-trial", type=float, help="GPU share per trial worker, e.g. 0.25 packs 4 trials per GPU")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial worker (default: 1, or 2 on CPU machines with 8+ cores)")
    r.add_argument("--workers", type=int, default=1, help="Ray Train workers (data-parallel processes) per trial")
    r.add_argument("--trial-runner", choices=("auto", "actor", "train"), default="auto",
                   help="actor: a one-worker trial runs in its Tune trial actor, reused from trial to trial (torch "
                        "imported and the CUDA context made once per actor); train: a Ray Train run per trial (a "
                        "controller and worker processes); auto: actor for one-worker trials on CPUs, else train")
    r.add_argument("--max-concurrent", type=int, help="cap on trials running at once (default: what resources allow)")
    r.add_argument("--retries", type=int, default=2, help="restarts of a failing trial from its last epoch checkpoint")
    r.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (default: all)")
    r.add_argument("--num-gpus", type=int, help="GPUs for a local Ray instance (default: all torch sees); "
                                                "with --dry-run, the GPUs to plan for")
    r.add_argument("--gpu-resource", default="GPU",
                   help="Ray resource that counts accelerators; a custom name only counts slots (Ray assigns no GPU "
                        "for it): trials then use their node's GPU if it has one, or the CPU (--device decides)")
    r.add_argument("--wait-for-resources", type=float, metavar="SECONDS",
                   help=f"with --address: how long trials may wait for a node that can run them to join (an "
                        f"autoscaling cluster adds nodes for waiting trials) before the run fails "
                        f"(default {DEFAULT_CLUSTER_WAIT_S:g})")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs, progress tables and error boxes")
    r.add_argument("--quiet", action="store_true", help="print only status lines (with the ETA) and errors")
    return p


def split_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def make_plan(args) -> grids.Plan:
    name, spec = grids.load_spec(args.grid)
    plan = grids.expand(name, spec, seeds=args.seeds, levels=split_list(args.levels),
                        axes=split_list(args.axes), overrides=parse_overrides(args.overrides))
    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}")
    for cfg in plan.trials().values():
        if cfg.batch_size < 2 * args.workers:
            raise ConfigError(f"batch_size={cfg.batch_size} gives fewer than 2 images per worker with --workers "
                              f"{args.workers}")
        if cfg.weights and not Path(cfg.weights).expanduser().is_file():
            raise ConfigError(f"weights={cfg.weights}: file not found (it must exist on every node)")
    return plan


# ----------------------------------------------------------------------------- dry run


def data_sizes(plan: grids.Plan) -> tuple[int, int, int]:
    s = plan.data_settings()
    n_classes = 10
    n_train = s["train_per_class"] * n_classes if s["train_per_class"] else 50000 - s["val_size"]
    n_test = s["test_per_class"] * n_classes if s["test_per_class"] else 10000
    return n_train, s["val_size"], n_test


def print_dry_run(plan: grids.Plan, res: Resources, as_json: bool, note: str = "", gpu: GpuChoice = (1.0, None),
                  adaptive: A.Settings | None = None) -> None:
    trials = plan.trials()
    if as_json:
        cfgs = {tid: _with_execution(cfg, res).to_dict() for tid, cfg in trials.items()}
        rows = [{**p.row(), **cfgs[p.trial_id]} for p in plan.points]
        out = {"grid": plan.grid, "resources": res.__dict__, "points": rows,
               "claims": grids.describe_claims(plan), "ensembles": grids.describe_ensembles(plan),
               "lineage": grids.describe_lineage(plan)}
        if adaptive is not None:
            out["until_decided"] = until_decided_plan(plan, adaptive, res, gpu)
        print(json.dumps(out, indent=1))
        return
    from tabulate import tabulate

    n_train, n_val, n_test = data_sizes(plan)
    seeds = len({p.seed for p in plan.points})
    print(f"grid {plan.grid}: {len(trials)} trials ({len(plan.points)} plan points), {seeds} seed(s) each")
    print(f"data: train {n_train}, val {n_val}, test {n_test} images (CIFAR-10 sizes assumed)")
    print(tabulate(grids.summarize(plan), headers="keys", tablefmt="github"))
    if plan.eval_axes:
        print(f"evaluation-only axes (computed from stored logits, no extra trials): {', '.join(plan.eval_axes)}")
    for title, lines in (("init_from (trained models carried from one level to the next)", grids.describe_lineage(plan)),
                         ("claims (verdicts in REPORT.md)", grids.describe_claims(plan)),
                         ("ensembles (formed by the report from stored logits)", grids.describe_ensembles(plan))):
        print(f"{title}:" + "".join(f"\n  {line}" for line in lines) if lines else f"{title}: none")
    print(f"resources: {res.describe()}{note}")
    print(estimate_line(trials, res, (n_train, n_val, n_test), gpu))
    if adaptive is not None:
        print("\n".join(until_decided_lines(plan, adaptive, res, gpu)))


def until_decided_plan(plan: grids.Plan, settings: A.Settings, res: Resources,
                       gpu: GpuChoice = (1.0, None)) -> dict:
    """--dry-run --until-decided: the planned seeds, the comparisons that drive the rounds, and the worst case
    (every compared config at --max-seeds) with its estimated time."""
    comps = Q.comparisons_from_plan(plan)
    planned = A.planned_seeds(plan)
    worst = Q.worst_case(comps, planned, settings.max_seeds)
    # its added time: the whole worst-case plan's estimate less the planned one's (on CPUs, prefix-cache entries
    # the added seeds share are paid once, as in the dry run's own estimate line)
    sizes = data_sizes(plan)
    added_s = (sum(trial_estimates(A.worst_case_plan(plan, comps, settings.max_seeds).trials(), res, sizes,
                                   gpu).values()) - sum(trial_estimates(plan.trials(), res, sizes, gpu).values()))
    worst = dataclasses.replace(worst, hours=max(added_s, 0.0) / res.concurrency / 3600)
    family = 2 * max(len(comps), 1)
    earliest = next((n for n in range(2, settings.max_seeds + 1)
                     if math.isfinite(settings.procedure.critical_t(n, settings.alpha / family))), None)
    return {**settings.meta(), "planned_seeds": sorted(set(planned.values())),
            "comparisons": [c.id for c in comps], "compared_configs": len(A.compared_configs(comps)),
            "earliest_decision_seeds": earliest, "worst_case_trials": worst.trials,
            "worst_case_added_trials": worst.added_trials, "worst_case_added_hours": worst.hours,
            "worst_case_line": worst.line()}


def until_decided_lines(plan: grids.Plan, settings: A.Settings, res: Resources,
                        gpu: GpuChoice = (1.0, None)) -> list[str]:
    u = until_decided_plan(plan, settings, res, gpu)
    comps = Q.comparisons_from_plan(plan)
    n_claims = sum(c.kind == "claim" for c in comps)
    seeds = "/".join(str(n) for n in u["planned_seeds"])
    budget = f", or until --budget {settings.budget_hours:g} h is spent" if math.isfinite(settings.budget_hours) else ""
    earliest = (f"the earliest call is at {u['earliest_decision_seeds']} seeds" if u["earliest_decision_seeds"]
                else f"no call is possible within {settings.max_seeds} seeds")
    worst = A.worst_case_plan(plan, comps, settings.max_seeds)
    return [f"--until-decided: planned {seeds} seed(s) per config first; then rounds add one seed to both configs of "
            f"every comparison still open on validation ({len(comps)} comparisons: {n_claims} claims, "
            f"{len(comps) - n_claims} axis arms, over {u['compared_configs']} configs), until decided or "
            f"{settings.max_seeds} seeds{budget}",
            f"  verdicts: {settings.procedure.name}, Holm over the {len(comps)} comparisons at {settings.alpha:g}; "
            f"{earliest}",
            f"  {u['worst_case_line']}",
            f"  worst case {estimate_line(worst.trials(), res, data_sizes(plan), gpu)}"]


def estimate_target(res: Resources, gpu: GpuChoice = (1.0, None)) -> Target:
    """What the estimate is for: the resources' device, trials per GPU, CPUs and runner, and the GPU model (given,
    else this machine's GPU where a speed table names it, else the default)."""
    on_gpu = res.device == "cuda"
    per_gpu = min(round(1 / res.gpus), res.concurrency) if on_gpu and res.gpus < 1 else 1  # trials sharing a GPU
    speed, model = gpu
    return Target(gpu=on_gpu, gpu_model=model or local_gpu_model(), gpu_speed=speed, per_gpu=per_gpu,
                  cpus=res.cpus, runner=res.runner)


@functools.cache
def local_gpu_model() -> str:
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001 - no usable CUDA: the default table
        name = ""
    return next((model for model, prefix in GPU_NAMES.items() if name.startswith(prefix)), DEFAULT_GPU)


def trial_estimator(res: Resources, sizes: tuple[int, int, int], gpu: GpuChoice = (1.0, None)):
    """config -> its estimated seconds alone (``ablations.estimate.trial_seconds``: it pays for every prefix-cache
    entry it reads, so a round of added seeds is costed on the safe side)."""
    target = estimate_target(res, gpu)
    return lambda c: trial_seconds(c, *sizes, target)


def trial_estimates(configs: dict[str, Any], res: Resources, sizes: tuple[int, int, int],
                    gpu: GpuChoice = (1.0, None), target: Target | None = None) -> dict[str, float]:
    """Each trial's estimated seconds (``ablations.estimate.plan_seconds``): measured speeds, on CPUs the prefix
    cache's entries paid for once, packed GPU trials slowed by their measured sharing of a GPU."""
    return plan_seconds(configs, *sizes, target or estimate_target(res, gpu))


def estimate_line(configs: dict[str, Any], res: Resources, sizes: tuple[int, int, int],
                  gpu: GpuChoice = (1.0, None)) -> str:
    """The dry run's time estimate: the trials' estimated seconds over the concurrency the resources allow, and
    what in it is not a measurement."""
    target = estimate_target(res, gpu)
    total = sum(trial_estimates(configs, res, sizes, target=target).values())
    wall = total / res.concurrency
    basis = target.describe()
    if target.gpu:
        gpus_used = max(1.0, res.concurrency * res.gpus * res.workers)
        basis += f", {res.concurrency} trials on {gpus_used:g} GPU(s); {wall / 3600 * gpus_used:.2f} GPU-hours"
    line = (f"estimated time: {total / 60:.1f} trial-minutes, about {wall / 60:.1f} min wall with "
            f"{res.concurrency} concurrent ({basis}; rough)")
    return line + "".join(f"\n  estimate note: {n}" for n in sorted(target.notes))


def _with_execution(cfg, res: Resources):
    changes: dict[str, Any] = {"device": res.device, "workers": res.workers}
    if not cfg.threads:
        changes["threads"] = max(1, int(res.cpus))
    return cfg.replace(**changes)


# ----------------------------------------------------------------------------- Tune


def run_in_lineage_order(session: Session, pending: list[str], res: Resources, data: dict, storage: str,
                         retries: int, verbose: bool, demand: AutoscalerDemand | None = None,
                         trackers=list) -> None:
    """Run the pending trials in waves: a trial that starts from another's trained model (``init_from``) runs
    in a wave after its parent finished, and gets the parent's weights (read from the results folder, where
    they are always kept) through the object store. A trial whose parent failed fails with that reason; after an
    interrupted wave, the later ones stay pending.
    ``trackers()`` makes each wave's tracker callbacks (a Tuner pickles its callbacks; used ones hold open files)."""
    import ray
    import torch

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
        refs: dict[str, Any] = {}
        for p in dict.fromkeys(parents[t] for t in ready if t in parents):
            path = ledger.folder.model_path(p)
            if path.exists():
                saved = torch.load(path, map_location="cpu", weights_only=True)  # its config and trained state
                refs[p] = ray.put({"config": saved["config"], "state": saved["state"]})
        for t in [t for t in ready if t in parents and parents[t] not in refs]:
            session.failed(t, f"the weights of its parent trial {parents[t]} (init_from) are not in "
                              f"{ledger.folder.model_path(parents[t]).parent}; run the grid into a new --name")
            ready.remove(t)
        if waiting:
            print(f"init_from: {len(ready)} trials now, {len(waiting)} after their parents", flush=True)
        run_tune(session, ready, res, data, storage, retries, verbose, demand, trackers(),
                 inits={t: refs[parents[t]] for t in ready if t in parents})
        if any(ledger.status(t) not in ("finished", "failed") for t in ready):
            return  # Tune stopped early (Ctrl-C, SIGTERM): later waves stay pending for the next run
        remaining = waiting


def run_tune(session: Session, pending: list[str], res: Resources, data: dict, storage: str, retries: int,
             verbose: bool, demand: AutoscalerDemand | None = None, trackers: list | None = None,
             inits: dict[str, Any] | None = None) -> None:
    """Tune runs the pending trials; ``session`` hears every event first, the trackers' callbacks after it."""
    from .trainable import run_trial, run_trial_in_actor

    trials = [trial_spec(tid, session.ledger.trials[tid], res, storage, retries, session.progress.labels[tid],
                         (inits or {}).get(tid)) for tid in pending]
    for t in trials:
        session.ledger.executing(t["trial_id"], {k: t["config"][k] for k in EXECUTION_KEYS})
    quiet_ray(verbose)
    callbacks = [make_recorder(session, storage, demand), *(trackers or [])]
    if res.runner == "actor":  # the trial actor holds the trial's resources; Tune restarts it on an error
        tuner = make_tuner(run_trial_in_actor, data, trials, res.concurrency, storage, callbacks, verbose,
                           resources=res.worker_bundle(), max_failures=retries)
    else:  # Ray Train restarts the worker group on an error
        tuner = make_tuner(run_trial, data, trials, res.concurrency, storage, callbacks, verbose)
    results = tuner.fit()
    for r in results:  # errors that bypassed the callback (e.g. the trainable could not start)
        tid = (r.config or {}).get("trial", {}).get("trial_id")
        if tid and r.error is not None and session.ledger.status(tid) not in ("finished", "failed"):
            session.failed(tid, root_error(str(r.error)) if str(r.error).strip() else type(r.error).__name__)


def trial_spec(tid: str, cfg, res: Resources, storage: str, retries: int, label: str = "",
               init=None) -> dict[str, Any]:
    """What one Tune trial needs: its config as it will run, the resources of its workers, where to store, and
    whether this Ray has what ``torch_backend.LazyTorchConfig`` needs (checked once, here in the driver). The
    label (level/axis=arm seed) is for the trackers, which show the trial config."""
    return {"trial_id": tid, "label": label, "config": _with_execution(cfg, res).to_dict(),
            "resources": {"cpus": res.cpus, "gpus": res.gpus, "workers": res.workers, "gpu_resource": res.gpu_resource},
            "storage": storage, "retries": retries, "lazy_backend": lazy_backend(),
            "init": init}  # an object ref to the parent's trained state (init_from), or None


@functools.cache
def lazy_backend() -> bool:
    from .torch_backend import lazy_backend_supported

    missing = lazy_backend_supported()
    if missing:
        print(f"note: this Ray lacks {', '.join(missing)}: trials use Ray's own TorchConfig", flush=True)
    return not missing


# Runner "train": the Tune trial actor (and the Train controller, which Ray Train places beside it) holds no CPU
# and lives on the head node: losing a worker node then loses only Train workers, which the controller restarts
# elsewhere from the trial's last checkpoint.
TRAINABLE_RESOURCES = {"CPU": 0, "memory": 1, "node:__internal_head__": 0.001}


def make_tuner(trainable, data: dict, trials: list[dict], concurrency: int, storage: str, callbacks: list,
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
    (``ablations.trackers``), and not at all without it."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    callbacks = [*callbacks, CSVLoggerCallback(), JsonLoggerCallback()]
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), resources or TRAINABLE_RESOURCES),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse_actors,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                                  callbacks=callbacks, verbose=1 if verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )


# ----------------------------------------------------------------------------- main


def run(args) -> int:
    tracker_names = parse_log(args.log)
    plan = make_plan(args)
    planned = A.planned_seeds(plan)  # the grid's own seeds, before the folder's plan is merged in
    settings = A.settings_from_args(args, min(planned.values()))
    if settings is not None:
        settings.check(max(planned.values()))
    if args.dry_run:
        cluster, note = local_resources(args)
        print_dry_run(plan, plan_resources(args, cluster, len(plan.trials())), args.json, note,
                      (args.gpu_speed, args.gpu_model), settings)
        return 0

    # 1. the run folder and the data; nothing is written until the cluster can run the plan
    from pipeline import data as D

    t0 = time.time()
    folder = RunFolder(Path(args.results) / (args.name or plan.grid))
    mirror = results_mirror(folder, args.storage)  # with a remote --storage: the folder's copy there
    trackers = Trackers(tracker_names, folder.path / "logs", folder.path.name)
    trackers.check()
    source = D.resolve_source(args.data)
    fingerprint = D.fingerprint(source)
    plan, old_meta = plan_in_folder(folder, plan, fingerprint, args.extend)
    if args.resume and old_meta is None:
        raise RunFolderError(f"--resume: {folder.path} holds no run to resume")
    if settings is not None:
        settings.check(max(planned.values()), (old_meta or {}).get("adaptive"))
    cached = D.was_cached(source)
    splits = D.make_splits(D.load(source), **plan.data_settings())
    print(f"data: {source} ({'cache' if cached else 'decoded'} in {time.time() - t0:.1f} s); {splits.describe()}",
          flush=True)
    storage = args.storage or str((folder.path / "ray").resolve())
    meta = run_meta(plan, folder, source, fingerprint, splits, storage, old_meta)
    ledger = Ledger(folder, plan)
    collector = Collector(folder, args.keep_models, set(plan.parents().values()))
    pending = ledger.pending()
    refuse_stale(folder, ledger)
    print(f"run folder {folder.path}: {len(ledger.trials) - len(pending)} of {len(ledger.trials)} trials already "
          f"finished", flush=True)
    rounds = None
    if settings is not None:
        spent_before = sum(float(x.get("wall_s") or 0) for x in (old_meta or {}).get("sessions", [])) / 3600
        rounds = A.Rounds(ledger, settings, planned, Q.comparisons_from_plan(plan),
                          spent_hours=lambda: spent_before + (time.time() - t0) / 3600,
                          class_recall=A.recall_from_logits(lambda t: folder.read_logits(t) if
                                                            folder.logits_path(t).exists() else None,
                                                            splits.val_y, len(splits.classes)),
                          classes=list(splits.classes))
    elif (old_meta or {}).get("adaptive"):
        meta["adaptive"] = old_meta["adaptive"]  # a later fixed run keeps the verdicts anytime-valid

    # 2. Ray: connect, check resources, share the data once, run the pending trials, then the adaptive rounds
    interrupted = False
    estimated_wall = 0.0
    slots = 0
    ran: list[str] = []  # the trials this session ran
    first = rounds.next() if rounds is not None and not pending else None
    if not pending and (first is None or first.stop_reason):
        if first is not None:
            print(first.line(), flush=True)
        start_folder(folder, meta, splits, ledger, mirror)
    else:
        import ray

        connect(args)
        install_stop_handlers()  # ray.init's failure handler took SIGTERM over (it would exit without the finally)
        demand = None
        try:
            wanted = max(len(pending), len(A.compared_configs(rounds.comparisons)) if rounds else 0)
            res = cluster_resources(args, wanted)
            slots = res.concurrency
            # the preflight waits (at most --wait-for-resources) for one node that can run a trial (its placement
            # group is the autoscaler's only demand so far), then checks CUDA / NCCL / the storage there; only then
            # does the autoscaler hear of every trial to run (a failed preflight launches no more nodes)
            demand = AutoscalerDemand(res, enabled=bool(cluster_address(args)))
            if preflight.needed(res, bool(cluster_address(args))):
                print(preflight.run(res, wait_seconds(args), storage, bool(args.storage)), flush=True)
            demand.update(len(pending))
            start_folder(folder, meta, splits, ledger, mirror)
            sizes = data_sizes(plan)
            estimates = trial_estimates({tid: ledger.trials[tid] for tid in pending}, res, sizes, (args.gpu_speed, args.gpu_model))
            estimated_wall = sum(estimates.values()) / res.concurrency
            progress = Progress(labels(plan), ledger.counts, Eta(estimates, res.concurrency), quiet=args.quiet,
                                start=t0)
            progress.status(force=True)
            session = Session(ledger, collector, progress, args.retries,
                              on_change=mirror.push if mirror else None)  # every finished trial goes up
            data_ref = ray.put({**splits.arrays(), "train_idx": splits.train_idx})  # the index keys augmentation
            data = {"ref": data_ref, "classes": list(splits.classes)}

            def run_trials(tids: list[str]) -> None:
                ran.extend(tids)
                run_in_lineage_order(session, tids, res, data, storage, args.retries, args.verbose, demand,
                                     trackers.callbacks)

            if pending:
                run_trials(pending)
            if rounds is not None:
                seconds = trial_estimator(res, sizes, (args.gpu_speed, args.gpu_model))
                rounds.cost_hours = lambda p: A.config_hours(p, seconds, progress.eta.factor / res.concurrency / 3600)

                def grew(new_plan: grids.Plan, new: list[str]) -> None:
                    """A round's seeds joined the plan: run.json first (a resumed run finds them), then progress."""
                    nonlocal estimated_wall
                    meta.update(plan=new_plan.to_json(), trial_ids=sorted(new_plan.trials()),
                                adaptive=rounds.record())
                    folder.write_meta(meta)
                    collector.parents.update(new_plan.parents().values())
                    configs = new_plan.trials()
                    est = {t: seconds(configs[t]) for t in new}
                    estimated_wall += sum(est.values()) / res.concurrency
                    names = labels(new_plan)
                    progress.add({t: names[t] for t in new}, est)
                    demand.update(len(new))

                rounds.run(run_trials, progress.say, grew)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if demand is not None:
                demand.clear()  # a request to the autoscaler stays in force until withdrawn
            if folder.exists():
                ledger.close()
                if mirror:
                    mirror.push()
            ray.shutdown()  # stops a local instance; only disconnects from a cluster given by --address

    # 3. close the run and write the report
    plan = ledger.plan
    if rounds is not None:
        meta.update(plan=plan.to_json(), trial_ids=sorted(plan.trials()), adaptive=rounds.record())
    if not ledger.pending():
        collector.prune_models(ledger.rows())
    wall = time.time() - t0
    session_times = {"started": now(), "wall_s": round(wall, 1), "estimated_wall_s": round(estimated_wall, 1),
                     "trials_run": len(ran), "interrupted": interrupted}
    if ran:
        import pandas as pd

        ran_ids = set(ran)
        session_times["time"] = where_the_time_went(
            pd.DataFrame([r for r in ledger.rows() if r["trial_id"] in ran_ids]), wall, slots)
    meta.update(updated=now(), finished=None if ledger.pending() or stopped_adding(rounds) else now(),
                sessions=[*(old_meta or {}).get("sessions", []), session_times])
    folder.write_meta(meta)
    if not args.no_report:
        from .report import write_report

        report = write_report(folder.path)
        print(f"report: {report}")
    if mirror:
        mirror.push()
        print(f"results mirrored to {mirror.uri}")
        for line in trackers.log_report(folder.path):
            print(line)
    c = ledger.counts
    print(f"{c['finished']}/{len(ledger.trials)} done, {c['failed']} failed, {c['running'] + c['pending']} not run, "
          f"in {duration(wall)}")
    if ran:
        print(estimate_comparison(wall, estimated_wall, len(ran)))
    failed = ledger.with_status("failed")
    if interrupted or ledger.with_status("pending", "running") or stopped_adding(rounds):
        print(f"{'interrupted' if interrupted else 'stopped'}: run the same command again to continue "
              f"({len(ledger.pending())} trials left; finished trials are kept)")
        return EXIT_INTERRUPTED
    if failed:
        print(f"{len(failed)} trial(s) failed (see the error column of trials.parquet and REPORT.md); run the "
              f"same command again to retry them")
        return EXIT_FAILED_TRIALS
    return 0


def stopped_adding(rounds: A.Rounds | None) -> bool:
    """The adaptive rounds stopped before the planner did (interrupted, or a round's trials did not end)."""
    return rounds is not None and (rounds.last is None or rounds.last.stop_reason is None)


def wait_seconds(args) -> float:
    """How long the preflight waits for a node: --wait-for-resources, by default long enough for a cloud GPU
    node to boot on a cluster, and a minute (a hang guard: resources were checked) on a local instance."""
    if args.wait_for_resources is not None:
        return max(args.wait_for_resources, 0.0)
    return DEFAULT_CLUSTER_WAIT_S if cluster_address(args) else 60.0


def cluster_resources(args, n_trials: int) -> Resources:
    """Per-trial resources on the connected cluster (``ablations.cluster.plan_resources``), printed."""
    import ray

    cluster = ray.cluster_resources()
    on_cluster = bool(cluster_address(args))
    res = plan_resources(args, cluster, n_trials, on_cluster=on_cluster,
                         head_memory_mib=head_memory_mib() if on_cluster else None,
                         max_resources=max_cluster_resources() if on_cluster else None)
    print(f"ray: {fmt_resources(cluster)}; {res.describe()}", flush=True)
    return res


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
             old_meta: dict | None) -> dict:
    """run.json. Paths are relative to the run folder (``ablations.portable``): the folder can move."""
    trials = plan.trials()
    return {
        "grid": plan.grid, "grid_spec": plan.spec, "argv": portable.command(sys.argv[1:], folder.path),
        "trial_ids": sorted(trials), "id_schema": plan.schema,
        "eval_axes": list(plan.eval_axes), "plan": plan.to_json(),
        "data": {"source": portable.relative_to(source, folder.path), "fingerprint": fingerprint,
                 **plan.data_settings(),
                 "sizes": {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)},
                 "classes": list(splits.classes)},
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
    """With a remote --storage, the run folder's copy under ``<storage>/<run name>`` (``ablations.mirror``): a run
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
    from . import claims as C

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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_stop_handlers() -> None:
    """A closed terminal (SIGHUP) or a polite kill (SIGTERM, also `timeout`'s) stops like Ctrl-C: finished trials
    are on disk, the state is flushed, run.json records the session, and the same command continues the run.
    Installed at start and again after ``ray.init``, whose C++ failure-signal handler replaces the SIGTERM handler
    of the driver (it printed a stack trace and exited 1, skipping all of that)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_stop_handlers()
    try:
        return run(args)
    except UserError as e:  # bad grid, config, data, folder or resources: one line, nothing started
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
