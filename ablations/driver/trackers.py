"""Experiment trackers (``--log tensorboard,mlflow,wandb``): Ray Tune's own logger callbacks, and the trackers'
APIs for what those callbacks do not cover (the report).

Each trial is one tracker run named by its trial id, with the trial's config (``trial/config/...``; its label,
resources and storage beside), its per-epoch metrics (``epoch``, ``train_loss``, ``val_acc``, ...; the step is
Tune's iteration: epoch k is step k) and its final metrics under ``final/`` (every number of its trials.parquet
row: test accuracy per TTA view and per class, macro-F1, timings, ...; the last step). The driver's Tune callback
(``ablations.run``) puts the final metrics into the trial's last result before these callbacks see it: only the
headline numbers travel through Tune itself (``ablations.driver.trainable``). Where the trackers write:

  tensorboard  <run>/logs/tensorboard/<trial_id>/ (``TBXLoggerCallback``, pointed into the run folder; its
               hparams view holds each trial's config with its final metrics), and <run>/logs/tensorboard/report/
               (REPORT.md and the tables as text, the figures as images)
  mlflow       $MLFLOW_TRACKING_URI, else the file store <run>/logs/mlruns (``MLflowLoggerCallback``), experiment
               = the run's name; a run named "report" holds REPORT.md, tables/ and figures/ as artifacts
  wandb        project $WANDB_PROJECT (default cifar-ablations), group = the run's name, files under <run>/logs
               (``WandbLoggerCallback``; WANDB_MODE=offline works without a network); a run named "report"
               holds REPORT.md, tables/ and figures/ as an artifact and the figures as images

TensorBoard is on by default: Ray Tune writes the same event files for every trial anyway (into its own
trial folders) unless told not to, and ``python -m ablations.bench --only driver_scale`` measures what the
callback costs the driver per event (README, "Measured here").
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, UserError, one_line

TRACKERS = ("tensorboard", "mlflow", "wandb")
DEFAULT_LOG = "tensorboard"
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
WANDB_PROJECT = "cifar-ablations"


class TrackerError(UserError, RuntimeError):
    """A tracker that cannot be used (no API key, unreachable server); one line for the user."""


def parse_log(text: str | None) -> tuple[str, ...]:
    """``--log``: 'tensorboard,mlflow' -> ('tensorboard', 'mlflow'); 'none' -> (). Unknown names and trackers whose
    package is missing are bad input (one line)."""
    names = [t.strip().lower() for t in (text or "").split(",") if t.strip()]
    if names in ([], ["none"]):
        return ()
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ConfigError(f"--log {text}: unknown tracker(s) {', '.join(bad)}; choose from {', '.join(TRACKERS)} "
                          f"or none")
    for n in names:
        if importlib.util.find_spec(PACKAGES[n]) is None:
            raise ConfigError(f"--log {n} needs the {PACKAGES[n]} package: pip install {PACKAGES[n]}")
    return tuple(dict.fromkeys(names))


def trial_name(trial) -> str:
    """Tune's name (and folder name) for a trial: our trial id, so that every tracker's run is named by it."""
    return trial.config["trial"]["trial_id"]


def _tbx_callback_class():
    from ray.tune.logger import TBXLoggerCallback

    class RunFolderTBXLogger(TBXLoggerCallback):
        """Ray's TensorBoard callback, writing each trial's events into <logdir>/<trial_id> (Ray writes them into
        its trial folders, which live in Tune's storage under a generated name)."""

        def __init__(self, logdir: Path):
            super().__init__()
            self.logdir = Path(logdir)

        def log_trial_start(self, trial) -> None:
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            self._trial_writer[trial] = self._summary_writer_cls(str(self.logdir / trial_name(trial)), flush_secs=30)
            self._trial_result[trial] = {}

    return RunFolderTBXLogger


def tensorboard_callback(logdir: Path):
    return _tbx_callback_class()(logdir)


@dataclass
class Trackers:
    names: tuple[str, ...]
    logdir: Path  # <run folder>/logs
    experiment: str  # the run's name: MLflow experiment, W&B group

    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or (self.logdir / "mlruns").resolve().as_uri()

    @property
    def wandb_project(self) -> str:
        return os.environ.get("WANDB_PROJECT") or WANDB_PROJECT

    def check(self) -> None:
        """What can be known before anything starts: W&B has an API key (or runs offline)."""
        if "wandb" in self.names and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            import wandb

            if not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in(wandb)):
                raise TrackerError("--log wandb: no W&B API key (set WANDB_API_KEY or run `wandb login`; "
                                   "WANDB_MODE=offline logs to the run folder without one)")

    def callbacks(self) -> list:
        """Ray Tune logger callbacks, set up (a tracker that cannot start fails here with one line)."""
        out: list = []
        self.logdir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.names:
            out.append(tensorboard_callback(self.logdir / "tensorboard"))
        if "mlflow" in self.names:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            self._allow_file_store()
            out.append(MLflowLoggerCallback(tracking_uri=self.mlflow_uri, experiment_name=self.experiment,
                                            tags={"ablations.run": self.experiment}))
        if "wandb" in self.names:
            from ray.air.integrations.wandb import WandbLoggerCallback

            # each trial's W&B run lives in a Ray actor, whose environment is the cluster's, not the driver's
            mode = {"mode": os.environ["WANDB_MODE"]} if os.environ.get("WANDB_MODE") else {}
            out.append(WandbLoggerCallback(project=self.wandb_project, group=self.experiment,
                                           dir=str(self.logdir.resolve()), **mode))
        for cb in out:
            try:
                cb.setup()
            except Exception as e:  # noqa: BLE001 - the trackers raise their own types
                raise TrackerError(f"--log: {type(cb).__name__} cannot start: {one_line(e)}") from None
        return out

    def _allow_file_store(self) -> None:
        # MLflow 3 refuses its file store unless asked; a file store in the run folder is what needs no server
        if self.mlflow_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    # ------------------------------------------------------------------ the report

    def log_report(self, run_dir: Path) -> list[str]:
        """REPORT.md, tables/ and figures/ of a written report into each tracker; what was logged, one line each."""
        report = run_dir / "REPORT.md"
        if not report.exists():
            return []
        tables = sorted((run_dir / "tables").glob("*")) if (run_dir / "tables").exists() else []
        figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").exists() else []
        done = []
        for name in self.names:
            try:
                where = getattr(self, f"_report_{name}")(report, tables, figures)
            except Exception as e:  # noqa: BLE001 - a tracker's failure must not lose the run
                done.append(f"{name}: the report could not be logged ({type(e).__name__}: {one_line(e)})")
                continue
            done.append(f"{name}: report logged to {where}")
        return done

    def _report_tensorboard(self, report: Path, tables: list[Path], figures: list[Path]) -> str:
        import numpy as np
        from PIL import Image
        from tensorboardX import SummaryWriter

        where = self.logdir / "tensorboard" / "report"
        with SummaryWriter(str(where)) as w:
            w.add_text("REPORT.md", report.read_text())
            for t in tables:
                if t.suffix == ".md":
                    w.add_text(f"tables/{t.stem}", t.read_text())
            for f in figures:
                w.add_image(f"figures/{f.stem}", np.asarray(Image.open(f).convert("RGB")), dataformats="HWC")
        return str(where)

    def _report_mlflow(self, report: Path, tables: list[Path], figures: list[Path]) -> str:
        from mlflow.tracking import MlflowClient

        self._allow_file_store()
        client = MlflowClient(tracking_uri=self.mlflow_uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.experiment)
        run = client.create_run(exp_id, run_name="report", tags={"ablations.run": self.experiment})
        client.log_artifact(run.info.run_id, str(report))
        for folder, files in (("tables", tables), ("figures", figures)):
            for f in files:
                client.log_artifact(run.info.run_id, str(f), artifact_path=folder)
        client.set_terminated(run.info.run_id)
        return f"MLflow run {run.info.run_id} of experiment {self.experiment!r}"

    def _report_wandb(self, report: Path, tables: list[Path], figures: list[Path]) -> str:
        import wandb

        run = wandb.init(project=self.wandb_project, group=self.experiment, name="report", job_type="report",
                         dir=str(self.logdir.resolve()), reinit="create_new")
        try:
            artifact = wandb.Artifact(f"{_artifact_name(self.experiment)}-report", type="report")
            artifact.add_file(str(report))
            for folder, files in (("tables", tables), ("figures", figures)):
                for f in files:
                    artifact.add_file(str(f), name=f"{folder}/{f.name}")
            run.log_artifact(artifact)
            run.log({f"figures/{f.stem}": wandb.Image(str(f)) for f in figures})
        finally:
            run.finish()
        return f"W&B run {run.id} (project {self.wandb_project}, group {self.experiment})"


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a finished trial's row, for the trackers (``final/...``)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
            out[k] = float(v)
    return out


def _artifact_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "run"


def _wandb_logged_in(wandb) -> bool:
    try:
        return bool(wandb.api.api_key)
    except Exception:  # noqa: BLE001 - no settings, no key
        return False
