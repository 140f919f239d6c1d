"""``python -m ablations.run``: expand a grid, run every trial on Ray, write the results folder and report.

Top to bottom:
  1. grid spec -> plan of trial configs (``ablations.grids``)            [--dry-run stops here]
  2. the run folder is checked (a different grid or data is refused; the same plan resumes)
  3. data: decoded once (disk cache), split, ``ray.put`` once
  4. resources: what the cluster has vs. what a trial asks for (GPUs asked for but absent fail at once)
  5. Tune runs one trial per pending config; each trial is a TorchTrainer (``ablations.trainable``)
  6. as each trial finishes its row, epochs, logits and weights are written (``ablations.results``)
  7. the report is written (``ablations.report``)
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import EXECUTION_KEYS
from pipeline.errors import ConfigError, UserError, one_line

from . import grids, preflight
from .cluster import (DEFAULT_CLUSTER_WAIT_S, AutoscalerDemand, Resources, cluster_address, connect, fmt_resources,
                      head_memory_mib, local_resources, max_cluster_resources, plan_resources)
from .config import parse_overrides
from .estimate import trial_seconds
from .results import RunFolder, RunFolderError, environment, now

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
    g.add_argument("--gpu-speed", type=float, default=1.0, metavar="X",
                   help="with --dry-run: the GPU's speed relative to the H100 the estimates were measured on")
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
    r = p.add_argument_group("resources")
    r.add_argument("--address", help="address of an existing Ray cluster (default: $RAY_ADDRESS, as set for a `ray job "
                                     "submit` driver, else a new instance on this machine)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPUs when the cluster has them; cpu: run everything on CPUs")
    r.add_argument("--gpus-per-trial", type=float, help="GPU share per trial worker, e.g. 0.25 packs 4 trials per GPU")
    r.add_argument("--cpus-per-trial", type=float, help="CPUs per trial worker (default: 1, or 2 on CPU machines with 8+ cores)")
    r.add_argument("--workers", type=int, default=1, help="Ray Train workers (data-parallel processes) per trial")
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
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs")
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


def print_dry_run(plan: grids.Plan, res: Resources, as_json: bool, note: str = "", gpu_speed: float = 1.0) -> None:
    trials = plan.trials()
    if as_json:
        cfgs = {tid: _with_execution(cfg, res).to_dict() for tid, cfg in trials.items()}
        rows = [{**p.row(), **cfgs[p.trial_id]} for p in plan.points]
        out = {"grid": plan.grid, "resources": res.__dict__, "points": rows,
               "claims": grids.describe_claims(plan), "ensembles": grids.describe_ensembles(plan),
               "lineage": grids.describe_lineage(plan)}
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
    print(estimate_line(trials.values(), res, (n_train, n_val, n_test), gpu_speed))


def estimate_line(configs, res: Resources, sizes: tuple[int, int, int], gpu_speed: float = 1.0) -> str:
    """The dry run's time estimate (``ablations.estimate``): per-trial seconds from measured speeds, packed trials
    slowed by their measured sharing of a GPU, over the concurrency the resources allow."""
    gpu = res.device == "cuda"
    per_gpu = min(round(1 / res.gpus), res.concurrency) if gpu and res.gpus < 1 else 1  # trials sharing a GPU
    total = sum(trial_seconds(c, *sizes, gpu, per_gpu, gpu_speed) for c in configs)
    wall = total / res.concurrency
    if gpu:
        gpus_used = max(1.0, res.concurrency * res.gpus * res.workers)
        basis = (f"GPU speeds measured on one H100{f' x {gpu_speed:g}' if gpu_speed != 1 else ''}, "
                 f"{res.concurrency} trials on {gpus_used:g} GPU(s); {wall / 3600 * gpus_used:.2f} GPU-hours")
    else:
        basis = "CPU speeds measured on a 2-core machine"
    return (f"estimated time: {total / 60:.1f} trial-minutes, about {wall / 60:.1f} min wall with "
            f"{res.concurrency} concurrent ({basis}; rough)")


def _with_execution(cfg, res: Resources):
    changes: dict[str, Any] = {"device": res.device, "workers": res.workers}
    if not cfg.threads:
        changes["threads"] = max(1, int(res.cpus))
    return cfg.replace(**changes)


# ----------------------------------------------------------------------------- the run's state


class RunState:
    """Rows of trials.parquet and epochs.parquet, updated and rewritten as trials report."""

    def __init__(self, folder: RunFolder, plan: grids.Plan, keep_models: str, storage: str, retries: int = 0):
        self.folder, self.plan, self.keep_models, self.storage = folder, plan, keep_models, storage
        self.retries = retries
        self.trials = plan.trials()
        self.parents_needed = set(plan.parents().values())  # their weights are kept: children start from them
        self.status: dict[str, dict[str, Any]] = {tid: {"status": "pending", "error": None} for tid in self.trials}
        self.metrics: dict[str, dict[str, Any]] = {}
        self.executed: dict[str, dict[str, Any]] = {}  # execution keys a trial ran with (device, threads, ...)
        self.progress: dict[str, int] = {}  # epochs reported by trials under way
        self.epochs: dict[str, list[dict]] = {}
        self.launched: dict[str, float] = {}  # driver clock: Tune started the trial
        self.received: dict[str, float] = {}  # driver clock: final result received
        old = folder.read_trials()
        if len(old):
            plan_columns = set(plan.points[0].row()) | {"status", "error", "epochs_done"}
            for rec in old.drop_duplicates("trial_id").to_dict("records"):
                tid = rec["trial_id"]
                if tid in self.status and rec.get("status") == "finished" and folder.logits_path(tid).exists():
                    self.status[tid] = {"status": "finished", "error": None}
                    self.metrics[tid] = {k: v for k, v in rec.items() if k not in plan_columns}
                    self.executed[tid] = {k: rec[k] for k in EXECUTION_KEYS if k in rec}
                    self.progress[tid] = int(rec.get("epochs_done") or 0)
        old_epochs = folder.read_epochs()
        if len(old_epochs):
            for tid, g in old_epochs.groupby("trial_id"):
                if self.status.get(tid, {}).get("status") == "finished":
                    self.epochs[tid] = g.to_dict("records")

    def pending(self) -> list[str]:
        return [tid for tid, s in self.status.items() if s["status"] != "finished"]

    def counts(self) -> str:
        c = {k: 0 for k in ("finished", "running", "failed", "pending")}
        for s in self.status.values():
            c[s["status"]] += 1
        return f"{c['finished']}/{len(self.status)} done, {c['running']} running, {c['failed']} failed"

    def label(self, tid: str) -> str:
        pts = [p for p in self.plan.points if p.trial_id == tid]
        p = pts[0]
        return f"{p.level}/{p.axis}={p.arm} seed {p.seed} [{tid}]"

    # -------------------------------------------------------- events from Tune

    def on_epoch(self, tid: str, result: dict) -> None:
        self.status[tid] = {"status": "running", "error": None}
        self.progress[tid] = int(result.get("epoch", 0))
        self.flush(epochs=False)  # a user (or a resumed run) sees which trials were under way
        cfg = self.trials[tid]
        print(f"  {self.label(tid)} epoch {result.get('epoch')}/{cfg.epochs}: "
              f"train_acc {result.get('train_acc', float('nan')):.3f} val_acc {result.get('val_acc', float('nan')):.3f}",
              flush=True)

    def on_final(self, tid: str, result: dict) -> None:
        self.received[tid] = time.time()
        ckpt = result.get("checkpoint_path")
        with tempfile.TemporaryDirectory() as d:
            from .trainable import fetch_checkpoint

            local = fetch_checkpoint(self.storage, ckpt, Path(d) / "final")
            final = json.loads((local / "final.json").read_text())
            self.folder.copy_logits(tid, local / "logits.npz")
            if self.keep_models != "none" or tid in self.parents_needed:  # a child trial starts from it
                self.folder.model_path(tid).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(local / "model.pt", self.folder.model_path(tid))
        self.metrics[tid] = {**final["metrics"], **self.timeline(tid, final["metrics"]), "driver_rss_mb": rss_mb()}
        self.epochs[tid] = [{"trial_id": tid, **row} for row in final["history"]]
        self.progress[tid] = len(final["history"])
        self.status[tid] = {"status": "finished", "error": None}
        self.flush()
        m = final["metrics"]
        print(f"[{self.counts()}] finished {self.label(tid)}: val_acc {m['val_acc']:.3f} test_acc {m['test_acc']:.3f} "
              f"({m['trial_seconds']:.0f} s in trial)", flush=True)

    def timeline(self, tid: str, m: dict) -> dict[str, float]:
        """Where a trial's wall time went (driver and worker clocks; same machine or NTP-synced)."""
        launched = self.launched.get(tid, float("nan"))
        return {
            "s_launch_to_trainable": m["t_trainable_start"] - launched,
            "s_trainable_to_worker": m["t_worker_start"] - m["t_trainable_start"],
            "s_worker_to_fit": m["t_fit_start"] - m["t_worker_start"],
            "s_fit": m["t_fit_end"] - m["t_fit_start"],
            "s_fit_to_driver": self.received[tid] - m["t_fit_end"],
        }

    def on_error(self, tid: str, error: str) -> None:
        attempts = self.retries + 1
        error = f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''})"
        self.status[tid] = {"status": "failed", "error": error}
        self.flush(epochs=False)
        print(f"[{self.counts()}] FAILED {self.label(tid)}: {error}", flush=True)

    # -------------------------------------------------------- files

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for p in self.plan.points:
            tid = p.trial_id
            row = {**p.row(), **self.executed.get(tid, {}), **self.status[tid],
                   "epochs_done": self.progress.get(tid, 0)}
            row.update(self.metrics.get(tid, {}))
            out.append(row)
        return out

    def flush(self, epochs: bool = True) -> None:
        """Rewrite trials.parquet (and epochs.parquet, which changes only when a trial finishes)."""
        self.folder.write_trials(self.rows())
        rows = [r for tid in self.epochs for r in self.epochs[tid]]
        if epochs and rows:
            self.folder.write_epochs(rows)

    def prune_models(self) -> None:
        """--keep-models best: once every trial has finished, keep the weights of each level's best config
        only. (Not earlier: a config that is not the best yet may become it, and its weights would be gone.)"""
        if self.keep_models != "best" or self.pending():
            return
        import pandas as pd

        from .rundata import best_config_ids

        keep_cfg = set(best_config_ids(pd.DataFrame(self.rows())).values())
        keep = {r["trial_id"] for r in self.rows() if r["config_id"] in keep_cfg} | self.parents_needed
        models = self.folder.path / "models"
        if models.exists():
            for f in models.glob("*.pt"):
                if f.stem not in keep:
                    f.unlink()


