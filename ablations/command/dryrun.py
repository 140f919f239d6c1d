"""The plan as ``--dry-run`` prints it, and the time estimates a run and its dry run share.

``print_dry_run``: trials per level and axis, lineage, claims, ensembles, resources and the estimated time (the
trials' estimated seconds, ``ablations.plan.estimate``, over the concurrency the resources allow), and with
``--until-decided`` the rounds' plan and worst case. Starts no Ray.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

from pipeline import data as D

from ablations.driver.spec import with_execution
from ablations.plan import grids
from ablations.plan.compared import comparisons_from_plan
from ablations.plan.estimate import Target, plan_seconds, trial_seconds
from ablations.plan.gpu_memory import GPU_MEMORY_MIB
from ablations.plan.resources import GpuMemory, Resources
from ablations.plan.speeds import DEFAULT_GPU, GPU_NAMES
from ablations.session import rounds as A
from ablations.stats import sequential as Q

GpuChoice = tuple[float, "str | None"]  # (--gpu-speed, --gpu-model) for the estimate


def data_sizes(plan: grids.Plan, counts: D.Counts) -> tuple[int, int, int]:
    """(train, val, test) images a run of the plan takes from data with these counts (``pipeline.data``'s
    ``split_counts``: limits the data cannot meet are one ``DataError`` line)."""
    s = plan.data_settings()
    n = D.split_counts(counts.classes, counts.train, counts.test, s["val_size"], s["split_seed"],
                       s["train_per_class"], s["test_per_class"])
    return n["train"], n["val"], n["test"]


def print_dry_run(plan: grids.Plan, res: Resources, as_json: bool, note: str, gpu: GpuChoice,
                  adaptive: A.Settings | None, counts: D.Counts, sizes: tuple[int, int, int]) -> None:
    """``sizes``: ``data_sizes(plan, counts)``."""
    trials = plan.trials()
    n_train, n_val, n_test = sizes
    claims = grids.describe_claims(plan, counts.classes)
    if as_json:
        cfgs = {tid: with_execution(cfg, res).to_dict() for tid, cfg in trials.items()}
        rows = [{**p.row(), **cfgs[p.trial_id]} for p in plan.points]
        out = {"grid": plan.grid, "resources": res.__dict__, "points": rows,
               "data": {"source": counts.source, "classes": list(counts.classes), "train": n_train, "val": n_val,
                        "test": n_test, "counted": counts.how},
               "claims": claims, "ensembles": grids.describe_ensembles(plan),
               "lineage": grids.describe_lineage(plan)}
        if adaptive is not None:
            out["until_decided"] = until_decided_plan(plan, adaptive, res, gpu, sizes)
        print(json.dumps(out, indent=1))
        return
    from tabulate import tabulate

    seeds = len({p.seed for p in plan.points})
    print(f"grid {plan.grid}: {len(trials)} trials ({len(plan.points)} plan points), {seeds} seed(s) each")
    print(f"data: {counts.source}: train {n_train}, val {n_val}, test {n_test} images of {len(counts.classes)} classes "
          f"({counts.how})")
    print(tabulate(grids.summarize(plan), headers="keys", tablefmt="github"))
    if plan.eval_axes:
        print(f"evaluation-only axes (computed from stored logits, no extra trials): {', '.join(plan.eval_axes)}")
    for title, lines in (("init_from (trained models carried from one level to the next)", grids.describe_lineage(plan)),
                         ("claims (verdicts in REPORT.md)", claims),
                         ("ensembles (formed by the report from stored logits)", grids.describe_ensembles(plan))):
        print(f"{title}:" + "".join(f"\n  {line}" for line in lines) if lines else f"{title}: none")
    print(f"resources: {res.describe()}{note}")
    print(estimate_line(trials, res, sizes, gpu))
    if adaptive is not None:
        print("\n".join(until_decided_lines(plan, adaptive, res, gpu, sizes)))


def until_decided_plan(plan: grids.Plan, settings: A.Settings, res: Resources, gpu: GpuChoice,
                       sizes: tuple[int, int, int]) -> dict:
    """--dry-run --until-decided: the planned seeds, the comparisons that drive the rounds, and the worst case
    (every compared config at --max-seeds) with its estimated time (``sizes``: the run's train, val and test
    images)."""
    comps = comparisons_from_plan(plan)
    planned = A.planned_seeds(plan)
    worst = Q.worst_case(comps, planned, settings.max_seeds)
    # its added time: the whole worst-case plan's estimate less the planned one's (on CPUs, prefix-cache entries
    # the added seeds share are paid once, as in the dry run's own estimate line)
    added_s = (sum(trial_estimates(A.worst_case_plan(plan, comps, settings.max_seeds).trials(), res, sizes,
                                   gpu).values()) - sum(trial_estimates(plan.trials(), res, sizes, gpu).values()))
    worst = dataclasses.replace(worst, hours=max(added_s, 0.0) / res.concurrency / 3600)
    family = 2 * max(len(comps), 1)
    earliest = next((n for n in range(2, settings.max_seeds + 1)
                     if math.isfinite(settings.procedure.critical_t(n, settings.alpha / family))), None)
    return {**settings.meta(), "planned_seeds": sorted(set(planned.values())),
            "comparisons": [str(c.id) for c in comps], "compared_configs": len(A.compared_configs(comps)),
            "earliest_decision_seeds": earliest, "worst_case_trials": worst.trials,
            "worst_case_added_trials": worst.added_trials, "worst_case_added_hours": worst.hours,
            "worst_case_line": worst.line()}


def until_decided_lines(plan: grids.Plan, settings: A.Settings, res: Resources, gpu: GpuChoice,
                        sizes: tuple[int, int, int]) -> list[str]:
    u = until_decided_plan(plan, settings, res, gpu, sizes)
    comps = comparisons_from_plan(plan)
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
            f"  worst case {estimate_line(worst.trials(), res, sizes, gpu)}"]


def estimate_target(res: Resources, gpu: GpuChoice = (1.0, None)) -> Target:
    """What the estimate is for: the resources' device, trials per GPU, CPUs and runner, and the GPU model (given,
    else this machine's GPU where a speed table names it, else the default)."""
    on_gpu = res.device == "cuda"
    per_gpu = min(round(1 / res.gpus), res.concurrency) if on_gpu and res.gpus < 1 else 1  # trials sharing a GPU
    speed, model = gpu
    return Target(gpu=on_gpu, gpu_model=model or local_gpu_model(), gpu_speed=speed, per_gpu=per_gpu,
                  cpus=res.cpus, runner=res.runner)


