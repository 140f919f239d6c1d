"""One ``python -m ablations.run`` command, in three steps that hand each other values:

  1. ``prepare(args) -> Prepared``: the grid's plan (``ablations.plan.grids``), the run folder checked (another grid
     or data refused; the same plan resumes; ``ablations.store.runfolder``), the data decoded once (disk cache) and
     split, the ledger and the adaptive rounds. Bad input is one line here, before anything is written.
  2. ``execute(prepared) -> Outcome``: Ray (``ablations.driver``): connect, the cluster's resources against a
     trial's, the preflight (a node for a trial, CUDA, NCCL, the storage), the data in the object store once, then
     Tune runs one trial per pending config (``driver.tune``), in waves along ``init_from`` lineage, and
     ``--until-decided`` adds rounds of seeds (``session.rounds``). Every event is one line in the ledger
     (``store.ledger``), each finished trial's logits and weights are copied into the run folder
     (``store.collector``), status lines say how long remains (``session.progress``).
  3. ``finalize(prepared, outcome) -> exit code``: the ledger compacted into trials.parquet and epochs.parquet,
     run.json's session, the report (``ablations.report``), the mirror under a remote --storage.
"""
from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.command.dryrun import estimate_target, trial_estimates, trial_estimator, wall_estimate
from ablations.command.planned import Planned, planned
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
from ablations.driver.trackers import Trackers, parse_log
from ablations.driver.tune import TuneRun, run_in_lineage_order
from ablations.plan import grids
from ablations.plan.compared import comparisons_from_plan
from ablations.plan.gpu_memory import Peak, heaviest
from ablations.plan.resources import (
    DEFAULT_CLUSTER_WAIT_S,
    ClusterOptions,
    GpuMemory,
    Resources,
    awaits_gpu_memory,
    cluster_address,
    fmt_resources,
    plan_resources,
)
from ablations.report.timing import where_the_time_went
from ablations.session import rounds as A
from ablations.session.events import Session
from ablations.session.progress import Eta, Progress, duration, estimate_comparison, labels
from ablations.store.collector import Collector
from ablations.store.ledger import Ledger
from ablations.store.mirror import Mirror
from ablations.store.results import RunFolder, RunFolderError, now
from ablations.store.runfolder import plan_in_folder, refuse_stale, results_mirror, run_meta, start_folder

EXIT_BAD_INPUT = 2
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- 1. prepare


@dataclass(frozen=True)
class Prepared:
    """Everything the command knows before Ray starts. ``plan`` is the folder's (this command's points merged
    into it), ``seeds`` the grid's own seeds per config."""

    args: Any
    opts: ClusterOptions
    t0: float
    plan: grids.Plan
    seeds: dict[str, int]
    settings: A.Settings | None
    folder: RunFolder
    mirror: Mirror | None
    trackers: Trackers
    source: str
    splits: Any
    storage: str
    meta: dict
    old_meta: dict | None
    ledger: Ledger
    collector: Collector
    pending: list[str]
    rounds: A.Rounds | None

    @property
    def gpu(self) -> tuple[float, str | None]:
        return self.args.gpu_speed, self.args.gpu_model


