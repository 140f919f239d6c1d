"""The report's figures (PNG) of a loaded run: learning curves, confusion matrices, per-class F1, accuracy along
an axis, and Grad-CAM of each level's best config (its model and test images rebuilt)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.registry import TRAIN_STAGES

from ablations.report.rundata import RunData, config_keys
from ablations.report.tablespec import fmt_value, seed_values
from ablations.stats import MIN_SEEDS, finite
from ablations.store.results import atomic_write

GRADCAM_PER_CLASS = 3
ORDINAL = {"train_stages": TRAIN_STAGES}
NUMERIC_KEYS = ("lr", "weight_decay", "dropout", "resolution", "epochs", "label_smoothing", "mix_alpha", "hidden",
                "batch_size", "backbone_lr_mult", "freeze_epochs", "train_stages", "train_per_class")
LOG_KEYS = ("lr", "weight_decay", "backbone_lr_mult")
GRADCAM_COLORS = 192  # palette size of the Grad-CAM grids


# ============================================================================ figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save_fig(fig, path: Path, dpi: int = 110, colors: int = 0) -> None:
    """Save as PNG; ``colors``: quantize to a palette of that many colours (photographic figures such as Grad-CAM
    grids, committed with every worked example, are stored small this way)."""
    if not colors:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
        return
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    image = Image.open(buf).convert("RGB").quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def fig_learning_curves(run: RunData, path: Path) -> bool:
    from matplotlib.ticker import MaxNLocator

    ep = run.epochs
    if not len(ep) or "trial_id" not in ep:
        return False
    levels = [lv for lv in run.levels if lv in run.best]
    if not levels:
        return False
    fig = _figure(3.6 * len(levels), 6)
    axes = fig.subplots(2, len(levels), squeeze=False)
    drawn = False
    for j, lv in enumerate(levels):
        tids = list(run.seeds(run.best[lv], lv).values())
        e = ep[ep["trial_id"].isin(tids)]
        ax_acc, ax_loss = axes[0][j], axes[1][j]
        ax_acc.set_title(f"{run.config_name(lv, run.best[lv])}\n(mean of {e['trial_id'].nunique()} seed(s))",
                         fontsize=9)
        if not len(e):
            ax_acc.text(0.5, 0.5, "no epochs recorded", ha="center", transform=ax_acc.transAxes)
            continue
        g = e.groupby("epoch")
        for ax, metrics, label in ((ax_acc, ("train_acc", "val_acc"), "accuracy"),
                                   (ax_loss, ("train_loss", "val_loss"), "loss")):
            for m, style in zip(metrics, ("-", "--")):
                if m not in e:
                    continue
                mean, lo, hi = g[m].mean(), g[m].min(), g[m].max()
                ax.plot(mean.index, mean.values, style, marker="o", ms=3, label=m.split("_")[0])
                if e["trial_id"].nunique() > 1:
                    ax.fill_between(mean.index, lo.values, hi.values, alpha=0.2)
                drawn = True
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    if drawn:
        fig.suptitle("Learning curves of each level's best config (band: min-max over seeds)", fontsize=10)
        _save_fig(fig, path)
    return drawn


def fig_confusions(run: RunData, confusions: dict, path: Path) -> bool:
    if not confusions:
        return False
    n = len(confusions)
    k = len(run.classes)
    cols = n if n <= 2 else 2
    nrows = math.ceil(n / cols)
    fig = _figure(4.8 * cols, 4.8 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (lv, (name, cm, n_seeds)) in zip(axes, confusions.items()):
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), run.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), run.classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}\n(% of each true class, {n_seeds} seed(s) pooled)", fontsize=9)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if norm[i, j] >= 0.01:
                        ax.text(j, i, f"{norm[i, j] * 100:.0f}", ha="center", va="center", fontsize=6,
                                color="white" if norm[i, j] > 0.5 else "black")
    _save_fig(fig, path)
    return True


def fig_per_class_f1(run: RunData, pc: pd.DataFrame, path: Path) -> bool:
    if not len(pc) or not pc["f1"].notna().any():
        return False
    levels = [lv for lv in dict.fromkeys(pc["level"]) if pc[pc["level"] == lv]["f1"].notna().any()]
    k = len(run.classes)
    fig = _figure(max(7, 0.9 * k), 4)
    ax = fig.subplots()
    width = 0.8 / len(levels)
    for i, lv in enumerate(levels):
        sub = pc[pc["level"] == lv].set_index("class").reindex(run.classes)
        ax.bar(np.arange(k) + (i - (len(levels) - 1) / 2) * width, sub["f1"].values, width,
               label=sub["config"].dropna().iloc[0])
    ax.set_xticks(range(k), run.classes, rotation=30, fontsize=8)
    ax.set_ylabel("F1 (test, seeds pooled)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Per-class F1 of each level's best config", fontsize=10)
    _save_fig(fig, path)
    return True


def fig_axis(run: RunData, axis: str, num: pd.DataFrame, path: Path) -> bool:
    """Accuracy against a numeric axis (lr on a log scale, train_stages in order 0..4, all): the mean over seeds,
    each seed as a small dot, and 95% CI bars from MIN_SEEDS seeds on (a t-interval from fewer is not drawn)."""
    if axis in run.eval_axes or not len(num):
        return False
    rows = num[num["seeds"] > 0]
    if len(rows) < 2:
        return False
    vals = {cid: run.config_values(cid) for cid in rows["config_id"]}
    keys = [k for k in config_keys() if len({fmt_value(v.get(k)) for v in vals.values()}) > 1]
    spec = (run.spec.get("axes") or {}).get(axis) or {}
    if isinstance(spec, dict) and "key" in spec:
        swept = [str(spec["key"])]
    elif isinstance(spec, dict) and isinstance(spec.get("cross"), dict):
        swept = [str(k) for k in spec["cross"]]
    else:  # named arms: only when they change one numeric key
        swept = keys if len(keys) == 1 else []
    xkey = next((k for k in swept if k in NUMERIC_KEYS and k in keys), None)
    if xkey is None:
        return False
    others = [k for k in keys if k != xkey]

    present = {str(v.get(xkey)) for v in vals.values()}
    order = [o for o in ORDINAL.get(xkey, ()) if o in present]  # ordinal keys: the values swept, in order

    def xpos(v):
        if xkey in ORDINAL:
            return order.index(str(v)) if str(v) in order else math.nan
        return float(v)

    fig = _figure(6, 4)
    ax = fig.subplots()
    groups: dict[str, list] = {}
    for _, r in rows.iterrows():
        v = vals[r["config_id"]]
        label = ", ".join(f"{k}={fmt_value(v.get(k))}" for k in others) or "test"
        ci = r["test_acc_ci"] if r["seeds"] >= MIN_SEEDS else math.nan
        per_seed = list(seed_values(r.to_dict(), "test_acc").values())
        groups.setdefault(label, []).append((xpos(v.get(xkey)), r["test_acc_mean"], ci, per_seed))
    for label, pts in groups.items():
        pts = sorted((p for p in pts if finite(p[0])), key=lambda p: p[0])
        if not pts:
            continue
        x, m, h = (np.array(t, dtype=float) for t in list(zip(*pts))[:3])
        line = ax.errorbar(x, m * 100, yerr=np.where(np.isfinite(h), h * 100, 0), marker="o", capsize=4,
                           label=label if others else f"test accuracy (mean; 95% CI from {MIN_SEEDS} seeds on)")
        sx = [p[0] for p in pts for _ in p[3]]
        sy = [v * 100 for p in pts for v in p[3]]
        ax.scatter(sx, sy, s=12, alpha=0.5, color=line.lines[0].get_color(), label=None if others else "each seed")
    if xkey in ORDINAL:
        ax.set_xticks(range(len(order)), order)
    elif xkey in LOG_KEYS and all(float(v.get(xkey)) > 0 for v in vals.values()):
        ax.set_xscale("log")
    ref = rows[rows["is_reference"]]
    if len(ref) and finite(ref["test_acc_mean"].iloc[0]):
        ax.axhline(ref["test_acc_mean"].iloc[0] * 100, color="gray", ls=":", lw=1, label="reference")
    ax.set_xlabel(xkey + (" (trained top stages)" if xkey == "train_stages" else ""))
    ax.set_ylabel("test accuracy % (no TTA)")
    ax.set_title(f"axis {axis} around {rows['level'].iloc[0]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_fig(fig, path)
    return True


# ============================================================================ Grad-CAM


def load_test_images(run: RunData):
    """The run's test images (uint8), rebuilt from its data settings and checked against labels.npz."""
    from pipeline import data as D

    from ablations.store.portable import resolve

    d = run.meta.get("data") or {}
    if not d.get("source"):
        raise Skip("run.json names no data source")
    source = _data_here(resolve(d["source"], run.folder.path), d.get("fingerprint"))
    try:
        ds = D.load(source, data_size=int((d.get("stored") or {}).get("size") or d.get("data_size") or 0))
        splits = D.make_splits(ds, val_size=int(d.get("val_size", 5000)), split_seed=int(d.get("split_seed", 0)),
                               train_per_class=int(d.get("train_per_class", 0)),
                               test_per_class=int(d.get("test_per_class", 0)))
    except D.DataError as e:
        raise Skip(f"cannot load the test images ({e})") from None
    if run.labels is None:
        raise Skip("labels.npz is missing (needed to check the rebuilt test images)")
    if not np.array_equal(splits.test_y, run.labels["test"]):
        raise Skip("the test images rebuilt from run.json do not match labels.npz")
    return splits.test_x, splits.test_y


