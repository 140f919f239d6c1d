"""What crosses the Tune boundary for one trial: a ``TrialSpec``. The driver builds it (``driver.tune``), Tune
carries it as a plain dict (``to_tune``: what the trackers show as the trial's config), and the trainable reads it
back (``TrialSpec.from_tune``). Light on purpose: the Tune trial actor of a Ray Train run imports this, not torch."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from ablations.plan.resources import Resources


@dataclass(frozen=True)
class TrialSpec:
    """What one Tune trial needs: its config as it will run, the resources of its workers (and its runner), where
    to store, how often to retry, whether this Ray has what ``torch_backend.LazyTorchConfig`` needs (checked once,
    in the driver), and the parent's trained model (an object-store ref, ``init_from``). The label (level/axis=arm
    seed) is for the trackers."""

    trial_id: str
    config: dict[str, Any]
    resources: Resources
    storage: str
    retries: int = 0
    label: str = ""
    lazy_backend: bool = False
    init: Any = None

    @classmethod
    def of(cls, tid: str, cfg, res: Resources, storage: str, retries: int, label: str = "",
           init=None) -> "TrialSpec":
        return cls(tid, with_execution(cfg, res).to_dict(), res, storage, retries, label, lazy_backend(), init)

    def to_tune(self) -> dict[str, Any]:
        """A plain dict (Tune's trial config; the ref to the parent's model as it is, not copied)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "resources": dataclasses.asdict(self.resources)}

    @classmethod
    def from_tune(cls, d: dict[str, Any]) -> "TrialSpec":
        return cls(**{**d, "resources": Resources(**d["resources"])})


def with_execution(cfg, res: Resources):
    """The config (``TrialConfig``) as the trial runs it: the device and workers of the resources, threads pinned
    to its CPUs."""
    changes: dict[str, Any] = {"device": res.device, "workers": res.workers}
    if not cfg.threads:
        changes["threads"] = max(1, int(res.cpus))
    return cfg.replace(**changes)


@functools.cache
def lazy_backend() -> bool:
    from ablations.driver.torch_backend import lazy_backend_supported

    missing = lazy_backend_supported()
    if missing:
        print(f"note: this Ray lacks {', '.join(missing)}: trials use Ray's own TorchConfig", flush=True)
    return not missing



