"""The cluster path, on this machine: a real autoscaling Ray cluster (Ray's fake node provider: worker nodes
are raylets started and stopped by the real autoscaler) and a real S3 API (moto's server), used exactly as the
README's cluster section says: ``python -m ablations.run --address ... --storage s3://...``.

A custom resource ``accel`` stands in for GPUs (no CUDA device is faked): the worker node type carries one
``accel`` and one CPU, the head none, and the cluster starts with no worker node at all.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from .conftest import (
    BUCKET,
    GRIDS,
    REPO,
    early_in_run,
    in_cluster,
    kill_mid_grid,
    read_trials,
    run_cli,
    s3_keys,
    wait_for,
)
from .fake_cluster import FakeAutoscalingCluster

pytestmark = pytest.mark.ray

MAX_WORKERS = 3


@pytest.fixture(scope="module")
def autoscaling(s3, tmp_path_factory):
    cluster = FakeAutoscalingCluster(
        tmp_path_factory.mktemp("fake-cluster"), max_workers=MAX_WORKERS, head_cpus=0, env=s3,
        worker_types={"accel_node": {"resources": {"CPU": 1, "accel": 1}, "node_config": {},
                                     "min_workers": 0, "max_workers": MAX_WORKERS}})
    cluster.start()
    yield cluster
    cluster.shutdown()


def worker_nodes(address: str) -> int:
    """Alive nodes with an accel, asked from a separate process (this one stays out of that cluster)."""
    out = in_cluster(address, "print(sum(1 for n in ray.nodes() if n['Alive'] and n['Resources'].get('accel')))")
    return int(out.stdout.strip().splitlines()[-1])


def cluster_args(cluster, s3_prefix: str, *extra: str) -> list[str]:
    return ["--address", cluster.address, "--gpu-resource", "accel", "--gpus-per-trial", "1", "--cpus-per-trial", "1",
            "--storage", f"s3://{BUCKET}/{s3_prefix}", "--wait-for-resources", "180", *extra]


def test_an_autoscaling_cluster_grows_for_waiting_trials_and_shrinks_after(autoscaling, s3, mini_archive, tmp_path):
    assert worker_nodes(autoscaling.address) == 0  # no worker node at the start
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--seeds", "8", "--data", str(mini_archive),
                   "--results", str(tmp_path), "--name", "scale", "--no-report",
                   *cluster_args(autoscaling, "scale"), env=s3, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "preflight: a node for 1 x (CPU=1, accel=1)" in proc.stdout
    df = pd.read_parquet(tmp_path / "scale" / "trials.parquet")
    assert len(df) == 8 and (df.status == "finished").all()
    # the cluster grew to (at least) 3 worker nodes and trials ran on several of them; the head has no CPU
    assert df.node_id.nunique() >= MAX_WORKERS, df.node_id.value_counts()
    # checkpoints and final artifacts went to S3
    keys = s3_keys(s3, "scale/")
    assert {tid for tid in df.trial_id if any(f"/{tid}/" in k or k.startswith(f"scale/{tid}/") for k in keys)} \
        == set(df.trial_id)
    # the run withdrew its request to the autoscaler: idle nodes are removed (idle timeout 12 s)
    wait_for(lambda: worker_nodes(autoscaling.address) == 0, 180, every=5)


def test_s3_checkpoints_resume_after_the_driver_is_killed(autoscaling, s3, mini_archive, tmp_path):
    args = ["--grid", str(GRIDS / "resume.yaml"), "--seeds", "3", "--data", str(mini_archive),
            "--results", str(tmp_path), "--no-report", *cluster_args(autoscaling, "resume")]
    folder = tmp_path / "resume"
    os.environ.update(s3)  # start_cli passes this process's environment on
    try:
        # the 3 trials run at once (one per worker node), so none has finished while another is early in its run
        before, killed_at = kill_mid_grid(args, folder, finished=0)
        finished_before = before[before.status == "finished"].set_index("trial_id")
        early = early_in_run(before).trial_id.tolist()
        assert any(k.endswith(".pt") or "checkpoint" in k for k in s3_keys(s3, "resume/")), "no checkpoint in S3"

        again = run_cli(*args, env=s3, timeout=900)
    finally:
        for k in s3:
            os.environ.pop(k, None)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert f"{len(finished_before)} of 3 trials already finished" in again.stdout
    after = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert (after.status == "finished").all() and len(after) == 3
    for tid, row in finished_before.iterrows():  # not run again
        assert after.loc[tid, "t_fit_end"] == row.t_fit_end < killed_at
    # every trial early in its run at the kill continued from its last epoch checkpoint, read back from S3
    assert after.loc[early, "resumed_from_epoch"].min() >= 1, after.loc[early, "resumed_from_epoch"]
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert epochs.groupby("trial_id").epoch.apply(list).map(lambda e: e == [1, 2, 3, 4]).all()
    meta = json.loads((folder / "run.json").read_text())
    assert meta["storage"] == f"s3://{BUCKET}/resume"


def test_no_node_for_a_trial_fails_with_one_line_after_the_wait(autoscaling, mini_archive, tmp_path):
    """A trial shape no node type offers (2 accel per worker) on an autoscaling cluster: one line, exit 2."""
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", autoscaling.address, "--gpu-resource", "accel", "--gpus-per-trial", "2",
                   "--wait-for-resources", "15", timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "accel" in err[0], proc.stderr
    assert not (tmp_path / "cnn").exists()



# ----------------------------------------------------------------------------- a dead run holds no GPUs


def ray_status(address: str, *flags: str) -> str:
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    return subprocess.run([ray, "status", "--address", address, *flags], capture_output=True, text=True,
                          timeout=120).stdout


def why_nodes_stay(address: str) -> str:
    """What a worker node that does not go away holds: Ray's per-node usage (`ray status -v`: resources in use,
    reserved in placement groups, object store memory), the object store (`ray memory --stats-only`), and from the
    GCS (no dashboard needed) the placement groups, the jobs and the actors not dead."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    memory = subprocess.run([ray, "memory", "--stats-only", "--address", address], capture_output=True, text=True,
                            timeout=120)
    return (f"ray status -v:\n{ray_status(address, '-v')}\nray memory --stats-only:\n{memory.stdout[-3000:]}"
            f"{memory.stderr[-500:]}\nfrom the GCS:\n{gcs_state(address)}")


