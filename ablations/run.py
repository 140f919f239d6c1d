"""``python -m ablations.run``: expand a grid, run every trial on Ray, write the results folder and report.

Top to bottom: ``prepare(args)`` (the plan, the folder, the data; nothing written), ``execute(prepared)`` (Ray:
the pending trials, then the adaptive rounds), ``finalize(prepared, outcome)`` (tables, run.json, report, exit
code), in ``ablations.command.run``; ``--dry-run`` prints the plan instead (``ablations.command.dryrun``).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import UserError, one_line

from ablations.command.dryrun import dry_run
from ablations.command.run import EXIT_BAD_INPUT, EXIT_INTERRUPTED, execute, finalize, install_stop_handlers, prepare
from ablations.driver.trackers import DEFAULT_LOG, TRACKERS
from ablations.plan import grids
from ablations.plan.resources import DEFAULT_CLUSTER_WAIT_S, gpu_share
from ablations.plan.speeds import DEFAULT_GPU, GPU
from ablations.session import rounds as A

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


def run(args) -> int:
    if args.dry_run:
        return dry_run(args)
    prepared = prepare(args)
    outcome = execute(prepared)
    return finalize(prepared, outcome)


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
