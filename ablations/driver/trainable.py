"""What runs inside Ray: the Tune function trainables of a trial, and the fit they share.

Two ways to run one trial (``Resources.runner``):

* ``actor`` (one worker, the default): the Tune trial actor itself runs ``pipeline.train.fit``. It holds the
  trial's CPUs and GPU share and is reused from trial to trial, so torch is imported and the CUDA context made
  once per actor, not once per trial. Epoch checkpoints and the final artifacts are written to the run's storage
  under the trial id (``TrialStore``), so a retry (Tune restarts the function), a resumed run or another node
  continues from the last epoch.
* ``train`` (``--workers > 1``, or ``--trial-runner train``): one trial = one Ray Train run named by the trial id
  (a Train controller and a worker group per trial); a re-run of the same trial finds its own checkpoints in
  storage and continues from the last epoch.

Either way every epoch is reported as ``{"kind": "epoch", ...}`` and the end as ``{"kind": "final",
"checkpoint_path": ...}``, a directory in storage holding ``final.json``, ``logits.npz`` and ``model.pt``, which
the driver copies into the results folder (``ablations.session.events``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ablations.driver.spec import TrialSpec
from ablations.store.mirror import filesystem

FINAL_FILES = ("final.json", "logits.npz", "model.pt")


def fit_trial(loop_config: dict[str, Any], device, resume, on_epoch):
    """``pipeline.train.fit`` for one trial config on ``device``, with this node's prefix cache and the parent's
    weights (init_from); the result's metrics carry where and when it ran."""
    import time

    import ray
    import ray.util

    from pipeline.config import TrialConfig
    from pipeline.prefix_cache import PrefixCache
    from pipeline.train import fit

    cfg = TrialConfig(**loop_config["config"])
    arrays = ray.get(loop_config["data"]["ref"])  # zero-copy views of the object store on this node
    t_fit = time.time()
    init = loop_config.get("init")  # the parent's trained state (init_from), through the object store
    result = fit(cfg, arrays, device=device, on_epoch=on_epoch, resume=resume,
                 prefix_cache=PrefixCache.default(),  # on this node's disk, shared by its trials
                 classes=tuple(loop_config["data"]["classes"]), init_state=ray.get(init) if init is not None else None)
    result.metrics.update({"node_id": ray.get_runtime_context().get_node_id(),
                           "node_ip": ray.util.get_node_ip_address(),
                           "t_trainable_start": loop_config.get("t_trainable_start", float("nan")),
                           "t_worker_start": loop_config.get("t_worker_start", t_fit), "t_fit_start": t_fit,
                           "t_fit_end": time.time()})
    return result


def write_final_files(result, d: Path) -> None:
    """The final artifacts of a trial: final.json (metrics, history), logits.npz (every split and view), model.pt."""
    import numpy as np
    import torch

    flat = {f"{s}/{v}": a for s, views in result.logits.items() for v, a in views.items()}
    np.savez(d / "logits.npz", **flat)
    torch.save({"config": result.config, "state": result.state}, d / "model.pt")
    (d / "final.json").write_text(json.dumps({"metrics": result.metrics, "history": result.history}))


def final_report(d: Path) -> dict[str, Any]:
    """What the final report carries through Tune: only the headline numbers (Tune keeps running statistics of
    every numeric metric of every trial in the driver); the driver reads the rest from final.json."""
    final = json.loads((d / "final.json").read_text())
    return {"kind": "final", **{k: final["metrics"][k] for k in ("val_acc", "test_acc") if k in final["metrics"]}}


# ----------------------------------------------------------------------------- runner "actor": in the Tune actor