def gcs_state(address: str) -> str:
    """Placement groups (state, bundles, nodes), jobs (dead or not) and actors not dead, one line each, read from
    the GCS (Ray's private state module: a diagnostic only)."""
    out = in_cluster(address, """
from ray._private import state
from ray.util import placement_group_table
for pg in placement_group_table().values():
    print("placement group", pg["placement_group_id"][:8], pg["state"], pg["bundles"], pg["bundles_to_node_id"],
          pg["stats"]["scheduling_state"])
for j in state.jobs():
    print("job", j.get("JobID"), "dead" if j.get("IsDead") else "alive", j.get("DriverPid"))
for a in state.actors().values():
    if a.get("State") != "DEAD":
        print("actor", a.get("ActorClassName"), a.get("State"), a.get("JobID"), a.get("Address", {}).get("NodeID"))
""")
    return out.stdout[-6000:] + out.stderr[-1500:]


def requested(address: str) -> bool:
    """Whether `ray status` shows a request to the autoscaler (request_resources) in force."""
    return "from request_resources()" in ray_status(address)


def test_a_killed_driver_leaves_no_demand_and_the_cluster_shrinks(autoscaling, s3, mini_archive, tmp_path):
    """SIGKILL to the driver's whole process group mid-grid (no finally runs): its part of the request to the
    autoscaler is withdrawn by the detached keeper when the heartbeats stop (60 s), within 150 s; what Ray Train's
    coordinator still asks for the killed Train runs expires on Ray's own clock (180 s after their last renewal,
    sent at its next 20 s tick); then the idle nodes go: also those a Train controller's placement group, created
    after the kill, would hold (the keeper removes it)."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import _AutoscalingCoordinatorActor
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        AUTOSCALING_REQUESTS_EXPIRE_TIME_S,
    )

    args = ["--grid", str(GRIDS / "resume.yaml"), "--seeds", "6", "--data", str(mini_archive), "--results",
            str(tmp_path), "--no-report", "--log", "none", *cluster_args(autoscaling, "killed")]
    proc = subprocess.Popen([sys.executable, "-m", "ablations.run", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **s3}, start_new_session=True)
    try:
        wait_for(lambda: (df := read_trials(tmp_path / "resume")) is not None
                 and bool((df.status == "running").any()), 600, proc)
        wait_for(lambda: requested(autoscaling.address), 120, proc, every=3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    wait_for(lambda: keeper_parts(autoscaling.address) == {}, 150, every=5)
    withdrawn = time.monotonic() - killed
    train_expiry = AUTOSCALING_REQUESTS_EXPIRE_TIME_S + _AutoscalingCoordinatorActor.TICK_INTERVAL_S
    wait_for(lambda: not requested(autoscaling.address), train_expiry, every=5)
    try:
        wait_for(lambda: worker_nodes(autoscaling.address) == 0, 240, every=5)  # idle timeout 12 s
    except AssertionError:
        raise AssertionError(f"worker nodes still up 240 s after the demand went:\n{why_nodes_stay(autoscaling.address)}"
                             ) from None
    assert withdrawn <= 150


def test_results_outlive_the_cluster_in_s3(autoscaling, s3, mini_archive, tmp_path):
    """With --storage s3://...: the run folder is mirrored there. After the local folder is gone (as after
    `ray down`), a report is made from the URI alone, and a run from a new head continues from it: the finished
    trials are not run again, only the new seed's."""
    import shutil

    common = ["--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--log", "none",
              *cluster_args(autoscaling, "outlive")]
    first = run_cli(*common, "--seeds", "2", "--results", str(tmp_path / "head1"), env=s3, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert f"results mirrored to s3://{BUCKET}/outlive/cnn" in first.stdout
    before = pd.read_parquet(tmp_path / "head1" / "cnn" / "trials.parquet").set_index("trial_id")
    keys = set(s3_keys(s3, "outlive/cnn/"))
    for f in ("run.json", "trials.parquet", "epochs.parquet", "labels.npz", "REPORT.md"):
        assert f"outlive/cnn/{f}" in keys, f
    assert {f"outlive/cnn/logits/{t}.npz" for t in before.index} <= keys
    shutil.rmtree(tmp_path / "head1")  # the head node's disk is gone

    report = subprocess.run([sys.executable, "-m", "ablations.report", f"s3://{BUCKET}/outlive/cnn", "--no-figures"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, **s3})
    assert report.returncode == 0, report.stderr[-2000:]
    assert report.stdout.strip().endswith(f"s3://{BUCKET}/outlive/cnn/REPORT.md")

    again = run_cli(*common, "--seeds", "3", "--results", str(tmp_path / "head2"), env=s3, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert f"brought down into {tmp_path / 'head2' / 'cnn'}" in again.stdout
    assert f"{len(before)} of {len(before) + 1} trials already finished" in again.stdout
    after = pd.read_parquet(tmp_path / "head2" / "cnn" / "trials.parquet").set_index("trial_id")
    assert (after.status == "finished").all() and len(after) == len(before) + 1
    for tid, row in before.iterrows():  # not run again
        assert after.loc[tid, "t_fit_end"] == row.t_fit_end


# ----------------------------------------------------------------------------- runs that share a cluster

DRIVER = """
import sys
import ray
from ablations.driver.cluster import AutoscalerDemand
from ablations.plan.resources import Resources
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
res = Resources(cpus=1, gpus=1, workers=1, gpu_resource="accel", concurrency={n}, cluster=True)
demand = AutoscalerDemand(res, enabled=True, timeout_s={timeout})
demand.update({n})
print(demand.run, flush=True)
if sys.stdin.readline().strip() == "end":
    demand.clear()
    print("withdrawn", flush=True)
"""


class Driver:
    """A driver's demand, as ``ablations.run`` holds it (``AutoscalerDemand``), for ``n`` trials waiting for
    nodes, in a process of its own: ``end()`` is the run's end, ``kill()`` its death."""

    def __init__(self, address: str, n: int, log, timeout_s: float = 60.0):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER.format(address=address, n=n, timeout=timeout_s)], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), start_new_session=True)
        self.run = self._line()

    def _line(self, timeout: float = 300) -> str:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        assert line, f"the driver said nothing within {timeout:.0f} s:\n{open(self.log).read()[-3000:]}"
        return line

    def end(self) -> None:
        self.proc.stdin.write("end\n")
        self.proc.stdin.flush()
        assert self._line() == "withdrawn"
        self.proc.wait(timeout=120)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def keeper_parts(address: str) -> dict[str, int]:
    """The cluster's demand keeper: each run's part, in bundles ({} without a keeper)."""
    out = in_cluster(address, "import json\n"
                              "try:\n"
                              "    keeper = ray.get_actor('ablations-demand', namespace='ablations')\n"
                              "    parts = ray.get(keeper.demand.remote(), timeout=60)\n"
                              "except ValueError:\n"
                              "    parts = {}\n"
                              "print(json.dumps({run: len(b) for run, b in parts.items()}))")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def requested_bundles(address: str) -> int:
    """How many accel bundles the autoscaler is asked for (request_resources), as `ray status` shows them."""
    import re

    return sum(int(n) for n in re.findall(r"\{[^}]*'accel'[^}]*\}: (\d+) from request_resources\(\)",
                                          ray_status(address)))