def _data_here(source: str, fingerprint: str | None) -> str:
    """The run's data on this machine: where run.json recorded it (relative to the run folder), else, for a folder
    that moved (a commit, ``rsync-down``), the data ``--data auto`` finds here if its content is the same."""
    from pipeline import data as D

    def available(s: str) -> bool:
        return D.was_cached(s) if s == "torchvision" else Path(s).exists()

    if available(source):
        return source
    here = D.resolve_source("auto")
    if fingerprint and here != source and available(here) and D.fingerprint(here) == D.content_of(fingerprint):
        return here
    if source == "torchvision":
        raise Skip("the torchvision CIFAR-10 cache is absent on this machine (the report does not download)")
    raise Skip(f"data source {source} is not on this machine")


class Skip(Exception):
    """A figure that cannot be made, with the reason for the report."""


def _load_model(run: RunData, tid: str, num_classes: int):
    import torch

    from pipeline.config import TrialConfig
    from pipeline.models import ModelError, build_model

    path = run.folder.model_path(tid)
    if not path.exists():
        raise Skip(f"no saved weights (models/{tid}.pt)")
    d = torch.load(path, map_location="cpu", weights_only=False)
    cfg = TrialConfig.from_row(d["config"]).replace(device="cpu")
    try:
        model = build_model(cfg, num_classes)
    except ModelError as e:
        raise Skip(f"cannot rebuild the model ({e})") from None
    missing, unexpected = model.load_state_dict(d["state"], strict=False)
    if unexpected:
        raise Skip(f"saved weights do not fit the model (unexpected {unexpected[:2]})")
    return model.eval(), cfg


