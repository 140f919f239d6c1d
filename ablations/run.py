"""``python -m ablations.run``: expand a grid, run every trial on Ray, write the results folder and report.

Top to bottom (``Command``):
  1. prepare: grid spec -> plan of trial configs (``ablations.plan.grids``; ``--dry-run`` prints it, ``ablations.command.dryrun``),
     the run folder checked (another grid or data refused; the same plan resumes; ``ablations.store.runfolder``), the data
     decoded once (disk cache) and split. Nothing is written yet.
  2. execute: Ray (``ablations.driver``): connect, check the cluster's resources against a trial's, the preflight
     (a node for a trial, CUDA, NCCL, the storage), the data ``ray.put`` once, then Tune runs one trial per pending
     config (``driver.tune``), in waves along ``init_from`` lineage, and ``--until-decided`` adds rounds of seeds.
     Every event is one line in the ledger (``driver.ledger``), each finished trial's logits and weights are
     copied into the run folder (``driver.collector``), status lines say how long remains (``driver.progress``).
  3. finalize: the ledger compacted into trials.parquet and epochs.parquet, run.json's session, the report
     (``ablations.report``), the mirror under a remote --storage, and the exit code.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path

from pipeline.errors import ConfigError, UserError, one_line

from ablations.plan import grids
from ablations.plan.overrides import parse_overrides
from ablations.command import rounds as A
from ablations.driver import preflight
from ablations.driver.cluster import (
    AutoscalerDemand,
    connect,
    disconnect,
    head_memory_mib,
    max_cluster_resources,
    resources,
    share,
)
from ablations.plan.resources import DEFAULT_CLUSTER_WAIT_S, ClusterOptions, GpuMemory, Resources, awaits_gpu_memory, cluster_address, fmt_resources, gpu_share, local_resources, plan_resources
from ablations.store.collector import Collector
from ablations.store.ledger import Ledger
from ablations.command.progress import Eta, Progress, duration, estimate_comparison, labels
from ablations.driver.session import Session
from ablations.driver.trackers import DEFAULT_LOG, TRACKERS, Trackers, parse_log
from ablations.command.dryrun import (
    data_sizes,
    estimate_target,
    planned_gpu,
    print_dry_run,
    trial_estimates,
    trial_estimator,
    wall_estimate,
)
from ablations.plan.compared import comparisons_from_plan
from ablations.plan.gpu_memory import heaviest
from ablations.report.timing import where_the_time_went
from ablations.store.results import RunFolder, RunFolderError, now
from ablations.store.runfolder import plan_in_folder, refuse_stale, results_mirror, run_meta, start_folder
from ablations.plan.speeds import DEFAULT_GPU, GPU

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
    r.add_argument("--gpus-per-trial", type=gpu_share, default="auto", metavar="F|auto",
                   help="GPU share per trial worker, e.g. 0.25 packs 4 trials per GPU; auto: one-worker trials share "
                        "a GPU as far as its memory holds the heaviest planned trial's peak (measured peaks per "
                        "backbone and resolution, with a margin), at most 4, and no more than the CPUs per GPU feed "
                        "(--cpus-per-trial each); the plan line says what it chose and why")
    r.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="each GPU's memory for --gpus-per-trial auto (default: measured on a trial's node by the "
                        "preflight; with --dry-run, --gpu-model's, or this machine's GPU)")
    r.add_argument("--trial-gpu-memory", type=float, metavar="GIB",
                   help="the heaviest trial's peak GPU memory for --gpus-per-trial auto (default: from the measured "
                        "peaks of ablations/plan/gpu_memory.py)")
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

# ----------------------------------------------------------------------------- a command, top to bottom


def run(args) -> int:
    if args.dry_run:
        return dry_run(args)
    command = Command(args)
    command.prepare()
    command.execute()
    return command.finalize()


def dry_run(args) -> int:
    from pipeline import data as D

    parse_log(args.log)  # an unknown tracker is bad input here too
    plan = make_plan(args)
    settings = A.settings_from_args(args, min(A.planned_seeds(plan).values()))
    if settings is not None:
        settings.check(max(A.planned_seeds(plan).values()))
    counts = D.count(args.data)  # the data's own images per class; limits it cannot meet are refused here too
    sizes = data_sizes(plan, counts)
    opts = ClusterOptions.from_args(args)
    cluster, note = local_resources(opts)
    trials = plan.trials()
    res = plan_resources(opts, cluster, len(trials), peak=heaviest(trials.values()), gpu=planned_gpu(args.gpu_model))
    print_dry_run(plan, res, args.json, note, (args.gpu_speed, args.gpu_model), settings, counts, sizes)
    return 0


class Command:
    """One ``python -m ablations.run`` command: ``prepare`` (plan, folder, data; nothing written), ``execute``
    (Ray: the pending trials, then the adaptive rounds), ``finalize`` (tables, run.json, report, exit code)."""

    def __init__(self, args):
        self.args, self.opts = args, ClusterOptions.from_args(args)
        self.gpu = (args.gpu_speed, args.gpu_model)
        self.t0 = time.time()
        self.ran: list[str] = []  # the trials this session ran
        self.interrupted, self.estimated_wall, self.slots = False, 0.0, 0
        self.rounds: A.Rounds | None = None

    # ------------------------------------------------------------------ 1. prepare

    def prepare(self) -> None:
        """The plan in its folder, the data split, the ledger; one line of bad input before anything is written."""
        args = self.args
        tracker_names = parse_log(args.log)
        plan = make_plan(args)
        self.planned = A.planned_seeds(plan)  # the grid's own seeds, before the folder's plan is merged in
        self.settings = A.settings_from_args(args, min(self.planned.values()))
        if self.settings is not None:
            self.settings.check(max(self.planned.values()))
        self.folder = RunFolder(Path(args.results) / (args.name or plan.grid))
        self.mirror = results_mirror(self.folder, args.storage)  # with a remote --storage: the folder's copy there
        self.trackers = Trackers(tracker_names, self.folder.path / "logs", self.folder.path.name)
        self.trackers.check()
        self._prepare_data(plan)
        self.storage = args.storage or str((self.folder.path / "ray").resolve())
        self.meta = run_meta(self.plan, self.folder, self.source, self.fingerprint, self.splits, self.storage,
                             self.old_meta, self.stored)
        self.ledger = Ledger(self.folder, self.plan)
        self.collector = Collector(self.folder, args.keep_models, set(self.plan.parents().values()))
        self.pending = self.ledger.pending()
        refuse_stale(self.folder, self.ledger)
        print(f"run folder {self.folder.path}: {len(self.ledger.trials) - len(self.pending)} of "
              f"{len(self.ledger.trials)} trials already finished", flush=True)
        self._prepare_rounds()

    def _prepare_data(self, plan: grids.Plan) -> None:
        """The data decoded (or read from its cache) at its stored size, the folder checked against it, the
        splits; limits the data cannot meet are one line (``pipeline.data.split_counts``)."""
        from pipeline import data as D

        self.source = D.resolve_source(self.args.data)
        size = stored_size_wanted(plan, self.folder)
        cap = max(c.resolution for c in plan.trials().values())  # mixed sizes are stored at most this large
        cached = D.was_cached(self.source, data_size=size, largest_resolution=cap)
        ds = D.load(self.source, data_size=size, largest_resolution=cap)
        self.fingerprint, self.stored = ds.fingerprint, ds.stored()
        self.plan, self.old_meta = plan_in_folder(self.folder, plan, self.fingerprint, self.args.extend)
        if self.args.resume and self.old_meta is None:
            raise RunFolderError(f"--resume: {self.folder.path} holds no run to resume")
        if self.settings is not None:
            self.settings.check(max(self.planned.values()), (self.old_meta or {}).get("adaptive"))
        s = self.plan.data_settings()
        self.splits = D.make_splits(ds, val_size=s["val_size"], split_seed=s["split_seed"],
                                    train_per_class=s["train_per_class"], test_per_class=s["test_per_class"])
        print(f"data: {self.source} ({'cache' if cached else 'decoded'} in {time.time() - self.t0:.1f} s; "
              f"{D.describe_stored(self.stored)}); {self.splits.describe()}", flush=True)

    def _prepare_rounds(self) -> None:
        """--until-decided: the rounds of seeds (``driver.adaptive``); a later fixed run keeps a folder's adaptive
        record, so that its verdicts stay anytime-valid."""
        old = self.old_meta or {}
        if self.settings is None:
            if old.get("adaptive"):
                self.meta["adaptive"] = old["adaptive"]
            return
        spent_before = sum(float(x.get("wall_s") or 0) for x in old.get("sessions", [])) / 3600
        folder, splits = self.folder, self.splits
        self.rounds = A.Rounds(
            self.ledger, self.settings, self.planned, comparisons_from_plan(self.plan),
            spent_hours=lambda: spent_before + (time.time() - self.t0) / 3600,
            class_recall=A.recall_from_logits(lambda t: folder.read_logits(t) if folder.logits_path(t).exists()
                                              else None, splits.val_y, len(splits.classes)),
            classes=list(splits.classes))

    # ------------------------------------------------------------------ 2. execute

    def execute(self) -> None:
        """Ray only when there is something to run: the pending trials, or a first round of added seeds."""
        first = self.rounds.next() if self.rounds is not None and not self.pending else None
        if not self.pending and (first is None or first.stop_reason):
            if first is not None:
                print(first.line(), flush=True)
            start_folder(self.folder, self.meta, self.splits, self.ledger, self.mirror)
            return

        connect(self.opts)
        install_stop_handlers()  # ray.init's failure handler took SIGTERM over (it would exit without the finally)
        self.demand = None
        try:
            self._start()
            if self.pending:
                self.run_trials(self.pending)
            if self.rounds is not None:
                self._run_rounds()
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            if self.demand is not None:
                self.demand.clear()  # a request to the autoscaler stays in force until withdrawn
            if self.folder.exists():
                self.ledger.close()
                if self.mirror:
                    self.mirror.push()
            disconnect()  # stops a local instance; only disconnects from a cluster given by --address

    def _start(self) -> None:
        """Resources, the preflight, the folder's first writes, the estimates, the session and the shared data."""

        wanted = max(len(self.pending), len(A.compared_configs(self.rounds.comparisons)) if self.rounds else 0)
        peak = heaviest(self.plan.trials().values())
        res = cluster_resources(self.opts, wanted, peak)
        # the preflight waits (at most --wait-for-resources) for one node that can run a trial (its placement group
        # is the autoscaler's only demand so far), then checks CUDA / NCCL / the storage there, and measures the
        # GPU's memory that --gpus-per-trial auto packs trials into; only then does the autoscaler hear of every
        # trial to run (a failed preflight launches no more nodes)
        if preflight.needed(res, bool(cluster_address(self.opts))):
            found = preflight.run(res, wait_seconds(self.opts), self.storage, bool(self.args.storage))
            print(found.line, flush=True)
            if awaits_gpu_memory(self.opts, res):  # packed as the GPU measured allows (none: one trial per GPU)
                res = cluster_resources(self.opts, wanted, peak, found.gpu or GpuMemory())
        self.res = res
        self.slots = res.concurrency
        self.demand = AutoscalerDemand(res, enabled=bool(cluster_address(self.opts)))
        self.demand.update(len(self.pending))
        start_folder(self.folder, self.meta, self.splits, self.ledger, self.mirror)
        self.sizes = (len(self.splits.train_y), len(self.splits.val_y), len(self.splits.test_y))
        estimates = trial_estimates({t: self.ledger.trials[t] for t in self.pending}, res, self.sizes, self.gpu)
        self.estimated_wall = wall_estimate(estimates, res, estimate_target(res, self.gpu))  # the dry run's
        self.progress = Progress(labels(self.plan), self.ledger.counts, Eta(estimates, res.concurrency),
                                 quiet=self.args.quiet, start=self.t0)
        self.progress.status(force=True)
        self.session = Session(self.ledger, self.collector, self.progress, self.args.retries,
                               on_change=self.mirror.push if self.mirror else None)  # every finished trial goes up
        self.data = {"ref": share({**self.splits.arrays(), "train_idx": self.splits.train_idx}),  # the index keys
                     "classes": list(self.splits.classes)}                                          # augmentation

    def run_trials(self, tids: list[str]) -> None:
        from ablations.driver.tune import run_in_lineage_order

        self.ran.extend(tids)
        run_in_lineage_order(self.session, tids, self.res, self.data, self.storage, self.args.retries,
                             self.args.verbose, self.demand, self.trackers.callbacks)

    def _run_rounds(self) -> None:
        self.seconds = trial_estimator(self.res, self.sizes, self.gpu)
        self.rounds.cost_hours = lambda p: A.config_hours(
            p, self.seconds, self.progress.eta.factor / self.res.concurrency / 3600)
        self.rounds.run(self.run_trials, self.progress.say, self._round_grew)

    def _round_grew(self, new_plan: grids.Plan, new: list[str]) -> None:
        """A round's seeds joined the plan: run.json first (a resumed run finds them), then the progress."""
        self.meta.update(plan=new_plan.to_json(), trial_ids=sorted(new_plan.trials()), adaptive=self.rounds.record())
        self.folder.write_meta(self.meta)
        self.collector.parents.update(new_plan.parents().values())
        configs = new_plan.trials()
        est = {t: self.seconds(configs[t]) for t in new}
        self.estimated_wall += sum(est.values()) / self.res.concurrency
        names = labels(new_plan)
        self.progress.add({t: names[t] for t in new}, est)
        self.demand.update(len(new))

    # ------------------------------------------------------------------ 3. finalize

    def finalize(self) -> int:
        ledger, rounds = self.ledger, self.rounds
        if rounds is not None:
            self.meta.update(plan=ledger.plan.to_json(), trial_ids=sorted(ledger.plan.trials()),
                             adaptive=rounds.record())
        if not ledger.pending():
            self.collector.prune_models(ledger.rows())
        wall = time.time() - self.t0
        self.meta.update(updated=now(), finished=None if ledger.pending() or stopped_adding(rounds) else now(),
                         sessions=[*(self.old_meta or {}).get("sessions", []), self._session_times(wall)])
        self.folder.write_meta(self.meta)
        self._report()
        c = ledger.counts
        print(f"{c['finished']}/{len(ledger.trials)} done, {c['failed']} failed, {c['running'] + c['pending']} not "
              f"run, in {duration(wall)}")
        if self.ran:
            print(estimate_comparison(wall, self.estimated_wall, len(self.ran)))
        return self._exit_code()

    def _session_times(self, wall: float) -> dict:
        """This command's entry in run.json's ``sessions``: its wall time against the dry run's estimate, and
        where the time of the trials it ran went."""
        from pipeline.provenance import code_version

        out = {"started": now(), "wall_s": round(wall, 1), "estimated_wall_s": round(self.estimated_wall, 1),
               "trials_run": len(self.ran), "interrupted": self.interrupted, "code_version": code_version()}
        if getattr(self, "res", None) is not None:  # what each trial held, how many ran at once, how, and why
            out["resources"] = dataclasses.asdict(self.res)
        if self.ran:
            import pandas as pd

            ran = set(self.ran)
            out["time"] = where_the_time_went(pd.DataFrame([r for r in self.ledger.rows() if r["trial_id"] in ran]),
                                              wall, self.slots)
        return out

    def _report(self) -> None:
        if not self.args.no_report:
            from ablations.report import write_report

            print(f"report: {write_report(self.folder.path)}")
            for line in self.trackers.log_report(self.folder.path):
                print(line)
        if self.mirror:
            self.mirror.push()
            print(f"results mirrored to {self.mirror.uri}")

    def _exit_code(self) -> int:
        ledger = self.ledger
        if self.interrupted or ledger.with_status("pending", "running") or stopped_adding(self.rounds):
            print(f"{'interrupted' if self.interrupted else 'stopped'}: run the same command again to continue "
                  f"({len(ledger.pending())} trials left; finished trials are kept)")
            return EXIT_INTERRUPTED
        failed = ledger.with_status("failed")
        if failed:
            print(f"{len(failed)} trial(s) failed (see the error column of trials.parquet and REPORT.md); run the "
                  f"same command again to retry them")
            return EXIT_FAILED_TRIALS
        return 0