def prepare(args) -> Prepared:
    """The plan in its folder, the data split, the ledger; one line of bad input before anything is written."""
    from pipeline import data as D

    t0 = time.time()
    tracker_names = parse_log(args.log)
    name = args.name or grids.load_spec(args.grid)[0]
    folder = RunFolder(Path(args.results) / name)
    mirror = results_mirror(folder, args.storage)  # with a remote --storage: the folder's copy there
    before = folder.read_meta() if folder.run_json.exists() else None
    p = planned(args, (before or {}).get("adaptive"))
    trackers = Trackers(tracker_names, folder.path / "logs", folder.path.name)
    trackers.check()
    source = D.resolve_source(args.data)
    size = stored_size_wanted(p.plan, folder)
    cap = max(c.resolution for c in p.plan.trials().values())  # mixed sizes are stored at most this large
    cached = D.was_cached(source, data_size=size, largest_resolution=cap)
    ds = D.load(source, data_size=size, largest_resolution=cap)
    plan, old_meta = plan_in_folder(folder, p.plan, ds.fingerprint, args.extend)
    if args.resume and old_meta is None:
        raise RunFolderError(f"--resume: {folder.path} holds no run to resume")
    s = plan.data_settings()
    splits = D.make_splits(ds, val_size=s["val_size"], split_seed=s["split_seed"],
                           train_per_class=s["train_per_class"], test_per_class=s["test_per_class"])
    print(f"data: {source} ({'cache' if cached else 'decoded'} in {time.time() - t0:.1f} s; "
          f"{D.describe_stored(ds.stored())}); {splits.describe()}", flush=True)
    storage = args.storage or str((folder.path / "ray").resolve())
    meta = run_meta(plan, folder, source, ds.fingerprint, splits, storage, old_meta, ds.stored())
    ledger = Ledger(folder, plan)
    collector = Collector(folder, args.keep_models, set(plan.parents().values()))
    pending = ledger.pending()
    refuse_stale(folder, ledger)
    print(f"run folder {folder.path}: {len(ledger.trials) - len(pending)} of {len(ledger.trials)} trials already "
          f"finished", flush=True)
    rounds = None
    if p.settings is None:  # a later fixed run keeps a folder's adaptive record: its verdicts stay anytime-valid
        if (old_meta or {}).get("adaptive"):
            meta["adaptive"] = old_meta["adaptive"]
    else:
        rounds = adaptive_rounds(p, plan, ledger, folder, splits, old_meta, t0)
    return Prepared(args, ClusterOptions.from_args(args), t0, plan, p.seeds, p.settings, folder, mirror, trackers,
                    source, splits, storage, meta, old_meta, ledger, collector, pending, rounds)


def stored_size_wanted(plan: grids.Plan, folder: RunFolder) -> int:
    """The side to store images at: the grid's ``data_size``; if it leaves the choice to the data (0), the size a
    run in this folder stored them at, so that a resumed or extended run finds the same data."""
    size = plan.data_settings()["data_size"]
    if size or not folder.exists():
        return size
    return int(((folder.read_meta().get("data") or {}).get("stored") or {}).get("size") or 0)


def adaptive_rounds(p: Planned, plan: grids.Plan, ledger: Ledger, folder: RunFolder, splits, old_meta: dict | None,
                    t0: float) -> A.Rounds:
    """--until-decided: the rounds of seeds (``session.rounds``); the budget counts every session's wall time."""
    spent_before = sum(float(x.get("wall_s") or 0) for x in (old_meta or {}).get("sessions", [])) / 3600
    return A.Rounds(
        ledger, p.settings, p.seeds, comparisons_from_plan(plan),
        spent_hours=lambda: spent_before + (time.time() - t0) / 3600,
        class_recall=A.recall_from_logits(lambda t: folder.read_logits(t) if folder.logits_path(t).exists()
                                          else None, splits.val_y, len(splits.classes)),
        classes=list(splits.classes))


# ----------------------------------------------------------------------------- 2. execute


@dataclass
class Outcome:
    """What executing did: the trials this session ran, whether it was interrupted, the dry run's estimate of its
    wall time, the trial slots and resources it had, and the adaptive rounds as they ended."""

    ran: list[str] = field(default_factory=list)
    interrupted: bool = False
    estimated_wall: float = 0.0
    slots: int = 0
    res: Resources | None = None
    rounds: A.Rounds | None = None


def execute(p: Prepared) -> Outcome:
    """Ray only when there is something to run: the pending trials, or a first round of added seeds."""
    out = Outcome(rounds=p.rounds)
    first = p.rounds.next() if p.rounds is not None and not p.pending else None
    if not p.pending and (first is None or first.stop_reason):
        if first is not None:
            print(first.line(), flush=True)
        start_folder(p.folder, p.meta, p.splits, p.ledger, p.mirror)
        return out
    connect(p.opts)
    install_stop_handlers()  # ray.init's failure handler took SIGTERM over (it would exit without the finally)
    demand = None
    try:
        res = trial_resources(p)
        out.res, out.slots = res, res.concurrency
        demand = AutoscalerDemand(res, enabled=bool(cluster_address(p.opts)))
        demand.update(len(p.pending))
        run = start(p, res, demand, out)
        if p.pending:
            run_trials(run, out, p.pending)
        if p.rounds is not None:
            run_rounds(p, run, out)
    except KeyboardInterrupt:
        out.interrupted = True
    finally:
        if demand is not None:
            demand.clear()  # a request to the autoscaler stays in force until withdrawn
        if p.folder.exists():
            p.ledger.close()
            if p.mirror:
                p.mirror.push()
        disconnect()  # stops a local instance; only disconnects from a cluster given by --address
    return out


