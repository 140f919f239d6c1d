"""Ray's own costs, measured for ``python -m ablations.bench``: what an empty trial costs through Tune and Ray Train
(our settings against Ray's defaults), what one concurrent trial costs the head node, and the driver's session
(ledger, collector, progress) fed synthetic trials at scale."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- 3. Ray overhead


def empty_loop(loop_config: dict) -> None:
    """A Ray Train worker that reports once: what a trial costs besides its training. With ``timeline`` in the
    config, it appends when it ran to that file (the trial's phases, ``overhead_phases``)."""
    import ray.train

    t = time.time()
    _note(loop_config["config"], {"loop": t, "trainable": loop_config.get("t_trainable_start")})
    ray.train.report({"kind": "empty", "t_loop": t})


def _note(config: dict, times: dict) -> None:
    path = config.get("timeline")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"seed": config["seed"], **times}) + "\n")


def empty_trial(tune_config: dict, data: dict) -> None:
    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop)
    _note(tune_config["trial"]["config"], {"returned": time.time()})


def overhead_phases(timeline: Path, t_fit: float) -> dict[str, float]:
    """Median seconds of each phase of sequential empty trials (concurrency 1), from their timeline: Tune
    between one trial's end and the next trial's function starting (actor start, scheduling; the first trial
    from ``t_fit``), the function starting its Train run until the worker runs the loop (controller, worker
    group, backend set-up), and the loop's report until the function returns (hand-over, worker group
    shut-down)."""
    events: dict[int, dict] = {}
    for line in timeline.read_text().splitlines():
        e = json.loads(line)
        events.setdefault(e.pop("seed"), {}).update({k: v for k, v in e.items() if v is not None})
    rows = [events[k] for k in sorted(events)]
    phases: dict[str, list[float]] = {"tune_to_trainable": [], "trainable_to_loop": [], "loop_to_returned": []}
    end = t_fit
    for r in sorted(rows, key=lambda r: r["trainable"]):
        phases["tune_to_trainable"].append(r["trainable"] - end)
        phases["trainable_to_loop"].append(r["loop"] - r["trainable"])
        phases["loop_to_returned"].append(r["returned"] - r["loop"])
        end = r["returned"]
    return {k: float(np.median(v)) for k, v in phases.items()}


def empty_trial_stock(tune_config: dict, data: dict) -> None:
    """The same, with Ray's own ``TorchConfig`` (which imports torch in the Train controller)."""
    from ray.train.torch import TorchConfig

    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=empty_loop, torch_config=TorchConfig())


def bench_overhead(n_trials: int) -> dict:
    """Wall time per empty trial, our settings vs Ray's defaults, sequential and at default concurrency."""
    import ray

    from pipeline.config import TrialConfig

    from ablations.driver import tune as R
    from ablations.driver.cluster import RAY_TRAIN_ENV
    from ablations.plan.resources import Resources

    res = Resources(cpus=1, gpus=0, workers=1, gpu_resource="GPU", concurrency=1)
    out: dict[str, Any] = {"trials": n_trials}
    settings = {"ours": (RAY_TRAIN_ENV, True, empty_trial), "ray_defaults": ({}, False, empty_trial_stock)}
    for name, (env, reuse, trainable) in settings.items():
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": dict(env)})
        out.setdefault("ray_init_seconds", {})[name] = time.perf_counter() - t0
        try:
            cpus = int(ray.cluster_resources()["CPU"])
            with tempfile.TemporaryDirectory() as storage:
                timeline = Path(storage) / "timeline.jsonl"
                for conc in (1, cpus):
                    trials = [R.TrialSpec.of(f"empty{conc}-{i}", TrialConfig(seed=i), res, storage, 0)
                              for i in range(n_trials)]
                    if conc == 1 and name == "ours":
                        for t in trials:
                            t.config["timeline"] = str(timeline)
                    t, t_wall = time.perf_counter(), time.time()
                    R.make_tuner(trainable, {}, trials, conc, storage, [], reuse_actors=reuse).fit()
                    out.setdefault(name, {})[f"seconds_per_trial_concurrency_{conc}"] = \
                        (time.perf_counter() - t) / n_trials
                    if conc == 1 and name == "ours":
                        out["phases_ours_concurrency_1"] = overhead_phases(timeline, t_wall)
        finally:
            ray.shutdown()
    out["cpus"] = cpus
    for key in out["ours"]:
        out.setdefault("ratio_ours_vs_defaults", {})[key] = out["ours"][key] / out["ray_defaults"][key]
    return out


