"""The Ray cluster a run uses: connecting, what Ray says of its nodes, and the autoscaler's demand.

On an existing cluster (``--address``), possibly autoscaling, Ray has no public API that says whether it can grow,
so trials queue: the driver asks the autoscaler for the resources of the trials it will run
(``AutoscalerDemand``), and ``ablations.driver.preflight`` fails with one line if no node that can run a trial
joins within ``--wait-for-resources``. Where Ray does publish the autoscaler's node types (the same private call
Ray Train makes, guarded), ``ablations.plan.resources`` refuses at once a request no node type can ever satisfy.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from pipeline.errors import one_line

from ablations.plan.resources import ClusterOptions, ResourceError, Resources, cluster_address

# Ray Train settings for many short trials (measured by ``python -m ablations.bench``): the controller polls
# its workers every 0.25 s instead of 2 s (a finished trial is noticed sooner), per-run helper actors we do
# not need (preemption watcher, metrics) are not started, and workers stay in the directory they start in.
RAY_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}

def max_cluster_resources() -> dict[str, float] | None:
    """The most of each resource the autoscaler's node types can ever provide, where Ray publishes them (the
    call Ray Train's own resource check makes; private, so guarded), else None: unknown, maybe autoscaling."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # not published, or the private API moved: assume the cluster may grow
        return None
    return {k: float(v) for k, v in found.items()} if found else None


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


def launcher_tags() -> tuple[str, str, str]:
    """The tags Ray's cluster launcher puts on its instances: (cluster name key, node kind key, the head's kind)."""
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

    return TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND, NODE_KIND_HEAD


def disconnect() -> None:
    """Stop a local instance, or leave a cluster given by ``--address`` (its nodes stay); nothing if not connected."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def resources() -> dict[str, float]:
    """The resources of the connected cluster's nodes now (an autoscaling cluster may add more)."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def share(value: Any):
    """``value`` in the object store once, for every trial to read: its reference."""
    import ray

    return ray.put(value)


# ----------------------------------------------------------------------------- autoscaler demand


DEMAND_TIMEOUT_S = 60.0  # a run's part of the request outlives its driver's last heartbeat by at most this
HEARTBEAT_S = 10.0
KEEPER_IDLE_S = 10.0  # a keeper with no run's part left exits after this
KEEPER_NAME, KEEPER_NAMESPACE = "ablations-demand", "ablations"
RESEND_S = 15.0  # the keeper renews its request this often (Ray's coordinator drops one not renewed in time)


class KeeperClosing(RuntimeError):
    """The keeper is exiting (no run's part left): ask again, a new keeper takes the request."""


def ask_autoscaler(bundles: list[dict], expire_s: float = DEMAND_TIMEOUT_S) -> None:
    """Ask Ray's autoscaler for ``bundles``, this project's whole request on the cluster (it replaces the last;
    ``[]`` withdraws it). ``request_resources`` replaces the cluster's one request, and Ray Train
    keeps a detached AutoscalingCoordinator on every cluster where a TorchTrainer ran that sends the sum of its
    requesters' bundles through it at each request and every 20 s: a request sent beside it is erased within
    20 s (seen: a run's waiting trials lost their request and its GPU nodes went). So where this Ray has that
    coordinator, the request is one of its requesters' (``KEEPER_NAME``), renewed before ``expire_s``, and it
    sends the sum. Private parts, guarded: a Ray without them, or a coordinator that cannot answer, gets the
    plain ``request_resources``."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        coordinator = get_or_create_autoscaling_coordinator()
        call = (coordinator.request_resources.remote(requester_id=KEEPER_NAME, resources=bundles,
                                                     expire_after_s=expire_s) if bundles
                else coordinator.cancel_request.remote(requester_id=KEEPER_NAME))
        ray.get(call, timeout=10.0)
    except Exception:  # noqa: BLE001 - another Ray, or no coordinator that answers: nothing sends beside us
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)


def placement_group_records() -> dict:
    """Every placement group's record in the GCS (``gcs_pb2.PlacementGroupTableData``, by id in hex), with its
    creator (actor or job) and whether it is detached, which the public table leaves out. Ray's private parts."""
    from ray._private import state
    from ray.core.generated import gcs_pb2

    records = (gcs_pb2.PlacementGroupTableData.FromString(b)
               for b in state.state._connect_and_get_accessor().get_placement_group_table())
    return {r.placement_group_id.hex(): r for r in records}


def orphan_placement_groups(records: dict, dead_actors: set[str], dead_jobs: set[str]) -> list[str]:
    """The ids of the groups among ``records`` that Ray left for a dead creator: not detached, not removed (pending
    or rescheduling too: such a group would be placed once a node came, then held for good), and created by a dead
    actor, or by a driver whose job is dead. A group a live actor made stays, even if that actor's job is gone (a
    detached actor outlives its job)."""
    from ray.core.generated import gcs_pb2

    orphans = []
    for pg_id, r in records.items():
        if r.is_detached or r.state == gcs_pb2.PlacementGroupTableData.REMOVED:
            continue
        actor, job = r.creator_actor_id.hex(), r.creator_job_id.hex()
        made_by_driver = actor.strip("f0") == ""  # a nil actor id
        if (job in dead_jobs) if made_by_driver else (actor in dead_actors):
            orphans.append(pg_id)
    return orphans


def remove_orphan_placement_groups() -> list[str]:
    """Remove the placement groups Ray left reserved for a dead creator (``orphan_placement_groups``); their ids.
    Ray removes a group that is not detached when its creator dies, but a group whose create request reaches the
    GCS after its creator died (a Train controller killed with its driver while it reserves a worker group) stays
    for good, and its node never goes idle. Guarded: a Ray without these private parts removes nothing."""
    try:
        from ray._private import state
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        dead_actors = {a for a, info in state.actors().items() if info.get("State") == "DEAD"}
        dead_jobs = {j["JobID"] for j in state.jobs() if j.get("IsDead")}
        removed = orphan_placement_groups(placement_group_records(), dead_actors, dead_jobs)
        for pg_id in removed:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
        return removed
    except Exception:  # noqa: BLE001 - another Ray, or the GCS busy: the next lost run sweeps again
        return []


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
        self.sent_at = 0.0
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
        """The sum of the parts to the autoscaler, when it changed or is due for renewal."""
        bundles = [b for part in self.parts.values() for b in part["bundles"]]
        now = time.monotonic()
        if bundles != self.sent or (bundles and now - self.sent_at >= RESEND_S):
            ask_autoscaler(bundles)
            self.sent, self.sent_at = bundles, now

    def _watch(self) -> None:
        idle_since, lost = None, []
        while True:
            time.sleep(1.0)
            if lost:  # outside the lock: the GCS reads must not hold up the other runs' heartbeats
                remove_orphan_placement_groups()
            with self.lock:
                now = time.monotonic()
                lost = [r for r, p in self.parts.items() if now - p["last"] > p["timeout_s"]]
                for run in lost:
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