# ----------------------------------------------------------------------------- Tune


def rss_mb() -> float:
    """This process's resident memory in MiB: now on Linux, the peak elsewhere. Each finished trial's row
    records the driver's, so ``trials.parquet`` shows whether the driver grows with the number of trials."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def make_recorder(state: RunState, demand: AutoscalerDemand | None = None):
    from ray import tune

    class Recorder(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            if demand is not None:  # fewer trials left: the autoscaler may let nodes go
                demand.update(len(state.pending()))


        def on_trial_start(self, iteration, trials, trial, **info):
            state.launched[trial.config["trial"]["trial_id"]] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = trial.config["trial"]["trial_id"]
            if result.get("kind") == "epoch":
                state.on_epoch(tid, result)
            elif result.get("kind") == "final":
                state.on_final(tid, result)

        def on_trial_error(self, iteration, trials, trial, **info):
            state.on_error(trial.config["trial"]["trial_id"], _trial_error(trial))
            if demand is not None:
                demand.update(len([t for t, s in state.status.items() if s["status"] in ("pending", "running")]))

    return Recorder()


# Ray's wrappers around the exception a trial really raised
_WRAPPERS = ("RayTaskError", "WorkerGroupError", "TrainingFailedError", "ControllerError", "RayActorError")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?:\(\w+\))?: (.+)")


def root_error(text: str) -> str:
    """The exception a trial raised, from the traceback text Ray stored (which wraps it several times)."""
    found = []
    for line in text.splitlines():
        m = _EXCEPTION_LINE.match(line.strip())
        if m and not m.group(1).split(".")[-1].startswith(_WRAPPERS):
            found.append(f"{m.group(1).split('.')[-1]}: {m.group(2).strip()}")
    if found:
        return found[-1][:500]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "trial failed (no error recorded)")[:500]


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    return root_error(Path(path).read_text() if path and os.path.exists(path) else "")


def run_in_lineage_order(state: RunState, pending: list[str], res: Resources, data: dict, storage: str,
                         retries: int, verbose: bool, demand: AutoscalerDemand | None = None) -> None:
    """Run the pending trials in waves: a trial that starts from another's trained model (``init_from``) runs
    in a wave after its parent finished, and gets the parent's weights (read from the results folder, where
    they are always kept) through the object store. A trial whose parent failed fails with that reason."""
    import ray
    import torch

    parents = state.plan.parents()
    remaining = list(pending)
    while remaining:
        ready = [t for t in remaining if t not in parents or state.status[parents[t]]["status"] == "finished"]
        waiting = [t for t in remaining if t not in ready]
        if not ready:
            for t in waiting:
                state.on_error(t, f"its parent trial {parents[t]} (init_from) did not finish")
            return
        refs: dict[str, Any] = {}
        for p in dict.fromkeys(parents[t] for t in ready if t in parents):
            path = state.folder.model_path(p)
            if path.exists():
                refs[p] = ray.put(torch.load(path, map_location="cpu", weights_only=True)["state"])
        for t in [t for t in ready if t in parents and parents[t] not in refs]:
            state.on_error(t, f"the weights of its parent trial {parents[t]} (init_from) are not in "
                              f"{state.folder.model_path(parents[t]).parent}; run the grid into a new --name")
            ready.remove(t)
        if waiting:
            print(f"lineage: {len(ready)} trials now, {len(waiting)} after their parents", flush=True)
        run_tune(state, ready, res, data, storage, retries, verbose, demand,
                 inits={t: refs[parents[t]] for t in ready if t in parents})
        remaining = waiting


def run_tune(state: RunState, pending: list[str], res: Resources, data: dict, storage: str, retries: int,
             verbose: bool, demand: AutoscalerDemand | None = None, inits: dict[str, Any] | None = None) -> None:
    from .trainable import run_trial

    trials = [trial_spec(tid, state.trials[tid], res, storage, retries, (inits or {}).get(tid)) for tid in pending]
    for t in trials:
        state.executed[t["trial_id"]] = {k: t["config"][k] for k in EXECUTION_KEYS}
    results = make_tuner(run_trial, data, trials, res.concurrency, storage, [make_recorder(state, demand)],
                         verbose).fit()
    for r in results:  # errors that bypassed the callback (e.g. the trainable could not start)
        tid = (r.config or {}).get("trial", {}).get("trial_id")
        if tid and r.error is not None and state.status[tid]["status"] != "finished":
            state.on_error(tid, root_error(str(r.error)) if str(r.error).strip() else type(r.error).__name__)


def trial_spec(tid: str, cfg, res: Resources, storage: str, retries: int, init=None) -> dict[str, Any]:
    """What one Tune trial needs: its config as it will run, the resources of its workers, where to store, and
    whether this Ray has what ``torch_backend.LazyTorchConfig`` needs (checked once, here in the driver)."""
    return {"trial_id": tid, "config": _with_execution(cfg, res).to_dict(),
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


# The Tune trial actor (and the Train controller, which Ray Train places beside it) holds no CPU and lives on
# the head node: losing a worker node then loses only Train workers, which the controller restarts elsewhere
# from the trial's last checkpoint.
TRAINABLE_RESOURCES = {"CPU": 0, "memory": 1, "node:__internal_head__": 0.001}


def make_tuner(trainable, data: dict, trials: list[dict], concurrency: int, storage: str, callbacks: list,
               verbose: bool = False, reuse_actors: bool = True):
    """One Tune trial per entry of ``trials``. The Tune trial actor only waits for its TorchTrainer, whose
    workers hold the CPUs and GPUs; it is reused from trial to trial (``reuse_actors``), which saves a
    process start and the torch import per trial. The data dict (with the object-store ref inside) goes
    through ``tune.with_parameters``, so it is stored once, not copied into every trial's config."""
    from ray import tune

    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=data), TRAINABLE_RESOURCES),
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse_actors),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                                  callbacks=callbacks, verbose=1 if verbose else 0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