# ----------------------------------------------------------------------------- 3b. head-node memory per trial


def waiting_loop(loop_config: dict) -> None:
    """A Ray Train worker that holds its trial open for a while, so that many trials are alive at once."""
    import ray.train

    time.sleep(loop_config["config"].get("hold_s", 20.0))
    ray.train.report({"kind": "empty", "t_loop": time.time()})


def waiting_trial(tune_config: dict, data: dict) -> None:
    from ablations.driver.trainable import run_trial

    run_trial(tune_config, data, loop=waiting_loop)


HEAD_PROCESS_KINDS = {"trial actor": ("ImplicitFunc", "waiting_trial", "run_trial"), "train controller": ("TrainController",)}


def _pss_mib(pid_dir: Path) -> float:
    """Proportional set size: resident memory with shared pages (torch's libraries, Ray's) divided among the
    processes sharing them, so that the sum over processes is what they take together."""
    for line in (pid_dir / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise ValueError("no Pss line")


def _ray_processes() -> dict[str, float]:
    """Memory (PSS, MiB) of this machine's Ray actor processes, by kind (from their process titles)."""
    out = {k: 0.0 for k in HEAD_PROCESS_KINDS}
    count = {k: 0 for k in HEAD_PROCESS_KINDS}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = _pss_mib(d) if title.startswith("ray::") else 0.0
        except (OSError, IndexError, ValueError):
            continue
        if not title.startswith("ray::"):
            continue
        for kind, names in HEAD_PROCESS_KINDS.items():
            if any(n in title for n in names):
                out[kind] += rss
                count[kind] += 1
    return {**{f"{k}_mib": v for k, v in out.items()}, **{f"{k}_count": c for k, c in count.items()}}


def bench_head_memory(concurrency: tuple[int, ...] = (2, 8), hold_s: float = 25.0) -> dict:
    """What one concurrent trial costs the head node, where its Tune trial actor and Ray Train controller live:
    ``concurrency`` trials held open at once (their workers sleep), the resident memory of those processes
    sampled while all are alive, per trial. Sizes the head node (cluster.yaml, README)."""
    import threading

    import ray

    from pipeline.config import TrialConfig

    from ablations.driver import tune as R
    from ablations.driver.cluster import RAY_TRAIN_ENV
    from ablations.plan.resources import Resources

    out: dict[str, Any] = {"hold_s": hold_s, "runs": {}}
    n_cpus = max(concurrency)
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, num_cpus=n_cpus,
             runtime_env={"env_vars": dict(RAY_TRAIN_ENV)})
    try:
        for n in concurrency:
            res = Resources(cpus=0.001, gpus=0, workers=1, gpu_resource="GPU", concurrency=n)
            samples: list[dict] = []
            stop = threading.Event()

            def sample():
                while not stop.wait(1.0):
                    samples.append(_ray_processes())

            with tempfile.TemporaryDirectory() as storage:
                trials = [R.TrialSpec.of(f"hold{n}-{i}", TrialConfig(seed=i), res, storage, 0) for i in range(n)]
                for t in trials:
                    t.config["hold_s"] = hold_s
                thread = threading.Thread(target=sample, daemon=True)
                thread.start()
                R.make_tuner(waiting_trial, {}, trials, n, storage, []).fit()
                stop.set()
                thread.join()
            full = [s for s in samples if s["train controller_count"] >= n and s["trial actor_count"] >= n]
            peak = max(full or samples, key=lambda s: s["trial actor_mib"] + s["train controller_mib"])
            total = peak["trial actor_mib"] + peak["train controller_mib"]
            out["runs"][str(n)] = {**peak, "all_alive": bool(full), "mib_per_trial": total / n}
            print(f"  head memory, {n} trials at once: {total / n:.0f} MiB per trial", flush=True)
    finally:
        ray.shutdown()
    out["mib_per_trial"] = max(r["mib_per_trial"] for r in out["runs"].values())
    return out



# ----------------------------------------------------------------------------- 4b. the driver at scale

SCALE_GRID = {"description": "synthetic trials for the driver_scale section", "seeds": 1,
              "base": {"backbone": "small_cnn", "pretrained": False, "train_stages": "all", "resolution": 32,
                       "epochs": 10, "train_per_class": 20, "val_size": 200, "test_per_class": 50},
              "levels": {"L3": {"set": {"head": "mlp"}}}}


