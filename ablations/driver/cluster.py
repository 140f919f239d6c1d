"""The Ray cluster a run uses: connecting, per-trial resources, concurrency, autoscaler demand.

Two kinds of cluster:
  * a local instance (no ``--address``): this machine, fixed. Concurrency follows from its resources, and a
    request it can never satisfy (GPUs on a machine without any) fails at once.
  * an existing cluster (``--address``), possibly autoscaling. Ray has no public API that says whether a
    cluster can grow, so trials queue: the driver asks the autoscaler for the resources of the trials it will
    run (``AutoscalerDemand``), and ``ablations.driver.preflight`` fails with one line if no node that can run a trial
    joins within ``--wait-for-resources``. Where Ray does publish the autoscaler's node types (the same
    private call Ray Train makes, guarded), a request no node type can ever satisfy fails at once.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError, one_line

from ablations.plan.gpu_memory import Peak
from ablations.plan import packing

# Ray Train settings for many short trials (measured by ``python -m ablations.bench``): the controller polls
# its workers every 0.25 s instead of 2 s (a finished trial is noticed sooner), per-run helper actors we do
# not need (preemption watcher, metrics) are not started, and workers stay in the directory they start in.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}

# How long a run on an existing cluster waits for a node that can run a trial: an AWS GPU instance takes a
# few minutes to boot, and pulling Ray's GPU image onto it several more.
DEFAULT_CLUSTER_WAIT_S = 1200.0

# Head-node memory one concurrent trial holds: its Tune trial actor and its Ray Train controller, both pinned
# to the head, neither importing torch (``python -m ablations.bench --only head_memory``: 241-252 MiB PSS per
# trial with 2 and 8 at once; examples/bench/BENCH.md).
HEAD_MIB_PER_TRIAL = 260.0
# Share of the head node's memory that trial actors and controllers may take (the rest: GCS, dashboard,
# the driver, the object store's pinned data).
HEAD_MEMORY_SHARE = 0.6


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


def max_cluster_resources() -> dict[str, float] | None:
    """The most of each resource the autoscaler's node types can ever provide, where Ray publishes them (the
    call Ray Train's own resource check makes; private, so guarded), else None: unknown, maybe autoscaling."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # not published, or the private API moved: assume the cluster may grow
        return None
    return {k: float(v) for k, v in found.items()} if found else None


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


def head_memory_mib() -> float | None:
    """Total memory of the head node (where trial actors and Train controllers live), from Ray's node table."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            mem = node["Resources"].get("memory")
            return mem / 2**20 if mem else None
    return None


# ----------------------------------------------------------------------------- connecting


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail within seconds on a host:port nobody listens on (ray.init would retry for a long time)."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ResourceError(f"--address {address!r}: expected HOST:PORT of a Ray head node, 'auto' or ray://...")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ResourceError(f"cannot reach a Ray cluster at {address} ({e.strerror or e})") from None


def cluster_address(opts: ClusterOptions) -> str | None:
    """The existing cluster this run joins: ``--address``, else ``$RAY_ADDRESS`` (set for a driver submitted with
    ``ray job submit``), else None: a new local instance."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


def connect(opts: ClusterOptions, env_vars: dict[str, str] | None = None) -> None:
    """``ray.init``: the existing cluster (``cluster_address``), or a new local instance (with ``--num-cpus`` and
    ``--num-gpus``). ``env_vars`` reach every Ray worker process."""
    import ray

    check_address(opts.address)
    local_extra: dict[str, Any] = {}
    if not cluster_address(opts):
        local_extra = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus}
        if not opts.verbose:  # Ray's notice that a new local instance uses token authentication (its default)
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    try:
        # "local": a new instance, even where `ray start` left one running (which plain ray.init() would join)
        ray.init(address=opts.address or (None if cluster_address(opts) else "local"), include_dashboard=False,
                 log_to_driver=opts.verbose, configure_logging=opts.verbose,
                 logging_level="INFO" if opts.verbose else "ERROR",
                 runtime_env={"env_vars": {**RAY_TRAIN_ENV, **(env_vars or {})}}, **local_extra)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, or the "
                "token in ~/.ray/auth_token)" if cluster_address(opts) else "")
        raise ResourceError(f"cannot connect to Ray at {cluster_address(opts) or 'a new local instance'}: "
                            f"{one_line(e)}{hint}") from None


# ----------------------------------------------------------------------------- autoscaler demand


DEMAND_TIMEOUT_S = 60.0  # a run's part of the request outlives its driver's last heartbeat by at most this
HEARTBEAT_S = 10.0
KEEPER_IDLE_S = 10.0  # a keeper with no run's part left exits after this
KEEPER_NAME, KEEPER_NAMESPACE = "ablations-demand", "ablations"


class KeeperClosing(RuntimeError):
    """The keeper is exiting (no run's part left): ask again, a new keeper takes the request."""