# ----------------------------------------------------------------------------- main


def run(args) -> int:
    plan = make_plan(args)
    if args.dry_run:
        cluster, note = local_resources(args)
        print_dry_run(plan, plan_resources(args, cluster, len(plan.trials())), args.json, note, args.gpu_speed)
        return 0

    # 1. the run folder and the data; nothing is written until the cluster can run the plan
    from pipeline import data as D

    t0 = time.time()
    folder = RunFolder(Path(args.results) / (args.name or plan.grid))
    source = D.resolve_source(args.data)
    fingerprint = D.fingerprint(source)
    plan, old_meta = plan_in_folder(folder, plan, fingerprint, args.extend)
    if args.resume and old_meta is None:
        raise RunFolderError(f"--resume: {folder.path} holds no run to resume")
    cached = D.was_cached(source)
    splits = D.make_splits(D.load(source), **plan.data_settings())
    print(f"data: {source} ({'cache' if cached else 'decoded'} in {time.time() - t0:.1f} s); {splits.describe()}",
          flush=True)
    storage = args.storage or str((folder.path / "ray").resolve())
    meta = run_meta(plan, source, fingerprint, splits, storage, old_meta)
    state = RunState(folder, plan, args.keep_models, storage, args.retries)
    pending = state.pending()
    refuse_stale(folder, state)
    print(f"run folder {folder.path}: {len(state.trials) - len(pending)} of {len(state.trials)} trials already "
          f"finished", flush=True)

    # 2. Ray: connect, check resources, share the data once, run the pending trials
    interrupted = False
    if not pending:
        start_folder(folder, meta, splits, state)
    else:
        import ray

        connect(args)
        demand = None
        try:
            res = cluster_resources(args, len(pending))
            # the autoscaler hears of every trial to run before the first one starts, and the preflight waits
            # (at most --wait-for-resources) for a node that can run one, then checks CUDA / NCCL there
            demand = AutoscalerDemand(res, enabled=bool(cluster_address(args)))
            demand.update(len(pending))
            if preflight.needed(res, bool(cluster_address(args))):
                print(preflight.run(res, wait_seconds(args)), flush=True)
            start_folder(folder, meta, splits, state)
            data_ref = ray.put({**splits.arrays(), "train_idx": splits.train_idx})  # the index keys augmentation
            run_in_lineage_order(state, pending, res, {"ref": data_ref, "classes": list(splits.classes)}, storage,
                                 args.retries, args.verbose, demand)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if demand is not None:
                demand.clear()  # a request to the autoscaler stays in force until withdrawn
            if folder.exists():
                state.flush()
            ray.shutdown()  # stops a local instance; only disconnects from a cluster given by --address

    # 3. close the run and write the report
    state.prune_models()
    meta.update(updated=now(), finished=None if state.pending() else now())
    folder.write_meta(meta)
    if not args.no_report:
        from .report import write_report

        print(f"report: {write_report(folder.path)}")
    failed = [tid for tid, s in state.status.items() if s["status"] == "failed"]
    unfinished = [tid for tid, s in state.status.items() if s["status"] in ("pending", "running")]
    print(f"{state.counts()} in {time.time() - t0:.0f} s")
    if interrupted or unfinished:
        print(f"{'interrupted' if interrupted else 'stopped'}: run the same command again to continue "
              f"({len(state.pending())} trials left; finished trials are kept)")
        return EXIT_INTERRUPTED
    if failed:
        print(f"{len(failed)} trial(s) failed (see the error column of trials.parquet and REPORT.md); run the "
              f"same command again to retry them")
        return EXIT_FAILED_TRIALS
    return 0


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
    old_meta = folder.check_usable(plan.grid, fingerprint, set(plan.trials()), extend)
    if old_meta is not None and extend:
        plan = _merge_plans(old_meta, plan).under_schema(schema)
    return plan, old_meta