def trial_resources(p: Prepared) -> Resources:
    """Each trial's resources on the connected cluster. The preflight waits (at most --wait-for-resources) for one
    node that can run a trial (its placement group is the autoscaler's only demand so far), then checks CUDA /
    NCCL / the storage there, and measures the GPU's memory that --gpus-per-trial auto packs trials into; only
    then does the autoscaler hear of every trial to run (a failed preflight launches no more nodes)."""
    wanted = max(len(p.pending), len(A.compared_configs(p.rounds.comparisons)) if p.rounds else 0)
    peak = heaviest(p.plan.trials().values())
    res = cluster_resources(p.opts, wanted, peak)
    if preflight.needed(res, bool(cluster_address(p.opts))):
        found = preflight.run(res, wait_seconds(p.opts), p.storage, bool(p.args.storage))
        print(found.line, flush=True)
        if awaits_gpu_memory(p.opts, res):  # packed as the GPU measured allows (none: one trial per GPU)
            res = cluster_resources(p.opts, wanted, peak, found.gpu or GpuMemory())
    return res


def start(p: Prepared, res: Resources, demand: AutoscalerDemand, out: Outcome) -> TuneRun:
    """The folder's first writes, the estimates, the progress, the session and the shared data."""
    start_folder(p.folder, p.meta, p.splits, p.ledger, p.mirror)
    sizes = (len(p.splits.train_y), len(p.splits.val_y), len(p.splits.test_y))
    estimates = trial_estimates({t: p.ledger.trials[t] for t in p.pending}, res, sizes, p.gpu)
    out.estimated_wall = wall_estimate(estimates, res, estimate_target(res, p.gpu))  # the dry run's
    progress = Progress(labels(p.plan), p.ledger.counts, Eta(estimates, res.concurrency), quiet=p.args.quiet,
                        start=p.t0)
    progress.status(force=True)
    session = Session(p.ledger, p.collector, progress, p.args.retries,
                      on_change=p.mirror.push if p.mirror else None)  # every finished trial goes up
    data = {"ref": share({**p.splits.arrays(), "train_idx": p.splits.train_idx}),  # the index keys augmentation
            "classes": list(p.splits.classes)}
    return TuneRun(session, res, data, p.storage, p.args.retries, p.args.verbose, demand, p.trackers.callbacks)


def run_trials(run: TuneRun, out: Outcome, tids: list[str]) -> None:
    out.ran.extend(tids)
    run_in_lineage_order(run, tids)


def run_rounds(p: Prepared, run: TuneRun, out: Outcome) -> None:
    """The adaptive rounds, each costed by the dry run's estimate times the session's ETA calibration; each round's
    seeds join run.json, the collector's parents, the progress and the autoscaler's demand before they run."""
    sizes = (len(p.splits.train_y), len(p.splits.val_y), len(p.splits.test_y))
    seconds = trial_estimator(run.res, sizes, p.gpu)
    progress = run.session.progress
    rounds = dataclasses.replace(p.rounds, cost_hours=lambda plan: A.config_hours(
        plan, seconds, progress.eta.factor / run.res.concurrency / 3600))
    out.rounds = rounds

    def grew(new_plan: grids.Plan, new: list[str]) -> None:
        """A round's seeds joined the plan: run.json first (a resumed run finds them), then the progress."""
        p.meta.update(plan=new_plan.to_json(), trial_ids=sorted(new_plan.trials()), adaptive=rounds.record())
        p.folder.write_meta(p.meta)
        p.collector.parents.update(new_plan.parents().values())
        configs = new_plan.trials()
        est = {t: seconds(configs[t]) for t in new}
        out.estimated_wall += sum(est.values()) / run.res.concurrency
        names = labels(new_plan)
        progress.add({t: names[t] for t in new}, est)
        run.demand.update(len(new))

    rounds.run(lambda tids: run_trials(run, out, tids), progress.say, grew)


