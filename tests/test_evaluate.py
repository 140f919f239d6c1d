"""Per-class metrics in plain numpy equal scikit-learn's (which a trial process no longer imports)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline.evaluate import confusion, macro_f1, per_class


def test_per_class_metrics_equal_scikit_learns(small_splits):
    rng = np.random.default_rng(0)
    labels = small_splits.test_y  # real labels: 30 per class
    scores = rng.normal(size=(len(labels), 10))
    scores[np.arange(len(labels)), labels] += rng.uniform(0, 2.5, len(labels))  # better than chance
    scores[:, 3] -= 100  # class 3 is never predicted: its precision is 0/0
    labels = np.where(labels == 7, 8, labels)  # class 7 never occurs: its recall is 0/0
    pred = scores.argmax(1)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=np.arange(10), zero_division=0)
    ours = per_class(scores, labels, [str(c) for c in range(10)])
    for name, ref in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
        assert np.allclose(ours[name], ref), name
    assert ours["precision"][3] == 0 and ours["recall"][7] == 0 and 0 < ours["f1"].mean() < 1
    assert macro_f1(scores, labels, 10) == pytest.approx(np.mean(f), abs=1e-12)
    assert np.array_equal(confusion(scores, labels, 10), confusion_matrix(labels, pred, labels=np.arange(10)))