def refuse_stale(folder: RunFolder, state: "RunState") -> None:
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


def run_meta(plan: grids.Plan, source: str, fingerprint: str, splits, storage: str, old_meta: dict | None) -> dict:
    trials = plan.trials()
    return {
        "grid": plan.grid, "grid_spec": plan.spec, "argv": sys.argv, "trial_ids": sorted(trials),
        "id_schema": plan.schema,
        "eval_axes": list(plan.eval_axes), "plan": plan.to_json(),
        "data": {"source": source, "fingerprint": fingerprint, **plan.data_settings(),
                 "sizes": {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)},
                 "classes": list(splits.classes)},
        "started": (old_meta or {}).get("started", now()), "updated": now(), "finished": None,
        "storage": storage, **environment(),
    }


def start_folder(folder: RunFolder, meta: dict, splits, state: "RunState") -> None:
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_meta(meta)
    folder.write_labels({"val": splits.val_y, "test": splits.test_y}, splits.classes)
    state.flush()


def _merge_plans(old_meta: dict, plan: grids.Plan) -> grids.Plan:
    """--extend: keep the old plan's points and add the new ones."""
    from pipeline.config import TrialConfig

    old_points = []
    for row in old_meta.get("plan", []):
        cfg = TrialConfig.from_row(row)
        old_points.append(grids.Point(row["level"], row["axis"], row["arm"], row["seed"], row["is_reference"], cfg,
                                      competes=row.get("competes", True)))
    seen = {(p.trial_id, p.level, p.axis, p.arm) for p in old_points}
    new = [p for p in plan.points if (p.trial_id, p.level, p.axis, p.arm) not in seen]
    return grids.Plan(grid=old_meta["grid"], spec=old_meta.get("grid_spec", {}), points=old_points + new,
                      eval_axes=tuple(dict.fromkeys([*old_meta.get("eval_axes", []), *plan.eval_axes])))


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a closed terminal (SIGHUP) or a polite kill (SIGTERM) stops like Ctrl-C: finished trials are on disk,
    # the state is flushed, and the same command continues the run
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
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