def synthetic_checkpoint(d: Path, classes: tuple[str, ...], n_val: int, n_test: int) -> Path:
    """A final checkpoint as a worker writes it (``ablations.driver.trainable``): final.json, logits.npz, model.pt."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "logits.npz", **{"val/none": rng.normal(size=(n_val, 10)).astype(np.float16),
                                  "test/none": rng.normal(size=(n_test, 10)).astype(np.float16)})
    (d / "model.pt").write_bytes(rng.bytes(16 * 1024))
    now = time.time()
    metrics = {"val_acc": 0.41, "test_acc": 0.40, "macro_f1": 0.39, "test_acc_flip": 0.42, "trainable_params": 1.2e6,
               "train_seconds": 30.0, "trial_seconds": 35.0, "eval_seconds": 2.0, "train_images_per_second": 500.0,
               "resumed_from_epoch": 0, "world_size": 1, "device_type": "cpu", "node_id": "n" * 56,
               "node_ip": "10.0.0.1", "feature_cache_state": "off", "t_trainable_start": now,
               "t_worker_start": now + 1, "t_fit_start": now + 2, "t_fit_end": now + 32,
               **{f"test_acc_{c}": 0.4 for c in classes}, **{f"f1_{c}": 0.4 for c in classes}}
    history = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "val_loss": 2.1 / e, "val_acc": 0.04 * e,
                "lr": 1e-3, "seconds": 3.0} for e in range(1, 11)]
    (d / "final.json").write_text(json.dumps({"metrics": metrics, "history": history}))
    return d


TUNE_KEYS = {"timestamp": 0, "done": False, "date": "2026-01-01_00-00-00", "time_this_iter_s": 3.0,
             "time_total_s": 3.0, "pid": 1, "hostname": "bench", "node_ip": "10.0.0.1", "checkpoint_dir_name": None,
             "time_since_restore": 3.0, "iterations_since_restore": 1}  # what Tune adds to every result


class DriverFeed:
    """A driver session (``ablations.session.events``: ledger, collector, progress) fed synthetic events, each
    timed (and, with ``trace_memory``, the traced memory after it); with ``tensorboard_dir`` each result also goes
    to the TensorBoard callback (``ablations.driver.trackers``), timed apart."""

    def __init__(self, plan, folder_dir: Path, concurrency: int, tensorboard_dir: Path | None, trace_memory: bool):
        from ablations.session.events import Session
        from ablations.session.progress import Eta, Progress, labels
        from ablations.store.collector import Collector
        from ablations.store.ledger import Ledger
        from ablations.store.results import RunFolder

        self.folder = RunFolder(folder_dir)
        self.folder.path.mkdir(parents=True)
        self.ledger = Ledger(self.folder, plan)
        self.ledger.open()
        self.sink = open(os.devnull, "w")
        progress = Progress(labels(plan), self.ledger.counts, Eta({t: 35.0 for t in self.ledger.trials}, concurrency),
                            out=self.sink)
        self.session = Session(self.ledger, Collector(self.folder, "best"), progress)
        self.trace_memory = trace_memory
        self.seconds: list[float] = []
        self.memory: list[int] = []
        self.tb, self.tb_trials, self.tb_seconds = None, {}, []
        if tensorboard_dir is not None:
            from ablations.driver.trackers import tensorboard_callback

            self.tb = tensorboard_callback(tensorboard_dir)

    def timed(self, fn, *a):
        import tracemalloc

        t = time.perf_counter()
        out = fn(*a)
        self.seconds.append(time.perf_counter() - t)
        if self.trace_memory:
            self.memory.append(tracemalloc.get_traced_memory()[0])
        return out

    def to_tensorboard(self, tid: str, result: dict) -> None:
        if self.tb is not None:
            t = time.perf_counter()
            self.tb.on_trial_result(iteration=0, trials=[], trial=self.tb_trials[tid], result=result)
            self.tb_seconds.append(time.perf_counter() - t)

    def start(self, tid: str) -> None:
        self.timed(self.session.started, tid)
        if self.tb is not None:
            from ray.tune.experiment import Trial

            spec = {"trial": {"trial_id": tid, "config": self.ledger.trials[tid].to_dict()}}
            self.tb_trials[tid] = Trial("run_trial", config=spec, evaluated_params=spec, stub=True)

    def epoch(self, tid: str, e: int) -> None:
        result = {"kind": "epoch", "trial_id": tid, "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.1 * e,
                  "val_loss": 2.1 / e, "val_acc": 0.04 * e, "lr": 1e-3, "seconds": 3.0, "training_iteration": e,
                  **TUNE_KEYS}
        self.timed(self.session.epoch, tid, result)
        self.to_tensorboard(tid, result)

    def finish(self, tid: str, checkpoint: Path, epochs: int) -> None:
        metrics = self.timed(self.session.finished, tid, checkpoint)
        if self.tb is not None:
            from ablations.driver.trackers import final_metrics

            self.to_tensorboard(tid, {"kind": "final", "val_acc": 0.41, "test_acc": 0.40,
                                      "training_iteration": epochs + 1, "final": final_metrics(metrics), **TUNE_KEYS})
            self.tb.on_trial_complete(iteration=0, trials=[], trial=self.tb_trials.pop(tid))


def feed_driver(n_trials: int, epochs: int, concurrency: int, folder_dir: Path, checkpoint: Path,
                tensorboard_dir: Path | None = None, trace_memory: bool = False) -> dict:
    """The events of ``n_trials`` synthetic trials, ``concurrency`` at a time (a start, ``epochs`` epoch results and
    a final result each), through a ``DriverFeed``; per-event seconds (and traced memory) in event order, and what
    reading the live tables and compacting them at the end took."""
    import tracemalloc

    from ablations.plan import grids

    plan = grids.expand("scale", SCALE_GRID, seeds=n_trials)
    feed = DriverFeed(plan, folder_dir, concurrency, tensorboard_dir, trace_memory)
    tids = list(feed.ledger.trials)
    if trace_memory:
        tracemalloc.start()
    for i in range(0, len(tids), concurrency):
        wave = tids[i:i + concurrency]
        for tid in wave:
            feed.start(tid)
        for e in range(1, epochs + 1):
            for tid in wave:
                feed.epoch(tid, e)
        for tid in wave:
            feed.finish(tid, checkpoint, epochs)
    if trace_memory:
        tracemalloc.stop()
    t = time.perf_counter()
    live = feed.folder.read_trials()  # what a report on the running run reads: the tables with the ledger folded in
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    feed.ledger.close()
    close_s = time.perf_counter() - t
    feed.sink.close()
    assert (live.status == "finished").all() and len(feed.folder.read_epochs()) == n_trials * epochs
    return {"seconds": feed.seconds, "memory": feed.memory, "tensorboard_seconds": feed.tb_seconds,
            "read_live_s": read_s, "compact_s": close_s}


def bench_driver_scale(n_trials: int = 2000, epochs: int = 10, concurrency: int = 8) -> dict:
    """Time and memory per event of the driver's own code at ``n_trials`` trials: the first 10% of events against
    the last 10%. A driver that rewrote its tables or scanned its plan per event would get slower as the run
    grows; the target is a ratio of at most 1.2."""
    from pipeline.data import CIFAR10_CLASSES

    out: dict[str, Any] = {"trials": n_trials, "epochs": epochs, "concurrency": concurrency,
                           "events": n_trials * (epochs + 2)}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ckpt = synthetic_checkpoint(d / "checkpoint", CIFAR10_CLASSES, 200, 500)
        timing = feed_driver(n_trials, epochs, concurrency, d / "timed", ckpt)
        traced = feed_driver(n_trials, epochs, concurrency, d / "traced", ckpt, trace_memory=True)
        tb = feed_driver(n_trials, epochs, concurrency, d / "tensorboard", ckpt, tensorboard_dir=d / "tb")
    n = len(timing["seconds"])
    k = max(n // 10, 1)
    first, last = timing["seconds"][:k], timing["seconds"][-k:]
    mem = traced["memory"]
    out["first_10pct"] = {"events": k, "ms_per_event": 1e3 * sum(first) / k,
                          "kib_per_event": (mem[k - 1] - mem[0]) / 1024 / max(k - 1, 1)}
    out["last_10pct"] = {"events": k, "ms_per_event": 1e3 * sum(last) / k,
                         "kib_per_event": (mem[-1] - mem[-k]) / 1024 / max(k - 1, 1)}
    out["ratio_last_over_first"] = out["last_10pct"]["ms_per_event"] / out["first_10pct"]["ms_per_event"]
    out["total_s"] = sum(timing["seconds"])
    out["traced_mib_at_end"] = mem[-1] / 2**20
    out["read_live_s"], out["compact_s"] = timing["read_live_s"], timing["compact_s"]
    tbs = tb["tensorboard_seconds"]
    out["tensorboard"] = {"ms_per_event": 1e3 * sum(tbs) / len(tbs),
                          "ms_per_trial": 1e3 * sum(tbs) / n_trials,
                          "driver_ms_per_event_with_it": 1e3 * sum(tb["seconds"]) / len(tb["seconds"])}
    return out
