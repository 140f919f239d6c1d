"""Metrics from logits: accuracy, per-class precision/recall/F1, confusion; TTA and ensemble combination.

Everything takes numpy scores (N, C) — logits, or class probabilities where a function says so (the
ranking by argmax is the same) — and integer labels (N,), so the reporter can recompute any of it from the
stored logits without a model. Plain numpy (scikit-learn's definitions, with 0 where a ratio is 0/0): a trial
process does not pay for importing scikit-learn.
"""
from __future__ import annotations

import numpy as np

from pipeline.registry import TTA_MODES


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())


# How a TTA mode combines its views: "logits" averages the views' logits (what seed 000 did: "the logits from
# both passes were averaged"), "probs" their softmax probabilities (the rule of runs that record none). Every
# result row records the rule it was computed with (``tta_combine``); the report recombines stored views by it.
TTA_COMBINE = "logits"
TTA_COMBINES = ("logits", "probs")


def combine_views(view_logits: dict[str, np.ndarray], mode: str, combine: str = TTA_COMBINE) -> np.ndarray:
    """The class probabilities of a TTA mode: the softmax of the views' mean logits (``combine="logits"``) or
    the mean of the views' softmax probabilities (``"probs"``)."""
    views = TTA_MODES[mode]
    missing = [v for v in views if v not in view_logits]
    if missing:
        raise KeyError(f"TTA mode {mode!r} needs views {missing} that were not evaluated")
    if combine == "logits":
        return softmax(np.mean([view_logits[v].astype(np.float64) for v in views], axis=0))
    if combine == "probs":
        return np.mean([softmax(view_logits[v]) for v in views], axis=0)
    raise ValueError(f"TTA combine {combine!r}: expected one of {TTA_COMBINES}")


def available_modes(view_logits: dict[str, np.ndarray]) -> list[str]:
    return [m for m, views in TTA_MODES.items() if all(v in view_logits for v in views)]


def soft_vote(member_probs: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Ensemble by (weighted) averaging of the members' class probabilities (``softmax`` of their logits,
    or a TTA mode's averaged probabilities from ``combine_views``)."""
    probs = np.stack(member_probs)
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), probs, axes=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num), dtype=np.float64), where=den > 0)


def per_class(scores: np.ndarray, labels: np.ndarray, classes) -> dict[str, np.ndarray]:
    """Precision, recall (= per-class accuracy), F1 and support for each class."""
    cm = confusion(scores, labels, len(classes))
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    return {"precision": _ratio(tp, predicted), "recall": _ratio(tp, support),
            "f1": _ratio(2 * tp, support + predicted), "support": support}


def macro_f1(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    return float(np.mean(per_class(scores, labels, range(num_classes))["f1"]))


def confusion(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class)."""
    pred = scores.argmax(1)
    return np.bincount(np.asarray(labels) * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes,
                                                                                                     num_classes)


def summary(view_logits: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray], classes) -> dict:
    """The numbers a result row holds, from per-split, per-view logits ({'val': {'none': ...}, 'test': {...}})."""
    out: dict = {}
    test, val = view_logits["test"], view_logits["val"]
    out["val_acc"] = accuracy(val["none"], labels["val"])
    out["test_acc"] = accuracy(test["none"], labels["test"])
    for mode in available_modes(test):
        out[f"test_acc_{mode}"] = accuracy(combine_views(test, mode), labels["test"])
        if mode in available_modes(val):
            out[f"val_acc_{mode}"] = accuracy(combine_views(val, mode), labels["val"])
    out["tta_combine"] = TTA_COMBINE
    out["macro_f1"] = macro_f1(test["none"], labels["test"], len(classes))
    recall = per_class(test["none"], labels["test"], classes)["recall"]
    for cls, r in zip(classes, recall):
        out[f"test_acc_{cls}"] = float(r)
    return out
