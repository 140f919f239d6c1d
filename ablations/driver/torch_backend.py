"""Ray Train's torch backend, minus the torch import in the Tune trial actor and the Train controller.

Ray Train pickles the backend (``TorchConfig`` and its ``_TorchBackend``) into every run's controller actor,
and unpickling them imports ``ray.train.torch.config``, which imports torch; ``TorchTrainer`` imports it in the
calling Tune trial actor too. Both processes live on the head node, one pair per running trial, and never touch a
tensor. ``LazyTorchConfig`` sets up the same process group with the same Ray functions, but imports them on the
workers only, where torch is loaded anyway: the head's memory per running trial (``plan/measured.yaml``,
``head_memory``, which says what torch would add) and each trial's start stay small.

A one-worker trial sets up no process group at all (nothing to synchronise; no NCCL init that could fail).

It relies on private parts of Ray Train (the helpers of ``ray.train.torch.config``, ``get_address_and_port``,
Train V2's ``TrainingFramework`` and its worker group's ``execute*`` methods); ``torch_config()`` checks that
every one of them exists and otherwise falls back to the stock ``TorchConfig``, so a Ray upgrade costs memory and speed,
never correctness. pyproject.toml bounds Ray to the versions this was tested with.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from ray.train.backend import Backend, BackendConfig

logger = logging.getLogger(__name__)

_WORKER_HELPERS = ("_set_torch_distributed_env_vars", "_setup_torch_process_group", "_shutdown_torch",
                   "TorchConfigContextManager")
SHUTDOWN_TIMEOUT_S = 30


# --- run on the Train workers (torch imported there, lazily) ---------------------------------------------


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


def _set_dist_env() -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    _set_torch_distributed_env_vars()


def _setup_process_group(**kwargs) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    _setup_torch_process_group(**kwargs)


def _shutdown(**kwargs) -> None:
    from ray.train.torch.config import _shutdown_torch

    _shutdown_torch(**kwargs)


class _TrainFuncContext:
    """Ray's ``TorchConfigContextManager`` (sets the worker's CUDA device), imported on first use."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


# --- run in the Train controller (no torch) --------------------------------------------------------------


class LazyTorchBackend(Backend):
    """``ray.train.torch.config._TorchBackend`` for Train V2 with ``init_method="env"`` and gloo or nccl."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: "LazyTorchConfig") -> None:
        if len(worker_group) == 1:
            return  # one worker: no process group to set up (fit() runs without DDP)
        import ray
        from ray.train._internal.utils import get_address_and_port

        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_set_dist_env)
        ray.get([worker_group.execute_single_async(i, _setup_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config) -> None:
        if len(worker_group) == 1:
            return
        import ray
        from ray.exceptions import GetTimeoutError

        futures = worker_group.execute_async(_shutdown, destroy_process_group=True)
        try:
            ray.get(futures, timeout=SHUTDOWN_TIMEOUT_S)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %d s", SHUTDOWN_TIMEOUT_S)


@dataclass
class LazyTorchConfig(BackendConfig):
    backend: Optional[str] = None  # None: nccl with GPUs, else gloo
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return LazyTorchBackend

    @property
    def train_func_context(self):
        return _TrainFuncContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH


_WORKER_GROUP_METHODS = ("execute", "execute_async", "execute_single", "execute_single_async",
                         "get_resources_per_worker", "__len__")


def lazy_backend_supported() -> list[str]:
    """The private Ray parts ``LazyTorchConfig`` needs that this Ray lacks (empty: all there)."""
    missing = []
    try:
        import ray.train.torch.config as ray_torch

        missing += [f"ray.train.torch.config.{n}" for n in _WORKER_HELPERS if not hasattr(ray_torch, n)]
    except ImportError:
        missing.append("ray.train.torch.config")
    try:
        from ray.train._internal.utils import get_address_and_port  # noqa: F401
    except ImportError:
        missing.append("ray.train._internal.utils.get_address_and_port")
    try:
        from ray.train.v2._internal.util import TrainingFramework

        TrainingFramework.TORCH  # noqa: B018
    except (ImportError, AttributeError):
        missing.append("ray.train.v2._internal.util.TrainingFramework.TORCH")
    try:
        from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

        missing += [f"WorkerGroup.{m}" for m in _WORKER_GROUP_METHODS if not hasattr(WorkerGroup, m)]
    except ImportError:
        missing.append("ray.train.v2 WorkerGroup")
    try:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer  # noqa: F401
    except ImportError:
        missing.append("ray.train.v2.api.data_parallel_trainer.DataParallelTrainer")
    return missing


def make_trainer(loop, *, use_gpu: bool, lazy: bool, torch_config: BackendConfig | None = None, **kwargs):
    """The Ray Train trainer of one trial. ``lazy`` (the driver checked ``lazy_backend_supported()`` once): Train
    V2's DataParallelTrainer with ``LazyTorchConfig``, so that neither the calling Tune trial actor (both live on
    the head node, one pair per running trial) nor the Train controller imports torch; ``TorchTrainer`` imports
    it on import. Else a ``TorchTrainer`` with ``torch_config`` (Ray's own by default)."""
    backend = "nccl" if use_gpu else "gloo"
    if lazy:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer(loop, backend_config=LazyTorchConfig(backend=backend), **kwargs)
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(loop, torch_config=torch_config or TorchConfig(backend=backend), **kwargs)


def torch_config(backend: str | None = None) -> BackendConfig:
    """``LazyTorchConfig`` when this Ray has everything it calls, else Ray's own ``TorchConfig``."""
    import ray.train.torch.config as ray_torch

    missing = lazy_backend_supported()
    if not missing:
        return LazyTorchConfig(backend=backend)
    logger.warning("this Ray version lacks %s; using the stock TorchConfig", ", ".join(missing))
    return ray_torch.TorchConfig(backend=backend)
