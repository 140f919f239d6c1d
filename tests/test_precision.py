"""The GPU-only precision paths, run on this CPU with real images: bf16 and fp16 autocast and torch.compile
train a real (small) model, compile computes what eager computes, and an fp16 trial resumed from its epoch
checkpoint restores the GradScaler and equals the uninterrupted trial."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline.config import TrialConfig
from pipeline.train import fit


@pytest.fixture(scope="module")
def tiny(subset):
    from pipeline import data as D

    return D.make_splits(subset, val_size=20, train_per_class=6, test_per_class=2)


def cfg(**kw) -> TrialConfig:
    base = dict(backbone="small_cnn", pretrained=False, train_stages="all", head="mlp", hidden=32, resolution=16,
                epochs=2, batch_size=20, device="cpu", threads=2)
    return TrialConfig(**{**base, **kw})


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_trials_train_in_that_precision(tiny, amp):
    r = fit(cfg(amp=amp), tiny)
    assert r.metrics["amp_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[amp]
    losses = [h["train_loss"] for h in r.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_compiled_trial_computes_what_the_eager_trial_computes(tiny):
    eager = fit(cfg(), tiny)
    compiled = fit(cfg(compile=True), tiny)
    assert compiled.metrics["compiled"] and not eager.metrics["compiled"]
    np.testing.assert_allclose(compiled.logits["val"]["none"].astype(np.float32),
                               eager.logits["val"]["none"].astype(np.float32), atol=2e-3)


def test_fp16_resume_restores_the_grad_scaler_and_equals_the_uninterrupted_trial(tiny):
    c = cfg(amp="fp16")
    checkpoints: list[dict] = []
    # a deep copy, as torch.save in the Ray worker makes: the optimizer's state dict holds live tensors
    whole = fit(c, tiny, on_epoch=lambda row, make: checkpoints.append(copy.deepcopy(make())))
    after_one = checkpoints[0]
    assert after_one["scaler"]["_growth_tracker"] > 0  # the scaler has state worth restoring

    resumed_checkpoints: list[dict] = []
    resumed = fit(c, tiny, resume=copy.deepcopy(after_one),
                  on_epoch=lambda row, make: resumed_checkpoints.append(copy.deepcopy(make())))
    assert resumed.metrics["resumed_from_epoch"] == 1
    assert resumed_checkpoints[-1]["scaler"] == checkpoints[-1]["scaler"]
    np.testing.assert_array_equal(resumed.logits["val"]["none"], whole.logits["val"]["none"])

    # without the scaler's state the resumed trial's scaler differs: what this test guards against
    lost: list[dict] = []
    fit(c, tiny, resume={k: copy.deepcopy(v) for k, v in after_one.items() if k != "scaler"},
        on_epoch=lambda row, make: lost.append(copy.deepcopy(make())))
    assert lost[-1]["scaler"] != checkpoints[-1]["scaler"]