def stored_size_wanted(plan: grids.Plan, folder: RunFolder) -> int:
    """The side to store images at: the grid's ``data_size``; if it leaves the choice to the data (0), the size a
    run in this folder stored them at, so that a resumed or extended run finds the same data."""
    size = plan.data_settings()["data_size"]
    if size or not folder.exists():
        return size
    return int(((folder.read_meta().get("data") or {}).get("stored") or {}).get("size") or 0)


def stopped_adding(rounds: A.Rounds | None) -> bool:
    """The adaptive rounds stopped before the planner did (interrupted, or a round's trials did not end)."""
    return rounds is not None and (rounds.last is None or rounds.last.stop_reason is None)

def wait_seconds(opts: ClusterOptions) -> float:
    """How long the preflight waits for a node: --wait-for-resources, by default long enough for a cloud GPU
    node to boot on a cluster, and a minute (a hang guard: resources were checked) on a local instance."""
    if opts.wait_for_resources is not None:
        return max(opts.wait_for_resources, 0.0)
    return DEFAULT_CLUSTER_WAIT_S if cluster_address(opts) else 60.0


def cluster_resources(opts: ClusterOptions, n_trials: int, peak=None, gpu: GpuMemory | None = None) -> Resources:
    """Per-trial resources on the connected cluster (``plan.resources.plan_resources``), printed. ``gpu``: the
    GPU the preflight measured (before it: --gpus-per-trial auto plans one trial per GPU, and says that the
    preflight measures next)."""

    cluster = resources()
    on_cluster = bool(cluster_address(opts))
    res = plan_resources(opts, cluster, n_trials, on_cluster=on_cluster,
                         head_memory_mib=head_memory_mib() if on_cluster else None,
                         max_resources=max_cluster_resources() if on_cluster else None, peak=peak, gpu=gpu)
    if gpu is None and awaits_gpu_memory(opts, res):
        res.packing = (f"1 trial per {res.gpu_resource} for the preflight, which measures the GPU's memory to pack "
                       f"trials into")
    print(f"ray: {fmt_resources(cluster)}; {res.describe()}", flush=True)
    return res


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