def wait_seconds(opts: ClusterOptions) -> float:
    """How long the preflight waits for a node: --wait-for-resources, by default long enough for a cloud GPU
    node to boot on a cluster, and a minute (a hang guard: resources were checked) on a local instance."""
    if opts.wait_for_resources is not None:
        return max(opts.wait_for_resources, 0.0)
    return DEFAULT_CLUSTER_WAIT_S if cluster_address(opts) else 60.0


def cluster_resources(opts: ClusterOptions, n_trials: int, peak: Peak | None = None,
                      gpu: GpuMemory | None = None) -> Resources:
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


# ----------------------------------------------------------------------------- 3. finalize


def finalize(p: Prepared, out: Outcome) -> int:
    """The tables, run.json's session, the report and the mirror; the exit code."""
    ledger, rounds = p.ledger, out.rounds
    if rounds is not None:
        p.meta.update(plan=ledger.plan.to_json(), trial_ids=sorted(ledger.plan.trials()), adaptive=rounds.record())
    if not ledger.pending():
        p.collector.prune_models(ledger.rows())
    wall = time.time() - p.t0
    p.meta.update(updated=now(), finished=None if ledger.pending() or stopped_adding(rounds) else now(),
                  sessions=[*(p.old_meta or {}).get("sessions", []), session_times(p, out, wall)])
    p.folder.write_meta(p.meta)
    report(p)
    c = ledger.counts
    print(f"{c['finished']}/{len(ledger.trials)} done, {c['failed']} failed, {c['running'] + c['pending']} not "
          f"run, in {duration(wall)}")
    if out.ran:
        print(estimate_comparison(wall, out.estimated_wall, len(out.ran)))
    return exit_code(p, out)


def session_times(p: Prepared, out: Outcome, wall: float) -> dict:
    """This command's entry in run.json's ``sessions``: its wall time against the dry run's estimate, the code
    that ran, the resources each trial held, and where the time of the trials it ran went."""
    from pipeline.provenance import code_version

    entry = {"started": now(), "wall_s": round(wall, 1), "estimated_wall_s": round(out.estimated_wall, 1),
             "trials_run": len(out.ran), "interrupted": out.interrupted, "code_version": code_version()}
    if out.res is not None:  # what each trial held, how many ran at once, how, and why
        entry["resources"] = dataclasses.asdict(out.res)
    if out.ran:
        import pandas as pd

        ran = set(out.ran)
        entry["time"] = where_the_time_went(pd.DataFrame([r for r in p.ledger.rows() if r["trial_id"] in ran]),
                                            wall, out.slots)
    return entry


def report(p: Prepared) -> None:
    if not p.args.no_report:
        from ablations.report import write_report

        print(f"report: {write_report(p.folder.path)}")
        for line in p.trackers.log_report(p.folder.path):
            print(line)
    if p.mirror:
        p.mirror.push()
        print(f"results mirrored to {p.mirror.uri}")


def exit_code(p: Prepared, out: Outcome) -> int:
    ledger = p.ledger
    if out.interrupted or ledger.with_status("pending", "running") or stopped_adding(out.rounds):
        print(f"{'interrupted' if out.interrupted else 'stopped'}: run the same command again to continue "
              f"({len(ledger.pending())} trials left; finished trials are kept)")
        return EXIT_INTERRUPTED
    failed = ledger.with_status("failed")
    if failed:
        print(f"{len(failed)} trial(s) failed (see the error column of trials.parquet and REPORT.md); run the "
              f"same command again to retry them")
        return EXIT_FAILED_TRIALS
    return 0


def stopped_adding(rounds: A.Rounds | None) -> bool:
    """The adaptive rounds stopped before the planner did (interrupted, or a round's trials did not end)."""
    return rounds is not None and (rounds.last is None or rounds.last.stop_reason is None)
