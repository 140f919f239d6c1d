"""What each trial holds and how many run at once, from the flags and the cluster's resources: ``ClusterOptions``
(the flags that say where and how trials run), ``Resources`` (one trial's worker bundle, the concurrency, the trial
runner), ``plan_resources`` and the GPU packing behind ``--gpus-per-trial auto``. Plain arithmetic on numbers the
caller reads (``ablations.driver.cluster`` reads them from Ray; a dry run from this machine): no Ray here.

Two kinds of cluster:
  * a local instance (no ``--address``): this machine, fixed. Concurrency follows from its resources, and a
    request it can never satisfy (GPUs on a machine without any) fails at once.
  * an existing cluster (``--address``), possibly autoscaling: trials queue for nodes that may join. Where Ray
    publishes the autoscaler's node types, a request no node type can ever satisfy fails at once.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError

from ablations.plan import packing
from ablations.plan.gpu_memory import Peak
from ablations.plan.speeds import M

# How long a run on an existing cluster waits for a node that can run a trial: an AWS GPU instance takes a
# few minutes to boot, and pulling Ray's GPU image onto it several more.
DEFAULT_CLUSTER_WAIT_S = 1200.0

# Head-node memory one concurrent trial holds (its Tune trial actor and Ray Train controller) and the share of the
# head's memory they may take (measured.yaml's head_memory)
HEAD_MIB_PER_TRIAL = float(M["head_memory"]["mib_per_trial"])
HEAD_MEMORY_SHARE = float(M["head_memory"]["share"])


class ResourceError(UserError, RuntimeError):
    """The cluster cannot run what was asked for; one line for the user."""


@dataclass
class Resources:
    cpus: float
    gpus: float
    workers: int
    gpu_resource: str
    concurrency: int
    device_choice: str = "auto"  # --device
    cluster: bool = False  # an existing cluster (--address): trials may queue for nodes
    runner: str = "actor"  # "actor": a one-worker trial runs in its reused Tune actor; "train": a Ray Train run
    packing: str = ""  # --gpus-per-trial auto: trials per GPU and why

    @property
    def device(self) -> str:
        """The device each trial's config asks for. A custom ``--gpu-resource`` only counts slots: Ray assigns no
        GPU ids for it, so 'auto' leaves the choice to the worker (its node's GPU if it has one)."""
        if self.device_choice == "cpu" or not self.gpus:
            return "cpu"
        if self.gpu_resource == "GPU":
            return "cuda"
        return self.device_choice  # auto or cuda

    @property
    def use_gpu(self) -> bool:
        """Whether Ray assigns GPUs to a trial's workers (and Train sets up NCCL between them)."""
        return bool(self.gpus) and self.gpu_resource == "GPU"

    def worker_bundle(self) -> dict[str, float]:
        """One trial worker's resources as a placement-group bundle or Tune/Train resource dict."""
        bundle = {"CPU": self.cpus}
        if self.gpus:
            bundle[self.gpu_resource] = self.gpus
        return bundle

    def ray_options(self) -> dict[str, Any]:
        """One trial worker's resources as options of a Ray task or actor (``.options(**...)``): GPUs as Ray's
        ``num_gpus`` (Ray then assigns the device), a custom --gpu-resource as a plain resource."""
        opts: dict[str, Any] = {"num_cpus": self.cpus}
        if self.use_gpu:
            opts["num_gpus"] = self.gpus
        elif self.gpus:
            opts["resources"] = {self.gpu_resource: self.gpus}
        return opts

    def describe_device(self) -> str:
        if self.device == "auto":
            return (f"device auto: the node's GPU where it has one, else cpu ({self.gpu_resource} is a custom "
                    f"resource, for which Ray assigns no GPU; --device cuda requires one)")
        if self.device == "cuda" and self.gpu_resource != "GPU":
            return f"device cuda (the GPU of each node that has {self.gpu_resource})"
        return f"device {self.device}"

    def describe(self) -> str:
        gpu = f", {self.gpus:g} {self.gpu_resource}" if self.gpus else ""
        queue = " (more queue for nodes the cluster adds)" if self.cluster else ""
        how = "in its Tune actor, reused" if self.runner == "actor" else "a Ray Train run"
        auto = f"; --gpus-per-trial auto: {self.packing}" if self.packing else ""
        return (f"{self.workers} worker(s) x ({self.cpus:g} CPU{gpu}) per trial ({how}), "
                f"up to {self.concurrency} trials at once{queue}, {self.describe_device()}{auto}")


@dataclass(frozen=True)
class ClusterOptions:
    """The flags that say where and how trials run (``ablations.run``'s and ``ablations.check``'s), read once from
    the command line; the functions of this module take it instead of the whole argparse namespace."""

    address: str | None = None
    device: str = "auto"
    gpus_per_trial: float | None = None  # None: auto (packing.decide)
    cpus_per_trial: float | None = None
    workers: int = 1
    max_concurrent: int | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    gpu_resource: str = "GPU"
    gpu_memory: float | None = None  # GiB of each GPU (default: measured on the node by the preflight)
    trial_gpu_memory: float | None = None  # GiB at the heaviest trial's peak (default: ablations.plan.gpu_memory)
    trial_runner: str = "auto"
    verbose: bool = False
    wait_for_resources: float | None = None

    @classmethod
    def from_args(cls, args) -> "ClusterOptions":
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__ if hasattr(args, f)})


