"""The demand keeper beside what Ray itself leaves on a cluster, on a real local Ray cluster (issue 27):

- Ray Train's AutoscalingCoordinator, which every TorchTrainer registers its workers with and which rewrites the
  cluster's one autoscaler request every 20 s: the keeper's request must survive it, summed with Train's;
- the placement groups Ray leaves reserved for a dead creator (a Train controller killed with its driver had its
  worker group's placement group created after its death, and the GCS never removed it, holding a GPU node for
  good): the GCS records of live groups (one a driver made, one an actor made, one detached, one pending), what
  the keeper's sweep would take if their creators were dead, and that it takes none whose creator lives. The race
  itself cannot be made on demand; ``test_cluster.py::test_a_killed_driver_leaves_no_demand_and_the_cluster_shrinks``
  runs into it.
"""
from __future__ import annotations

import json

import pytest

from .conftest import in_cluster

pytestmark = pytest.mark.ray

GROUPS = """
import json
from ray._private import state
from ray.util.placement_group import placement_group, remove_placement_group
from ablations.driver.cluster import orphan_placement_groups, placement_group_records, remove_orphan_placement_groups

@ray.remote(num_cpus=0)
class Maker:
    def make(self):
        pg = placement_group([{"CPU": 0.1}])
        ray.get(pg.ready(), timeout=60)
        return pg.id.hex(), ray.get_runtime_context().get_actor_id()

driver_pg = placement_group([{"CPU": 0.1}])
detached_pg = placement_group([{"CPU": 0.1}], lifetime="detached")
pending_pg = placement_group([{"CPU": 1000}])  # no node has that: it stays pending
ray.get([driver_pg.ready(), detached_pg.ready()], timeout=60)
maker = Maker.remote()
actor_pg, actor = ray.get(maker.make.remote(), timeout=60)
job = ray.get_runtime_context().get_job_id()
try:
    records = placement_group_records()
    mine = {"driver": driver_pg.id.hex(), "detached": detached_pg.id.hex(), "pending": pending_pg.id.hex(),
            "actor": actor_pg}
    out = {
        "job": job, "actor": actor, "ids": mine,
        "as_the_sweep_reads_them": [job in {j["JobID"] for j in state.jobs()}, actor in state.actors()],
        "creators": {k: [records[v].creator_actor_id.hex(), records[v].creator_job_id.hex(),
                         records[v].is_detached] for k, v in mine.items()},
        "if_actor_dead": orphan_placement_groups(records, {actor}, set()),
        "if_job_dead": orphan_placement_groups(records, set(), {job}),
        "if_both_dead": orphan_placement_groups(records, {actor}, {job}),
        "healthy": remove_orphan_placement_groups(),
    }
    after = placement_group_records()
    out["still_there"] = sorted(k for k, v in mine.items() if v in after and after[v].state != after[v].REMOVED)
finally:
    remove_placement_group(detached_pg)  # outlives this job otherwise
print(json.dumps(out))
"""


def test_the_sweep_takes_only_groups_whose_creator_is_dead(ray_cluster):
    out = in_cluster(ray_cluster.address, GROUPS)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ids, job, actor = got["ids"], got["job"], got["actor"]
    nil = "f" * len(actor)
    # the records name each group's creator: the driver's job (a nil actor), or the actor that made it
    assert got["creators"]["driver"] == [nil, job, False]
    assert got["creators"]["pending"] == [nil, job, False]
    assert got["creators"]["detached"][1:] == [job, True]
    assert got["creators"]["actor"] == [actor, job, False]
    assert got["as_the_sweep_reads_them"] == [True, True]  # the job and actor tables use the records' ids
    # with the actor dead: its group; with the driver's job dead: the driver's groups, pending too; never detached
    assert got["if_actor_dead"] == [ids["actor"]]
    assert sorted(got["if_job_dead"]) == sorted([ids["driver"], ids["pending"]])  # the actor lives on its job
    assert sorted(got["if_both_dead"]) == sorted([ids["driver"], ids["pending"], ids["actor"]])
    # with their creators alive the sweep removes none of them (it may take another test's leftovers: the shared
    # cluster sees drivers killed mid-grid)
    assert not set(got["healthy"]) & set(ids.values())
    assert got["still_there"] == sorted(ids)


BESIDE_TRAIN = """
import json, time
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.experimental.internal_kv import _internal_kv_get
from ray.train import ScalingConfig
from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    TrainAutoscalingCoordinatorClient,
)
from ablations.driver.cluster import AutoscalerDemand
from ablations.plan.resources import Resources

def request():  # the cluster's request to the autoscaler now, as its monitor reads it
    bundles = json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or "[]")
    return sorted(json.dumps({k: float(v) for k, v in b.items()}, sort_keys=True) for b in bundles)

res = Resources(cpus=1, gpus=1, workers=1, gpu_resource="accel", concurrency=2, cluster=True)
demand = AutoscalerDemand(res, enabled=True)
demand.update(2)  # this run: 2 trials waiting
train = TrainAutoscalingCoordinatorClient("train-beside")  # as a TorchTrainer's controller registers its workers
train.send_resource_request(ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1, "accel": 1}), 1)
time.sleep(45)  # the coordinator's 20 s ticks have rewritten the request twice since, the keeper renewed its part
out = {"both": request()}
train.cancel_resource_request()
time.sleep(2)
out["ours"] = request()
demand.clear()
time.sleep(2)
out["none"] = request()
print(json.dumps(out))
"""


def test_the_keepers_request_survives_ray_trains_coordinator(ray_cluster):
    """A run's 2 waiting trials and a running TorchTrainer's worker, asked of the autoscaler at once: 45 s later
    (two of the coordinator's rewrites) the request holds all 3; Train's cancelled, ours stays; ours withdrawn,
    none is left."""
    out = in_cluster(ray_cluster.address, BESIDE_TRAIN)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    trial = json.dumps({"CPU": 1.0, "accel": 1.0}, sort_keys=True)
    assert got["both"] == [trial] * 3, got
    assert got["ours"] == [trial] * 2, got
    assert got["none"] == [], got