class DemandKeeper:
    """The one detached actor per cluster, on the head node, that holds the autoscaler's request for every run on
    the cluster. ``request_resources`` replaces the whole cluster's request, so runs that share a cluster must not
    each send their own: each run gives the keeper its part (its bundles, under its run id) and keeps it alive with
    heartbeats, and the keeper requests the sum of the parts. A run's end withdraws its part (``withdraw``); a run
    whose heartbeats stop for its ``timeout_s`` (the driver SIGKILLed, OOM-killed or stopped by `ray job stop`
    without running its ``finally``) loses its part. Either way the others' parts stay in force. With no part
    left for ``KEEPER_IDLE_S`` the keeper exits, its request withdrawn."""

    def __init__(self):
        import threading

        self.parts: dict[str, dict] = {}  # run id -> {"bundles", "timeout_s", "last"}
        self.sent: list[dict] | None = None
        self.closing = False
        self.lock = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def request(self, run: str, bundles: list[dict], timeout_s: float = DEMAND_TIMEOUT_S) -> None:
        with self.lock:
            if self.closing:
                raise KeeperClosing("the demand keeper is exiting")
            self.parts[run] = {"bundles": list(bundles), "timeout_s": timeout_s, "last": time.monotonic()}
            self._send()

    def beat(self, run: str) -> bool:
        """False when the keeper holds no part for ``run`` (it timed out, or this is a new keeper): send it again."""
        with self.lock:
            if run not in self.parts or self.closing:
                return False
            self.parts[run]["last"] = time.monotonic()
            return True

    def withdraw(self, run: str) -> None:
        with self.lock:
            self.parts.pop(run, None)
            self._send()

    def demand(self) -> dict[str, list[dict]]:
        """Each run's part now."""
        with self.lock:
            return {run: part["bundles"] for run, part in self.parts.items()}

    def _send(self) -> None:
        from ray.autoscaler.sdk import request_resources

        bundles = [b for part in self.parts.values() for b in part["bundles"]]
        if bundles != self.sent:
            request_resources(bundles=bundles)
            self.sent = bundles

    def _watch(self) -> None:
        idle_since = None
        while True:
            time.sleep(1.0)
            with self.lock:
                now = time.monotonic()
                for run in [r for r, p in self.parts.items() if now - p["last"] > p["timeout_s"]]:
                    del self.parts[run]
                try:
                    self._send()
                except Exception:  # the GCS busy or restarting: the next second sends again
                    continue
                if self.parts:
                    idle_since = None
                    continue
                idle_since = idle_since or now
                if now - idle_since >= KEEPER_IDLE_S:
                    self.closing = True
                    os._exit(0)  # the actor's process: nothing else lives in it


class _Part:
    """This process's side of one run's part: what it asked for, and its heartbeat."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.bundles: list[dict] | None = None  # None: nothing asked for (or withdrawn)
        self.requested = -1
        self.stop = None


# by run id: a copy of an AutoscalerDemand (a Tuner pickles its callbacks, which hold one) shares the original's
_PARTS: dict[str, _Part] = {}
_KEEPER_CLASS: list = []  # ray.remote(DemandKeeper), made once per process


class AutoscalerDemand:
    """Keeps the autoscaler asking for the worker resources of the trials still to run (at most ``concurrency``
    at once), so that an autoscaling cluster grows toward its ``max_workers`` while trials wait and may shrink as
    they finish. This run's request is its part of the cluster's ``DemandKeeper``, which the driver keeps alive
    with a heartbeat: ``clear()`` withdraws the part when the run ends, and if the driver dies without doing so,
    the keeper drops it within ``timeout_s``; the parts of other runs on the cluster stay in force. A no-op on a
    local instance."""

    def __init__(self, res: Resources, enabled: bool, timeout_s: float = DEMAND_TIMEOUT_S):
        import uuid

        self.res, self.enabled, self.timeout_s = res, enabled, timeout_s
        self.run = uuid.uuid4().hex

    @property
    def part(self) -> _Part:
        return _PARTS.setdefault(self.run, _Part())

    @staticmethod
    def keeper():
        """The cluster's keeper: the running one, or a new one on the head node."""
        import ray

        if not _KEEPER_CLASS:
            _KEEPER_CLASS.append(ray.remote(DemandKeeper))
        return _KEEPER_CLASS[0].options(
            name=KEEPER_NAME, namespace=KEEPER_NAMESPACE, get_if_exists=True, lifetime="detached", num_cpus=0,
            resources={"node:__internal_head__": 0.001}, max_restarts=0).remote()

    @classmethod
    def _call(cls, method: str, *args, timeout: float = 60.0):
        """A call to the keeper; one that finds it exiting (or gone) asks the next one."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(getattr(cls.keeper(), method).remote(*args), timeout=timeout)
            except (RayActorError, RayTaskError) as e:
                closing = isinstance(e, RayActorError) or isinstance(getattr(e, "cause", None), KeeperClosing)
                if not closing or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _beat(self, stop) -> None:
        part, every = self.part, min(HEARTBEAT_S, self.timeout_s / 4)
        while not stop.wait(every):
            try:
                with part.lock:
                    if stop.is_set():
                        return
                    if not self._call("beat", self.run, timeout=30.0) and part.bundles is not None:
                        # the keeper lost this run's part (a heartbeat later than the timeout, a new keeper)
                        self._call("request", self.run, part.bundles, self.timeout_s)
            except Exception:  # the driver is shutting down, or the cluster is gone
                pass

    def update(self, trials_left: int) -> None:
        n = max(0, min(trials_left, self.res.concurrency))
        part = self.part
        if not self.enabled or n == part.requested:
            return
        import threading

        with part.lock:
            part.bundles = [self.res.worker_bundle()] * (n * self.res.workers)
            self._call("request", self.run, part.bundles, self.timeout_s)
            part.requested = n
            if part.stop is None:
                part.stop = threading.Event()
                threading.Thread(target=self._beat, args=(part.stop,), daemon=True).start()

    def clear(self) -> None:
        part = self.part
        if not self.enabled or part.bundles is None:
            return
        with part.lock:
            if part.stop is not None:
                part.stop.set()
                part.stop = None
            part.bundles, part.requested = None, 0
            try:
                self._call("withdraw", self.run, timeout=30.0)
            except Exception:  # the cluster is gone: nothing left to withdraw
                pass