def planned_gpu(gpu_model: str | None) -> GpuMemory:
    """The GPU a dry run packs trials into (--gpus-per-trial auto): --gpu-model's memory, else this machine's first
    GPU (nvidia-smi), else the default model's."""
    if gpu_model:
        return GpuMemory(GPU_MEMORY_MIB[gpu_model], name=gpu_model)
    from ablations.driver.preflight import nvidia_gpus

    here = nvidia_gpus()
    if here:
        name, total, _ = here[0]
        return GpuMemory(total, name=name)
    return GpuMemory(GPU_MEMORY_MIB[DEFAULT_GPU], name=DEFAULT_GPU)


@functools.cache
def local_gpu_model() -> str:
    try:
        import torch

        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    except Exception:  # noqa: BLE001 - no usable CUDA: the default table
        name = ""
    return next((model for model, prefix in GPU_NAMES.items() if name.startswith(prefix)), DEFAULT_GPU)


def trial_estimator(res: Resources, sizes: tuple[int, int, int], gpu: GpuChoice = (1.0, None)):
    """config -> its estimated seconds alone (``ablations.plan.estimate.trial_seconds``: it pays for every prefix-cache
    entry it reads, so a round of added seeds is costed on the safe side)."""
    target = estimate_target(res, gpu)
    return lambda c: trial_seconds(c, *sizes, target)


def trial_estimates(configs: dict[str, Any], res: Resources, sizes: tuple[int, int, int],
                    gpu: GpuChoice = (1.0, None), target: Target | None = None) -> dict[str, float]:
    """Each trial's estimated seconds (``ablations.plan.estimate.plan_seconds``): measured speeds, on CPUs the prefix
    cache's entries paid for once, packed GPU trials slowed by their measured sharing of a GPU."""
    return plan_seconds(configs, *sizes, target or estimate_target(res, gpu))


def wall_estimate(estimates: dict[str, float], res: Resources, target: Target) -> float:
    """A run's estimated wall time: its trials' estimated seconds over the concurrency, and its start once."""
    return sum(estimates.values()) / res.concurrency + target.start_s