def gpu_share(text: str) -> float | None:
    """``--gpus-per-trial``: a number, or 'auto' (None: ``packing.decide`` chooses)."""
    import argparse

    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def wants_gpu(opts: ClusterOptions) -> bool:
    return opts.device == "cuda" or (opts.gpus_per_trial or 0) > 0


def fmt_resources(cluster: dict[str, float]) -> str:
    keep = {k: v for k, v in cluster.items() if not k.startswith(("node:", "memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in sorted(keep.items())) or "none"


def _check_flags(opts: ClusterOptions) -> None:
    if opts.workers < 1:
        raise ResourceError("--workers must be at least 1")
    gpus = opts.gpus_per_trial or 0
    if gpus < 0:
        raise ResourceError(f"--gpus-per-trial must be 0 or more, got {gpus:g}")
    if opts.device == "cpu" and gpus:
        raise ResourceError("--device cpu cannot be combined with --gpus-per-trial")
    if gpus > 1 and not float(gpus).is_integer():
        raise ResourceError(f"--gpus-per-trial {gpus:g}: above 1 it must be a whole number")
    for flag, gib in (("--gpu-memory", opts.gpu_memory), ("--trial-gpu-memory", opts.trial_gpu_memory)):
        if gib is not None and gib <= 0:
            raise ResourceError(f"{flag} must be more than 0 GiB, got {gib:g}")
    if opts.workers > 1 and 0 < gpus < 1:
        raise ResourceError(f"--workers {opts.workers} with --gpus-per-trial {gpus:g} would put several NCCL ranks "
                            f"of one trial on one GPU; give each worker a whole GPU (--gpus-per-trial 1), or use "
                            f"--workers 1 to pack trials")


def trial_runner(choice: str, res: Resources) -> str:
    """How a trial runs (``--trial-runner``): "actor" (in its reused Tune trial actor) or "train" (a Ray Train run).
    ``auto``: "actor" for one-worker trials on CPUs; "train" for several workers (a worker group) and for trials
    that may use a GPU, the path measured through Ray on a GPU so far (examples/gpu)."""
    if res.workers > 1:
        if choice == "actor":
            raise ResourceError(f"--trial-runner actor runs one worker per trial; --workers {res.workers} needs "
                                f"--trial-runner train (or auto)")
        return "train"
    if choice == "auto":
        return "actor" if res.device == "cpu" else "train"
    return choice


@dataclass(frozen=True)
class GpuMemory:
    """What the packing knows of a GPU: its memory and what was free on it (MiB; measured by the preflight on a
    node, or a GPU model's for a dry run), its name, and the CPUs beside each GPU (None: not known)."""

    total_mib: float | None = None
    free_mib: float | None = None
    name: str = ""
    cpus_per_gpu: float | None = None


def awaits_gpu_memory(opts: ClusterOptions, res: Resources) -> bool:
    """Whether --gpus-per-trial auto needs the GPU's memory measured on a node (a one-worker trial on a GPU,
    no --gpu-memory)."""
    return opts.gpus_per_trial is None and opts.gpu_memory is None and res.workers == 1 and bool(res.gpus)


def auto_packing(opts: ClusterOptions, peak: Peak | None, gpu: GpuMemory, cpus: float) -> packing.Packing:
    """``--gpus-per-trial auto`` for one-worker trials: --trial-gpu-memory and --gpu-memory where given, else the
    heaviest planned trial's ``peak`` and the GPU as measured."""
    if opts.trial_gpu_memory is not None:
        peak = Peak(opts.trial_gpu_memory * 1024, "the heaviest trial (--trial-gpu-memory)")
    total, free = gpu.total_mib, gpu.free_mib
    if opts.gpu_memory is not None:
        total, free = opts.gpu_memory * 1024, None
    name = f"{opts.gpu_resource}" + (f" ({gpu.name})" if gpu.name and opts.gpu_memory is None else "")
    if peak is None:
        return packing.Packing(1, f"1 trial per {name}: no planned trial to size it by")
    what = f"{peak.what} ({peak.note})" if peak.note else peak.what
    return packing.decide(total, peak.mib, what, gpu.cpus_per_gpu, cpus, name, free)


def plan_resources(opts: ClusterOptions, cluster: dict[str, float], n_trials: int, *, on_cluster: bool = False,
                   head_memory_mib: float | None = None, max_resources: dict[str, float] | None = None,
                   peak: Peak | None = None, gpu: GpuMemory | None = None) -> Resources:
    """Per-trial resources and concurrency from the flags and the cluster; impossible requests fail at once.

    ``cluster``: the resources present now. On a local instance they are all there will be. On an existing
    cluster (``on_cluster``) nodes may join later: what is absent now is checked against ``max_resources``
    (what the autoscaler's node types can provide, when known), and concurrency is not tied to the nodes
    present, only to ``--max-concurrent`` and the head node's memory (``head_memory_mib``).

    ``--gpus-per-trial auto`` (the default) for trials that use a GPU: one worker's trials share a GPU as
    ``packing.decide`` says, from the heaviest planned trial's ``peak`` (or --trial-gpu-memory) and the GPU's
    memory (--gpu-memory, else ``gpu``: measured on a node or a GPU model's), capped by the CPUs per GPU (on a
    local instance, or ``gpu.cpus_per_gpu``)."""
    _check_flags(opts)
    total_cpus = cluster.get("CPU", 0.0)
    present_gpus = cluster.get(opts.gpu_resource, 0.0)
    reachable = dict(cluster)
    if on_cluster and max_resources:
        reachable = {k: max(cluster.get(k, 0.0), max_resources.get(k, 0.0)) for k in {*cluster, *max_resources}}
    may_grow = on_cluster and max_resources is None
    if opts.device == "cpu":
        gpus = 0.0
    elif opts.gpus_per_trial is not None:
        gpus = float(opts.gpus_per_trial)
    else:
        gpus = 1.0 if (opts.device == "cuda" or reachable.get(opts.gpu_resource, 0.0) > 0) else 0.0
    cpus = opts.cpus_per_trial or (1.0 if gpus or total_cpus < 8 else 2.0)
    reason = ""
    if opts.gpus_per_trial is None and gpus:
        if opts.workers > 1:
            reason = f"a whole {opts.gpu_resource} per worker (--workers {opts.workers})"
        else:
            gpu = gpu or GpuMemory()
            if gpu.cpus_per_gpu is None and not on_cluster and present_gpus:
                gpu = dataclasses.replace(gpu, cpus_per_gpu=total_cpus / present_gpus)
            choice = auto_packing(opts, peak, gpu, cpus)
            gpus, reason = choice.share, choice.reason
    res = Resources(cpus=cpus, gpus=gpus, workers=opts.workers, gpu_resource=opts.gpu_resource, concurrency=1,
                    device_choice=opts.device, cluster=on_cluster, packing=reason)
    res.runner = trial_runner(opts.trial_runner, res)
    if not may_grow:
        for name, amount in res.worker_bundle().items():
            have = reachable.get(name, 0.0)
            if amount * opts.workers > have + 1e-9:
                where = "can ever have (its autoscaler's node types)" if on_cluster and max_resources else "has"
                fix = "use --device cpu, or a cluster with GPUs" if name == opts.gpu_resource else \
                    "lower --cpus-per-trial or --workers"
                raise ResourceError(f"trials ask for {amount * opts.workers:g} {name} but the Ray cluster {where} "
                                    f"{have:g} (resources: {fmt_resources(reachable)}); {fix}")
    if on_cluster:
        conc = n_trials
        if head_memory_mib:
            conc = min(conc, max(1, int(head_memory_mib * HEAD_MEMORY_SHARE / HEAD_MIB_PER_TRIAL)))
        if max_resources:  # no more at once than the largest cluster can hold
            for name, amount in res.worker_bundle().items():
                if amount > 0 and name in max_resources:
                    conc = min(conc, max(1, int(max_resources[name] // (amount * opts.workers) + 1e-9)))
    else:
        conc = int(total_cpus // (cpus * opts.workers))
        if gpus:
            conc = min(conc, int(present_gpus // (gpus * opts.workers) + 1e-9))
    if opts.max_concurrent:
        conc = min(conc, opts.max_concurrent)
    res.concurrency = max(1, min(conc, n_trials))
    return res


def local_resources(opts: ClusterOptions) -> tuple[dict[str, float], str]:
    """What a dry run plans for (no Ray started): this machine, or the GPUs asked for when it has fewer. A machine
    with fewer GPUs than planned is not the one that will run them, so its CPUs say nothing of that one's: unless
    --num-cpus gives them, the plan has as many CPUs as those GPUs' trials can use, and says so."""
    import torch

    here = float(torch.cuda.device_count())
    gpus = here if opts.num_gpus is None else float(opts.num_gpus)
    note = ""
    if wants_gpu(opts) and gpus == 0:
        gpus = float(max(1, math.ceil((opts.gpus_per_trial or 1) * opts.workers)))
        note = f" (this machine has no GPU: planned for {gpus:g}; set --num-gpus)"
    cpus = float(opts.num_cpus or os.cpu_count() or 1)
    if opts.num_cpus is None and gpus > here and opts.device != "cpu":
        share = opts.gpus_per_trial
        per_gpu = max(packing.MAX_TRIALS_PER_GPU, math.ceil(1 / share) if share and share < 1 else 1)
        cpus = gpus * per_gpu * (opts.cpus_per_trial or 1.0)
        note += (f" (planned for {gpus:g} GPU(s) this machine does not have, with {cpus:g} CPUs, what their trials "
                 f"can use: --num-cpus gives that machine's)")
    return {"CPU": cpus, opts.gpu_resource: gpus}, note


def cluster_address(opts: ClusterOptions) -> str | None:
    """The existing cluster this run joins: ``--address``, else ``$RAY_ADDRESS`` (set for a driver submitted with
    ``ray job submit``), else None: a new local instance."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