def fig_gradcam(run: RunData, level: str, images, path: Path,
                per_class: int = GRADCAM_PER_CLASS) -> tuple[str, int, int]:
    """A grid of test images (per_class per class) with the Grad-CAM map of the predicted class overlaid.

    Returns (trial_id, agree, shown): how many of the shown images the rebuilt model predicts as the stored
    logits do (a check that the saved weights were restored correctly)."""
    import torch

    from pipeline.interpret import gradcam
    from pipeline.train import Inputs

    cid = run.best[level]
    seeds = run.seeds(cid, level)
    tid = next((t for t in seeds.values() if run.folder.model_path(t).exists()), None)
    if tid is None:
        raise Skip("no saved weights for any seed (models/ keeps each level's best config by default)")
    test_x, test_y = images
    k = len(run.classes)
    model, cfg = _load_model(run, tid, k)
    idx = np.concatenate([np.flatnonzero(test_y == c)[:per_class] for c in range(k)])
    xb = torch.from_numpy(np.ascontiguousarray(test_x[idx]))
    x = Inputs(cfg, torch.device("cpu"))(xb)
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    stored = run.scores(tid)
    agree = int((stored[idx].argmax(1) == pred).sum()) if stored is not None else -1
    # the last stage (stride 32) gives a 2x2 map at 64 px; then use the stage before it (stride 16)
    layer = model.backbone.stages[-1]
    cam_h, cam_w = gradcam(model, x[:1], layer=layer, upsample=False).shape[-2:]
    if min(cam_h, cam_w) < 4:
        layer = model.backbone.stages[-2]
        cam_h, cam_w = gradcam(model, x[:1], layer=layer, upsample=False).shape[-2:]
    heat = gradcam(model, x, layer=layer).numpy()
    stage = "last stage" if layer is model.backbone.stages[-1] else "stage 3 (the last stage's map is under 4x4)"
    fig = _figure(1.5 * k, 1.65 * per_class + 0.6)
    axes = fig.subplots(per_class, k, squeeze=False)
    for n, i in enumerate(idx):
        c, r = int(test_y[i]), n % per_class
        ax = axes[r][c]
        ax.imshow(test_x[i].transpose(1, 2, 0), extent=(0, 1, 1, 0), interpolation="bilinear")
        flat = not heat[n].max() > 0
        if not flat:
            ax.imshow(heat[n], cmap="jet", alpha=0.45, extent=(0, 1, 1, 0), vmin=0, vmax=1)
        ok = pred[n] == c
        ax.set_title(("✓ " if ok else "✗ ") + run.classes[pred[n]] + (" (flat map)" if flat else ""), fontsize=7,
                     color="green" if ok else "red")
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.text(0.5, 1.35, run.classes[c], ha="center", fontsize=8, fontweight="bold", transform=ax.transAxes)
    fig.suptitle(f"Grad-CAM, {run.config_name(level, cid)} (trial {tid}, seed "
                 f"{next(s for s, t in seeds.items() if t == tid)})\n{cfg.resolution} px input, "
                 f"{cam_h}x{cam_w} map of the {stage}, upsampled; titles: predicted class", fontsize=9)
    _save_fig(fig, path, dpi=90, colors=GRADCAM_COLORS)
    return tid, agree, len(idx)