class TrialStore:
    """A trial's files in the run's storage (a local path or a URI such as ``s3://bucket/prefix``), under
    ``<storage>/<trial_id>/actor/``: ``epoch-NNNN/state.pt`` after each epoch (the newest complete one is kept),
    then ``final/`` with the final artifacts. Files are written under a temporary name and moved into place, so a
    reader never sees half a file."""

    def __init__(self, storage: str, trial_id: str):
        self.fs, root = filesystem(storage)
        self.root = f"{root.rstrip('/')}/{trial_id}/actor"

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _put(self, path: str, data: bytes) -> None:
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path + ".tmp") as f:
            f.write(data)
        self.fs.move(path + ".tmp", path)

    def _epochs(self) -> list[str]:
        import pyarrow.fs as pafs

        if not self._exists(self.root):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root))
        return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch-"))

    @property
    def final(self) -> str:
        return f"{self.root}/final"

    def has_final(self) -> bool:
        return self._exists(f"{self.final}/final.json")

    def save_state(self, epoch: int, state: dict) -> None:
        """The state after ``epoch`` epochs; older epochs' states are removed once it is in place."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        path = f"{self.root}/epoch-{epoch:04d}"
        self._put(f"{path}/state.pt", buf.getvalue())
        for old in self._epochs():
            if old.rstrip("/") != path:
                self.fs.delete_dir(old)

    def load_state(self) -> dict | None:
        """The newest complete epoch state, or None."""
        import io

        import torch

        for path in reversed(self._epochs()):
            if self._exists(f"{path}/state.pt"):
                with self.fs.open_input_stream(f"{path}/state.pt") as f:
                    return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
        return None

    def save_final(self, d: Path) -> str:
        """The final artifacts (final.json last: its presence means the others are complete); epoch states go."""
        for name in (*[n for n in FINAL_FILES if n != "final.json"], "final.json"):
            self._put(f"{self.final}/{name}", (d / name).read_bytes())
        for old in self._epochs():
            self.fs.delete_dir(old)
        return self.final


def run_trial_in_actor(tune_config: dict[str, Any], data: dict[str, Any]) -> None:
    """Tune function trainable of runner "actor": ``fit`` here, in the Tune trial actor, which holds the trial's
    resources (``TrialSpec.resources``). A trial whose final artifacts are already in storage (it finished before
    the driver collected it) only reports them; one with an epoch state resumes from it."""
    import time

    t_start = time.time()
    spec = TrialSpec.from_tune(tune_config["trial"])
    import ray
    import torch
    from ray import tune

    from pipeline.train import resolve_device

    store = TrialStore(spec.storage, spec.trial_id)
    if not store.has_final():
        # Ray assigns GPUs (CUDA_VISIBLE_DEVICES) only for the 'GPU' resource; with a custom --gpu-resource the
        # config's device decides (auto: this node's GPU if it has one)
        use_gpu = spec.resources.use_gpu and bool(ray.get_gpu_ids())
        device = torch.device("cuda", 0) if use_gpu else resolve_device(spec.config["device"])
        try:
            _fit_into_store(spec, data, device, store, t_start)
        finally:  # the actor runs the next trial: give back what this one held on the GPU
            if device.type == "cuda":
                import gc

                gc.collect()
                torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as d:
        with store.fs.open_input_stream(f"{store.final}/final.json") as f:
            (Path(d) / "final.json").write_bytes(f.read())
        tune.report({**final_report(Path(d)), "checkpoint_path": store.final})


def _fit_into_store(spec: TrialSpec, data: dict[str, Any], device, store: TrialStore, t_start: float) -> None:
    """Fit the trial from its newest epoch state in ``store`` (if any), reporting every epoch, and put its final
    artifacts into ``store``."""
    from ray import tune

    def on_epoch(row: dict, make_checkpoint) -> None:
        store.save_state(int(row["epoch"]), make_checkpoint())
        tune.report({"kind": "epoch", "trial_id": spec.trial_id, **row})

    loop_config = {"config": spec.config, "trial_id": spec.trial_id, "data": data,
                   "t_trainable_start": t_start, "t_worker_start": t_start, "init": spec.init}
    result = fit_trial(loop_config, device, store.load_state(), on_epoch)
    with tempfile.TemporaryDirectory() as d:
        write_final_files(result, Path(d))
        store.save_final(Path(d))


# ----------------------------------------------------------------------------- runner "train": a Ray Train run


def train_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: run ``pipeline.train.fit`` on this worker's device, report every epoch."""
    import time

    t_worker = time.time()
    import ray.train
    import torch

    from pipeline.train import resolve_device

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # Ray assigns a GPU only for the 'GPU' resource; with a custom --gpu-resource the config's device decides
    # (auto: this node's GPU if it has one)
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else resolve_device(loop_config["config"]["device"])

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

    result = fit_trial({**loop_config, "t_worker_start": t_worker}, device, resume, on_epoch)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if rank == 0:
            write_final_files(result, d)
        _report_final_dir(d, rank)


def _report_final_dir(d: Path, rank: int) -> None:
    import ray.train

    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            for name in FINAL_FILES:
                shutil.copy(d / name, Path(tmp) / name)
            ray.train.report(final_report(d), checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"kind": "final"})


def run_trial(tune_config: dict[str, Any], data: dict[str, Any], loop=train_loop, torch_config=None) -> None:
    """Tune function trainable: one Ray Train run (of ``loop`` on each worker) for one trial config. With the
    driver's ``lazy_backend`` (``torch_backend.lazy_backend_supported``), a DataParallelTrainer with
    ``LazyTorchConfig``: torch is imported neither here nor in the Train controller; else a TorchTrainer with
    ``torch_config`` (default: Ray's own)."""
    import time

    t_start = time.time()
    spec = TrialSpec.from_tune(tune_config["trial"])
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    from ablations.driver.torch_backend import make_trainer

    res = spec.resources
    trainer = make_trainer(
        loop, use_gpu=res.use_gpu, lazy=spec.lazy_backend and torch_config is None, torch_config=torch_config,
        train_loop_config={"config": spec.config, "trial_id": spec.trial_id, "data": data, "use_gpu": res.use_gpu,
                           "t_trainable_start": t_start, "init": spec.init},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.use_gpu,
                                     resources_per_worker=res.worker_bundle()),
        run_config=RunConfig(
            name=spec.trial_id,
            storage_path=spec.storage,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=spec.retries),
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
    from ray.train import Checkpoint

    fs, _ = filesystem(storage)
    dest.mkdir(parents=True, exist_ok=True)
    Checkpoint(path=checkpoint_path, filesystem=fs).to_directory(str(dest))
    return dest