def estimate_line(configs: dict[str, Any], res: Resources, sizes: tuple[int, int, int],
                  gpu: GpuChoice = (1.0, None)) -> str:
    """The dry run's time estimate: the trials' estimated seconds, the wall time they take over the concurrency
    the resources allow with the run's start (``wall_estimate``), and what in it is not a measurement."""
    target = estimate_target(res, gpu)
    total = sum(trial_estimates(configs, res, sizes, target=target).values())
    wall = wall_estimate({"all": total}, res, target)
    basis = target.describe()
    if target.gpu:
        gpus_used = max(1.0, res.concurrency * res.gpus * res.workers)
        basis += f", {res.concurrency} trials on {gpus_used:g} GPU(s); {wall / 3600 * gpus_used:.2f} GPU-hours"
    line = (f"estimated time: {total / 60:.1f} trial-minutes, about {wall / 60:.1f} min wall with "
            f"{res.concurrency} concurrent ({basis}; rough)")
    return line + "".join(f"\n  estimate note: {n}" for n in sorted(target.notes))


def dry_run(args) -> int:
    """``--dry-run``: the plan, each trial's resources and the time estimate; no Ray, nothing written."""
    from pipeline import data as D

    from ablations.command.planned import planned
    from ablations.driver.trackers import parse_log
    from ablations.plan.gpu_memory import heaviest
    from ablations.plan.resources import ClusterOptions, local_resources, plan_resources

    parse_log(args.log)  # an unknown tracker is bad input here too
    p = planned(args)
    counts = D.count(args.data)  # the data's own images per class; limits it cannot meet are refused here too
    sizes = data_sizes(p.plan, counts)
    opts = ClusterOptions.from_args(args)
    cluster, note = local_resources(opts)
    trials = p.plan.trials()
    res = plan_resources(opts, cluster, len(trials), peak=heaviest(trials.values()), gpu=planned_gpu(args.gpu_model))
    print_dry_run(p.plan, res, args.json, note, (args.gpu_speed, args.gpu_model), p.settings, counts, sizes)
    folder = Path(args.results) / (args.name or p.plan.grid)
    if p.settings is not None and not args.json and (folder / "trials.parquet").exists():
        print("\n".join(first_round_on(folder, p.settings)))
    return 0


def first_round_on(folder: Path, settings: A.Settings) -> list[str]:
    """What --until-decided's first round would add to the run in ``folder``: its plan, decided on the run's
    validation numbers (never test), each added seed of a config costed at what its first seed took (with its
    ``init_from`` parent's), one trial at a time. Reads a copy of the folder (its logits and labels.npz stay on
    the machine that ran it); changes nothing."""
    import shutil
    import tempfile

    import numpy as np
    import pandas as pd

    from pipeline.ids import trial_id

    from ablations.plan.compared import comparisons_from_plan
    from ablations.report.adaptive import run_plan
    from ablations.report.rundata import RunData
    from ablations.store.ledger import Ledger
    from ablations.store.results import RunFolder

    if not (folder / "labels.npz").exists():
        return [f"--until-decided on {folder}: no labels.npz there (the machine that ran it keeps it): no preview"]
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / folder.name
        shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("ray", "models", "logs"))
        copy = RunFolder(dst)
        plan = run_plan(RunData(dst))
        labels = np.load(dst / "labels.npz", allow_pickle=True)
        classes = [str(c) for c in labels["classes"]]
        recall = A.recall_from_logits(lambda t: copy.read_logits(t) if copy.logits_path(t).exists() else None,
                                      labels["val"], len(classes))
        rows = pd.read_parquet(dst / "trials.parquet")
        measured = dict(zip(rows.trial_id, rows["trial_seconds"])) if "trial_seconds" in rows else {}
        ledger = Ledger(copy, plan)
        ledger.open()
        rounds = A.Rounds(ledger, settings, A.planned_seeds(plan), comparisons_from_plan(plan),
                          class_recall=recall, classes=classes,
                          cost_hours=lambda pl: A.config_hours(pl, lambda cfg: measured.get(trial_id(cfg), 0.0),
                                                               1 / 3600))
        rp = rounds.next()
        ledger.close()
    return [f"--until-decided on the run in {folder} ({settings.test}, cap {settings.max_seeds}), on its validation "
            f"numbers and measured trial times: {rp.line()}",
            f"  decided on validation: {', '.join(map(str, rp.decided)) or 'none'}",
            f"  open: {', '.join(map(str, [*rp.open, *rp.at_cap])) or 'none'}",
            f"  configs given another seed: {len(rp.add_seeds)}"]