def until(predicate, timeout: float, address: str, what: str) -> None:
    """``wait_for``, whose failure shows the autoscaler's view and the keeper's parts."""
    try:
        wait_for(predicate, timeout, every=3)
    except AssertionError:
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{ray_status(address)}\nkeeper's parts: "
                             f"{keeper_parts(address)}") from None


def test_runs_that_share_a_cluster_keep_each_others_demand(autoscaling, tmp_path):
    """Run A (3 trials, the cluster's max) and run B (2 more, queued behind A's) on one cluster. A ends while B's
    trials still wait: B's demand stays in force (request_resources replaces the cluster's whole request; the
    keeper sends the sum of the runs' parts) and B's nodes come. Run C, killed, loses only its own part."""
    address, drivers = autoscaling.address, []
    try:
        a = Driver(address, 3, tmp_path / "a.log")
        drivers.append(a)
        b = Driver(address, 2, tmp_path / "b.log")
        drivers.append(b)
        assert keeper_parts(address) == {a.run: 3, b.run: 2}
        a.end()
        assert keeper_parts(address) == {b.run: 2}  # A's end withdrew A's part only
        until(lambda: requested_bundles(address) == 2, 120, address, "B's 2 bundles requested")
        until(lambda: worker_nodes(address) >= 2, 300, address, "B's 2 nodes up")

        c = Driver(address, 1, tmp_path / "c.log", timeout_s=15.0)
        drivers.append(c)
        assert keeper_parts(address) == {b.run: 2, c.run: 1}
        c.kill()  # no heartbeat from now on: its part goes after 15 s, B's stays
        until(lambda: keeper_parts(address) == {b.run: 2}, 120, address, "C's part dropped, B's kept")
        until(lambda: requested_bundles(address) == 2, 120, address, "B's 2 bundles requested")

        b.end()
        until(lambda: not requested(address), 120, address, "no request once B ended")
        until(lambda: worker_nodes(address) == 0, 300, address, "no worker node left")  # idle timeout 12 s
    finally:
        for d in drivers:
            d.kill()
