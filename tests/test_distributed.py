"""Several Ray Train workers per trial are data parallel: each trains on its share of every batch and the
averaged gradients keep them identical; the result matches one process training on whole batches."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch.multiprocessing as mp

from pipeline.config import TrialConfig
from pipeline.prefix_cache import PrefixCache
from pipeline.train import fit

from .conftest import GRIDS, run_cli

CFG = dict(backbone="efficientnet_lite0", resolution=32, train_stages="0", epochs=2, lr=3e-3, batch_size=64,
           device="cpu", threads=1, feature_cache=False)


def _worker(rank: int, world: int, init: str, cfg: dict, data: dict, cache_dir: str, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cache = PrefixCache(cache_dir, dtype="float32")  # the node's cache, shared by the workers
        r = fit(TrialConfig(**cfg), data, prefix_cache=cache)
        out[rank] = (r.logits["test"]["none"], r.history, r.metrics["prefix_path"])
    finally:
        dist.destroy_process_group()


def _two_workers(cfg: dict, data: dict, tmp_path, name: str) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, f"file://{tmp_path}/{name}.pg", cfg, data, str(tmp_path / name), out), nprocs=2,
                 join=True)
        return dict(out)


def _data(small_splits) -> dict:
    return {k: v[:300] if k.startswith("train") else v[:100] for k, v in small_splits.arrays().items()}


def test_two_processes_equal_one_process_on_whole_batches(small_splits, tmp_path):
    data = _data(small_splits)
    single = fit(TrialConfig(**CFG), data)
    results = _two_workers(CFG, data, tmp_path, "node")
    (l0, h0, _), (l1, _, _) = results[0], results[1]
    assert np.array_equal(l0, l1)  # the workers stayed identical
    # the same training as one process on whole batches, up to float summation order
    assert np.allclose(l0.astype(np.float32), single.logits["test"]["none"].astype(np.float32), atol=0.05)
    assert [h["train_loss"] for h in h0] == pytest.approx([h["train_loss"] for h in single.history], rel=1e-3)
    assert [h["train_acc"] for h in h0] == pytest.approx([h["train_acc"] for h in single.history], abs=0.01)


def test_two_processes_on_the_prefix_cache_equal_two_processes_without_it(small_splits, tmp_path):
    """The top stage fine-tuned under DDP on cached prefix outputs (one cache shared by both workers, fp32) is the
    same computation as under DDP on raw images; the workers agree on the path and end identical."""
    cfg = {**CFG, "train_stages": "1", "augment": "basic", "feature_cache": True}
    data = _data(small_splits)
    cached = _two_workers(cfg, data, tmp_path, "cached")
    plain = _two_workers({**cfg, "feature_cache": False}, data, tmp_path, "plain")
    assert [r[2] for r in cached.values()] == ["cached", "cached"] and [r[2] for r in plain.values()] == ["plain"] * 2
    for results in (cached, plain):
        assert np.array_equal(results[0][0], results[1][0])  # the workers stayed identical
    assert np.abs(cached[0][0].astype(np.float32) - plain[0][0].astype(np.float32)).max() <= 1e-3
    assert [h["val_acc"] for h in cached[0][1]] == [h["val_acc"] for h in plain[0][1]]


@pytest.mark.ray
def test_trial_with_two_workers_on_ray(ray_cluster, mini_archive, tmp_path):
    proc = run_cli("--grid", str(GRIDS / "cnn.yaml"), "--data", str(mini_archive), "--results", str(tmp_path),
                   "--address", ray_cluster.address, "--workers", "2", "--no-report")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 worker(s)" in proc.stdout
    df = pd.read_parquet(tmp_path / "cnn" / "trials.parquet")
    assert (df.status == "finished").all() and (df.workers == 2).all()
    assert (df.world_size == 2).all()  # our torch backend set up the process group on both workers


@pytest.mark.parametrize("module, name, imports_torch", [("ablations.driver.torch_backend", "LazyTorchConfig", False),
                                                         ("ray.train.torch.config", "TorchConfig", True)])
def test_backend_config_as_the_train_controller_sees_it(module, name, imports_torch):
    """The Train controller unpickles the backend config and its backend: ours must not import torch there
    (a fresh interpreter shows it; Ray's own config does, which shows the check can fail)."""
    code = (f"import pickle, sys\nfrom {module} import {name}\n"
            f"cfg = pickle.loads(pickle.dumps({name}(backend='gloo')))\n"
            "pickle.loads(pickle.dumps(cfg.backend_cls())); cfg.train_func_context; cfg.framework\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(imports_torch)


def test_torch_config_falls_back_to_rays_own_when_its_helpers_are_missing(monkeypatch):
    import ray.train.torch.config as ray_torch

    from ablations.driver.torch_backend import LazyTorchConfig, torch_config

    assert type(torch_config("gloo")) is LazyTorchConfig
    monkeypatch.delattr(ray_torch, "_setup_torch_process_group")
    cfg = torch_config("gloo")
    assert type(cfg) is ray_torch.TorchConfig and cfg.backend == "gloo"
