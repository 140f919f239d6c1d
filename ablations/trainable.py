"""What runs inside Ray: the Tune function trainable, and the Ray Train worker loop it starts.

One Tune trial = one ``TorchTrainer`` run named by the trial id, so a re-run of the same trial (after a
crash, a retry or a resume) finds its own checkpoints in storage and continues from the last epoch.
Workers report every epoch with a checkpoint (``state.pt``), and once more at the end with the final
artifacts (``final.json``, ``logits.npz``, ``model.pt``); the driver copies those into the results folder.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

FINAL_FILES = ("final.json", "logits.npz", "model.pt")


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: run ``pipeline.train.fit`` on this worker's device, report every epoch."""
    import time

    t_worker = time.time()
    import numpy as np
    import ray
    import ray.train
    import torch

    from pipeline.config import TrialConfig
    from pipeline.prefix_cache import PrefixCache
    from pipeline.train import fit, resolve_device

    cfg = TrialConfig(**loop_config["config"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # Ray assigns a GPU only for the 'GPU' resource; with a custom --gpu-resource the config's device decides
    # (auto: this node's GPU if it has one)
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else resolve_device(cfg.device)
    arrays = ray.get(loop_config["data"]["ref"])  # zero-copy views of the object store on this node

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if (Path(d) / "final.json").exists():  # finished before the driver could collect it
                _report_final_dir(Path(d), rank)
                return
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)

    def on_epoch(row: dict, make_checkpoint) -> None:
        metrics = {"kind": "epoch", "trial_id": loop_config["trial_id"], **row}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(make_checkpoint(), Path(d) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    t_fit = time.time()
    init = loop_config.get("init")  # the parent's trained state (init_from), through the object store
    result = fit(cfg, arrays, device=device, on_epoch=on_epoch, resume=resume,
                 prefix_cache=PrefixCache.default(),  # on this node's disk, shared by its trials
                 classes=tuple(loop_config["data"]["classes"]), init_state=ray.get(init) if init is not None else None)
    result.metrics.update({"node_id": ray.get_runtime_context().get_node_id(),
                           "node_ip": ray.util.get_node_ip_address(),
                           "t_trainable_start": loop_config.get("t_trainable_start", float("nan")),
                           "t_worker_start": t_worker, "t_fit_start": t_fit, "t_fit_end": time.time()})

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if rank == 0:
            flat = {f"{s}/{v}": a for s, views in result.logits.items() for v, a in views.items()}
            np.savez(d / "logits.npz", **flat)
            torch.save({"config": result.config, "state": result.state}, d / "model.pt")
            (d / "final.json").write_text(json.dumps({"metrics": result.metrics, "history": result.history}))
        _report_final_dir(d, rank)


def _report_final_dir(d: Path, rank: int) -> None:
    import ray.train

    metrics: dict[str, Any] = {"kind": "final"}
    if rank == 0:
        # The driver reads everything from final.json in the checkpoint. Tune keeps running statistics of every
        # numeric metric of every trial in the driver, so only the headline numbers travel through it.
        final = json.loads((d / "final.json").read_text())
        metrics.update({k: final["metrics"][k] for k in ("val_acc", "test_acc") if k in final["metrics"]})
        with tempfile.TemporaryDirectory() as tmp:
            for name in FINAL_FILES:
                shutil.copy(d / name, Path(tmp) / name)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def run_trial(tune_config: dict[str, Any], data: dict[str, Any], loop=train_loop, torch_config=None) -> None:
    """Tune function trainable: one Ray Train run (of ``loop`` on each worker) for one trial config. With the
    driver's ``lazy_backend`` (``torch_backend.lazy_backend_supported``), a DataParallelTrainer with
    ``LazyTorchConfig``: torch is imported neither here nor in the Train controller; else a TorchTrainer with
    ``torch_config`` (default: Ray's own)."""
    import time

    t_start = time.time()
    config = tune_config["trial"]
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from .torch_backend import make_trainer

    res = config["resources"]
    per_worker = {"CPU": res["cpus"]}
    if res["gpus"]:
        per_worker[res["gpu_resource"]] = res["gpus"]
    use_gpu = bool(res["gpus"]) and res["gpu_resource"] == "GPU"
    trainer = make_trainer(
        loop, use_gpu=use_gpu, lazy=config.get("lazy_backend", False) and torch_config is None,
        torch_config=torch_config,
        train_loop_config={"config": config["config"], "trial_id": config["trial_id"], "data": data,
                           "use_gpu": use_gpu, "t_trainable_start": t_start, "init": config.get("init")},
        scaling_config=ScalingConfig(num_workers=res["workers"], use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=config["trial_id"],
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=config.get("retries", 0)),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()
    wait_for_tune_to_take_the_last_result()


def wait_for_tune_to_take_the_last_result(timeout_s: float = 3600.0, poll_s: float = 0.1) -> None:
    """Return from the trainable only once Tune has taken the trial's last result.

    Ray 2.60 race: Train's ``TuneReportCallback`` hands each report to this trial's Tune session through a queue,
    which the session empties only when the driver asks for the trial's next result. When the trainable function
    returns, the session reports a closing result (``RESULT_DUPLICATE``) into the same one-slot result queue. If
    the final report is still in the hand-over queue then (a driver slowed by collecting a checkpoint or by a
    tracker), the session's main thread later blocks forever putting it into the full result queue and the trial
    never finishes. Waiting here until both queues stay empty avoids it. (Private parts of the session, guarded:
    without them there is nothing to wait for.)"""
    import time

    try:
        from ray.train._internal.session import get_session

        session = get_session()
        handover, results = session._inter_actor_queue, session.result_queue
    except Exception:  # noqa: BLE001 - another Ray: its own behaviour
        return
    if handover is None:
        return
    deadline, quiet = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline and quiet < 2:  # twice in a row: not caught between a get and a put
        quiet = quiet + 1 if handover.empty() and results.empty() else 0
        time.sleep(poll_s)


def fetch_checkpoint(storage: str, checkpoint_path: str, dest: Path) -> Path:
    """Copy a checkpoint directory (local or cloud storage) into ``dest``."""
    import pyarrow.fs

    from ray.train import Checkpoint

    fs, _ = pyarrow.fs.FileSystem.from_uri(storage) if "://" in storage else (pyarrow.fs.LocalFileSystem(), None)
    dest.mkdir(parents=True, exist_ok=True)
    Checkpoint(path=checkpoint_path, filesystem=fs).to_directory(str(dest))
    return dest
