"""A real autoscaling Ray cluster on this machine: Ray's fake node provider (``fake_multinode``) behind a head
started with ``ray start --head --autoscaling-config``. The autoscaler adds and removes worker "nodes" (each a
raylet on this machine with the resources its node type declares) as demand comes and goes, exactly as it does
with cloud instances. Ray's wheel lacks the example config that ``ray.cluster_utils.AutoscalingCluster``
reads, so the config is written here.

Every process of the cluster inherits ``ABLATIONS_FAKE_CLUSTER=<id>`` in its environment; ``shutdown`` ends
exactly those processes, so other Ray instances on the machine (other tests, other users) are untouched.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "ABLATIONS_FAKE_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config(head_resources: dict, worker_types: dict, max_workers: int, gcs_address: str,
                       idle_timeout_minutes: float = 0.2) -> dict:
    return {
        "cluster_name": "fake-ablations",
        "max_workers": max_workers,
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        # gcs_address: where the nodes the provider starts find the head (it assumes port 6379 otherwise)
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {"ray.head.default": {"resources": head_resources, "node_config": {},
                                                      "max_workers": 0},
                                 **worker_types},
        "head_node_type": "ray.head.default",
        "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


class FakeAutoscalingCluster:
    def __init__(self, workdir: Path, worker_types: dict, max_workers: int, head_cpus: int = 0,
                 env: dict | None = None):
        self.workdir = Path(workdir)
        self.id = uuid.uuid4().hex[:12]
        from ray._private.services import get_node_ip_address

        self.port = free_port()
        self.address = f"{get_node_ip_address()}:{self.port}"
        self.config = autoscaling_config({"CPU": head_cpus}, worker_types, max_workers, self.address)
        # a short, unique temp dir: Ray's socket paths must stay under 108 characters
        self.tmpdir = Path("/tmp") / f"rf{self.id}"
        # RAY_AUTH_MODE explicit: `ray start` would otherwise turn token authentication on whenever an earlier
        # local instance left a token in ~/.ray, and clients given an explicit address send none
        self.env = {**os.environ, **(env or {}), MARKER: self.id, "RAY_FAKE_CLUSTER": "1",
                    "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_TMPDIR": str(self.tmpdir), "RAY_AUTH_MODE": "disabled"}

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "autoscaling.json"
        cfg.write_text(json.dumps(self.config))
        ray = Path(sys.executable).with_name("ray")
        subprocess.run([str(ray), "start", "--head", f"--port={self.port}", f"--autoscaling-config={cfg}",
                        f"--num-cpus={self.config['available_node_types']['ray.head.default']['resources']['CPU']}",
                        "--include-dashboard=false", f"--temp-dir={self.tmpdir}", "--disable-usage-stats"],
                       env=self.env, check=True, capture_output=True, text=True, timeout=120)
        return self.address

    def pids(self) -> list[int]:
        """Processes of this cluster: those whose environment carries our marker."""
        needle = f"{MARKER}={self.id}".encode()
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                continue
        return out

    def shutdown(self, timeout: float = 20.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.5)
            if not self.pids():
                break
        subprocess.run(["rm", "-rf", str(self.tmpdir)], check=False)
