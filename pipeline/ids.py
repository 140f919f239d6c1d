"""Trial ids that survive upgrades of the tool.

A trial id hashes what a trial computes: the config keys that change its result (every key but the execution
keys), with ``normalize=auto`` resolved and a weights file named by its content. Only values that differ from a
frozen per-key *baseline* are hashed. ``ID_BASELINE`` records, once per key, the value that reproduces what
trials computed before the key existed (for the keys of schema 2: their defaults then), and its entries are
never edited. Hence:

* adding a key (with its baseline) leaves every existing id, and every results folder, valid;
* changing a key's default later gives new ids to exactly the configs whose value changed, and two different
  configs never share an id (the hashed differences determine the config).

``ID_SCHEMA`` versions what trials compute. Each version from 2 on is a change in what some trials compute,
listed in ``COMPUTE_CHANGES`` with the trials it affects; an affected trial's id carries the latest version that
affects it, so it changes, while the others keep theirs. Schema 1 is the scheme before this one: a hash of every
non-execution key (``legacy_trial_id``). A results folder records its schema in ``run.json`` (``id_schema``;
absent means 1) and keeps its own ids; ``stale_trials`` names the trials whose computation changed since, which
such a folder must not run (``ablations.run`` refuses with one line).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from pipeline.errors import ConfigError

ID_SCHEMA = 3

# version -> (what changed, which configs it changes); see the module docstring
COMPUTE_CHANGES: dict[int, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    2: ("augmentation is drawn per image as views keyed by (policy, seed, epoch, image index), and MixUp/CutMix "
        "draw their coefficients on the host",
        lambda v: v["augment"] != "none" or v["mix"] != "none"),
    3: ("a child (init_from) continues its parent's epoch numbering: its augmentation views and batch order are "
        "those of the epochs after its parent's, not the parent's first epochs again",
        lambda v: bool(v.get("init_from"))),
}

# Frozen: one entry per identity key, written when the key is introduced and never changed afterwards.
ID_BASELINE = MappingProxyType({
    "backbone": "efficientnet_lite0", "pretrained": True, "head": "linear", "hidden": 512, "dropout": 0.0,
    "train_stages": "0", "resolution": 64, "normalize": "auto", "epochs": 3, "batch_size": 64, "optimizer": "adam",
    "lr": 1e-3, "backbone_lr_mult": 1.0, "weight_decay": 0.0, "schedule": "constant", "freeze_epochs": 0,
    "augment": "none", "mix": "none", "mix_alpha": 1.0, "label_smoothing": 0.0, "tta": "none",
    "train_per_class": 0, "val_size": 5000, "test_per_class": 0, "split_seed": 0, "seed": 0,
    "weights": "",  # schema 2: a weights file is identified by its content
    "init_from": "",  # added with schema 2's code: no trial started from another before
    "new_stage_bn": "batch",  # added with schema 3: a child's newly trained stages always used batch statistics
    "data_size": 0,  # images stored at a size chosen from the data: as their files hold them, as before the key
})

# Schema 1 hashed these keys' values as given (normalize resolved); frozen.
LEGACY_KEYS = ("backbone", "pretrained", "head", "hidden", "dropout", "train_stages", "resolution", "normalize",
               "epochs", "batch_size", "optimizer", "lr", "backbone_lr_mult", "weight_decay", "schedule",
               "freeze_epochs", "augment", "mix", "mix_alpha", "label_smoothing", "tta", "train_per_class",
               "val_size", "test_per_class", "split_seed", "seed")

_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str) -> str:
    """A short content hash of a file (memoized per path, size and modification time)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        raise ConfigError(f"weights={path}: file not found") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = "sha256:" + h.hexdigest()[:16]
    return _DIGESTS[key]


def identity(cfg) -> dict[str, Any]:
    """The values that name a trial: every non-execution key in its type's canonical form, ``normalize``
    resolved, and the weights file's content hash in place of its path."""
    types = cfg.field_types()
    out = {k: types[k](v) if k in types else v for k, v in cfg.to_dict().items() if k not in cfg.execution_keys}
    out["normalize"] = cfg.normalization()
    if not out.get("init_from"):  # only a child has stages its parent kept frozen
        out["new_stage_bn"] = ID_BASELINE["new_stage_bn"]
    if out.get("weights"):
        out["weights"] = file_digest(out["weights"])
    return out


def baseline_of(cfg) -> dict[str, Any]:
    """The frozen baselines of a config's class (a subclass adds its own keys' entries in ``ID_BASELINE``)."""
    return dict(getattr(type(cfg), "ID_BASELINE", ID_BASELINE))


def differences(cfg) -> dict[str, Any]:
    """The identity values that differ from their baseline; a key without a baseline is a programming error."""
    base = baseline_of(cfg)
    values = identity(cfg)
    missing = sorted(set(values) - set(base))
    if missing:
        raise KeyError(f"config keys without an id baseline: {missing} (add them to ID_BASELINE)")
    return {k: v for k, v in values.items() if v != base[k]}


def computes_version(cfg, schema: int = ID_SCHEMA) -> int:
    """The latest change in what trials compute, up to ``schema``, that affects this config (at least 2)."""
    values = cfg.to_dict()
    return max([2, *(v for v, (_, affects) in COMPUTE_CHANGES.items() if v <= schema and affects(values))])


def trial_id(cfg, schema: int = ID_SCHEMA) -> str:
    if schema == 1:
        return legacy_trial_id(cfg)
    if not 2 <= schema <= ID_SCHEMA:
        raise ValueError(f"id schema {schema} is not known to this version (1..{ID_SCHEMA})")
    blob = json.dumps({"computes": computes_version(cfg, schema), "diff": differences(cfg)}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def legacy_trial_id(cfg) -> str:
    """Schema 1: sha1 of the ``LEGACY_KEYS`` as given. A key added since must hold its baseline (its value
    before it existed), else the config did not exist in schema 1."""
    base, values = baseline_of(cfg), cfg.to_dict()
    if not values.get("init_from"):  # as in identity(): only a child has stages its parent kept frozen
        values["new_stage_bn"] = base.get("new_stage_bn", values.get("new_stage_bn"))
    newer = [k for k in values if k in base and k not in LEGACY_KEYS and k != "weights" and values[k] != base[k]]
    if newer:
        raise ConfigError(f"{', '.join(newer)}: not part of id schema 1, so not in a run made with it")
    legacy = {k: values[k] for k in LEGACY_KEYS}
    legacy["normalize"] = cfg.normalization()
    blob = json.dumps(legacy, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def stale_trials(configs: dict[str, Any], schema: int) -> dict[str, str]:
    """{trial id: why} for the trials whose computation changed after ``schema``: a folder of that schema must not
    run them with this version (its finished trials were computed the old way)."""
    out = {}
    for tid, cfg in configs.items():
        values = cfg.to_dict()
        why = [what for v, (what, affects) in COMPUTE_CHANGES.items() if v > schema and affects(values)]
        if why:
            out[tid] = why[0]
    return out
