"""Shared fixtures: real CIFAR-10 images, small class-balanced subsets, a real Ray cluster.

Most tests use ``tests/data/cifar10-subset.tar.gz`` (real CIFAR-10 images shipped in the repository, see
tests/data/README.md), so they run on any machine. The few that need the whole data set (``cifar``) resolve
it as ``--data auto`` does (``$ABLATIONS_DATA``, the shared archive beside the checkout, or torchvision's
download) and skip with a one-line reason where none is reachable.

The decoded-data cache lives in ``$ABLATIONS_CACHE`` (default ``~/.cache/ablations``), as for users, so
images are decoded once per machine, not once per test session.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import data as D

from ablations.store.results import RunFolder

SUBSET = Path(__file__).resolve().parent / "data" / "cifar10-subset.tar.gz"


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def subset_archive() -> Path:
    """5,000 training and 1,000 test images of real CIFAR-10 (500 / 100 per class), shipped with the tests."""
    return SUBSET


@pytest.fixture(scope="session")
def subset(subset_archive) -> D.Dataset:
    return D.load(str(subset_archive))


@pytest.fixture(scope="session")
def cifar() -> D.Dataset:
    """The whole real CIFAR-10 (50,000 train + 10,000 test), resolved as ``--data auto`` does; skipped where no
    copy is reachable (no shared archive, no $ABLATIONS_DATA, no internet for torchvision)."""
    source = D.resolve_source("auto")
    if source == "torchvision" and not D.torchvision_downloaded():
        try:
            from torchvision.datasets import CIFAR10

            D.check_reachable(CIFAR10.url)
        except D.DataError as e:
            pytest.skip(f"the whole CIFAR-10 is not reachable: {e}; set ABLATIONS_DATA to a copy")
    return D.load(source)


@pytest.fixture(scope="session")
def small_splits(subset) -> D.Splits:
    """A class-balanced subset: 60 train, 200 validation (stratified), 30 test images per class."""
    return D.make_splits(subset, val_size=200, split_seed=0, train_per_class=60, test_per_class=30)


def make_mini_archive(src: Path, dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """A tar.gz in ImageFolder layout holding the first N real images per class of ``src``."""
    return D.write_subset(src, dest, train_per_class, test_per_class)


@pytest.fixture(scope="session")
def mini_archive(subset_archive, tmp_path_factory) -> Path:
    """40 train and 20 test real images per class, as a .tar.gz in ImageFolder layout."""
    return make_mini_archive(subset_archive, tmp_path_factory.mktemp("data") / "mini.tar.gz", 40, 20)


# another domain's classes, not CIFAR-10's
OTHER_CLASSES = ("barley", "clover", "fennel", "heather", "juniper", "lichen", "moss", "nettle", "sorrel", "thistle")
SUFFIX = {"RGB": ".jpg", "L": ".png", "RGBA": ".png", "P": ".png"}


def make_imagefolder(root: Path, counts: dict[str, tuple[int, int]], sizes=((48, 48),), modes=("RGB",),
                     seed: int = 0) -> Path:
    """An ImageFolder of generated images: for each class, (train, test) images of a pattern of its own (a colour
    and stripes of its own frequency, at a random phase, with noise), so that a model can learn them. Image i of a
    class's split has size ``sizes[i % len(sizes)]`` and mode ``modes[(i // len(sizes)) % len(modes)]``, so every
    size meets every mode; RGB is saved as JPEG, the other modes as PNG (P: an adaptive palette)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, (cls, split_counts) in enumerate(counts.items()):
        colour = np.array([(97 * k) % 256, (53 * k + 80) % 256, (191 * k + 40) % 256], dtype=np.float32)
        for split, n in zip(("train", "test"), split_counts):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                mode = modes[(i // len(sizes)) % len(modes)]
                yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
                stripes = np.sin(2 * np.pi * ((k % 5 + 1) * (xx if k < 5 else yy) + rng.random()))
                pixels = colour * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (h, w, 3))
                im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                if mode == "RGBA":
                    im = im.convert("RGBA")
                    im.putalpha(Image.fromarray(rng.integers(128, 256, (h, w), dtype=np.uint8)))
                elif mode == "P":
                    im = im.convert("P", palette=Image.ADAPTIVE, colors=64)
                elif mode != "RGB":
                    im = im.convert(mode)
                im.save(folder / f"{cls}_{i:04d}{SUFFIX[mode]}")
    return root


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


# ----------------------------------------------------------------------------- S3

BUCKET = "ablations-test"


@pytest.fixture(scope="session")
def s3():
    """A local S3 endpoint (moto in server mode) with one bucket; the environment that points pyarrow (and so
    Ray's storage and the driver) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def s3_keys(env: dict, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    keys, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


# ----------------------------------------------------------------------------- a run under way


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablations.run", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # None or False while waiting; a truthy value or a DataFrame when done
        if isinstance(value, pd.DataFrame) or (value is not None and bool(value)):
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before the condition held:\n{proc.stdout.read()[-3000:]}")
        time.sleep(every)
    raise AssertionError("timed out waiting")


def read_trials(folder: Path) -> pd.DataFrame | None:
    """The trials table of a run under way, as any reader sees it (trials.parquet with the ledger folded in)."""
    try:
        df = RunFolder(folder).read_trials()
    except (OSError, ValueError):
        return None
    return df if len(df) else None


def in_cluster(address: str, body: str):
    """Python ``body`` run in a separate process connected to the Ray cluster at ``address`` (the test process
    stays out of that cluster); the finished process, with its output as text."""
    import subprocess
    import sys

    code = f"import ray\nray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n{body}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def early_in_run(df: pd.DataFrame) -> pd.DataFrame:
    """The running trials 1 or 2 of tests/grids/resume.yaml's 4 epochs in: far enough from their end that the
    driver's table, which can lag its trials by an epoch or more, has not missed their finishing in storage."""
    return df[(df.status == "running") & df.epochs_done.between(1, 2)]


def kill_mid_grid(args: list[str], folder: Path, timeout: float = 600, finished: int = 1) -> tuple:
    """``python -m ablations.run ARGS`` SIGKILLed (the worst moment: no ``finally`` runs) once ``finished`` trials
    have finished and another is early in its run (``early_in_run``): a trial seen near its end may already have
    finished in storage, and its re-collection would not show a resume. (The trials table as it was, the time
    of the kill.)"""
    import signal
    import time

    proc = start_cli(*args)

    def mid_grid():
        df = read_trials(folder)
        if df is None:
            return None
        done = df[df.status == "finished"]
        return df if len(done) >= finished and len(early_in_run(df)) >= 1 else None

    before = wait_for(mid_grid, timeout, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return before, time.time()
