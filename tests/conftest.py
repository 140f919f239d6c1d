"""Shared fixtures: real CIFAR-10 from the shared archive, small class-balanced subsets, a real Ray cluster.

The decoded-data cache lives in ``$ABLATIONS_CACHE`` (default ``~/.cache/ablations``), as for users, so
the 60,000 images are decoded once per machine, not once per test session.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import data as D

ARCHIVE = D.SHARED_ARCHIVE


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def archive() -> Path:
    if not ARCHIVE.exists():
        pytest.fail(f"the shared CIFAR-10 archive is missing: {ARCHIVE}")
    return ARCHIVE


@pytest.fixture(scope="session")
def cifar(archive) -> D.Dataset:
    """The whole real CIFAR-10 (50,000 train + 10,000 test), decoded once and cached on disk."""
    return D.load(str(archive))


@pytest.fixture(scope="session")
def small_splits(cifar) -> D.Splits:
    """A class-balanced subset: 60 train, 200 validation (stratified), 30 test images per class."""
    return D.make_splits(cifar, val_size=200, split_seed=0, train_per_class=60, test_per_class=30)


def make_mini_archive(src: Path, dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """A tar.gz in ImageFolder layout holding the first N real images per class of ``src``."""
    counts: dict[tuple[str, str], int] = {}
    limit = {"train": train_per_class, "test": test_per_class}
    with tarfile.open(src, "r:*") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in limit:
                continue
            key = (parts[-3], parts[-2])
            if counts.get(key, 0) >= limit[parts[-3]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            tout.addfile(m, tin.extractfile(m))
    return dest


@pytest.fixture(scope="session")
def mini_archive(archive, tmp_path_factory) -> Path:
    """40 train and 20 test real images per class, as a .tar.gz in ImageFolder layout."""
    return make_mini_archive(archive, tmp_path_factory.mktemp("data") / "mini.tar.gz", 40, 20)


def digest_rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


# ----------------------------------------------------------------------------- Ray

REPO = Path(__file__).resolve().parents[1]
GRIDS = Path(__file__).resolve().parent / "grids"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster of two nodes (a head and a worker), shared by the tests that need one.

    Each node has one unit of the custom resource ``accel``, which stands in for a GPU in the tests of
    GPU packing and placement (``--gpu-resource accel``); no CUDA device is faked."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"accel": 1},
                                                            "object_store_memory": 150 * 2**20,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=2, resources={"accel": 1}, object_store_memory=100 * 2**20)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def run_cli(*args: str, timeout: float = 600, env: dict | None = None):
    """``python -m ablations.run ARGS`` in a subprocess, as a user runs it."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ablations.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
