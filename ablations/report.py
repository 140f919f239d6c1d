"""``python -m ablations.report results/<run>``: tables, statistics and figures from a results folder.

Writes ``REPORT.md`` (level comparison first), every table again as ``tables/<name>.csv`` (numbers, accuracies
as fractions) and ``tables/<name>.md`` (GitHub markdown, percentages), and PNG figures under ``figures/``.

Works on a partial or still-running run: unfinished and failed trials are listed as such, tables use what has
finished, and anything missing (logits, labels, weights, data for Grad-CAM) is named in the report instead of
stopping it. Choices are made on validation accuracy only; the test set is only ever measured.

Statistics are in ``ablations.tables`` (paired comparisons), figures in ``ablations.figures``, loading the folder
in ``ablations.rundata``; this module assembles REPORT.md and is the command line.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

from .figures import (GRADCAM_PER_CLASS, _Skip, _test_images, fig_axis, fig_confusions, fig_gradcam,
                      fig_learning_curves, fig_per_class_f1)
from pipeline.errors import UserError, one_line

from .results import STATUSES, RunFolder, atomic_write, atomic_write_text, now
from .rundata import RunData, _finite
from .tables import (BOOT_SEED, N_BOOT, TIME_COLUMNS, _pct, ablation_table, ensemble_table, level_table,
                     per_class_tables, trials_table, tta_table)


# ============================================================================ writing


def _md(df: pd.DataFrame) -> str:
    if not len(df):
        return "_(empty)_"
    clean = df.copy()
    for c in clean.columns:
        clean[c] = clean[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                else re.sub(r"\s+", " ", str(v)).replace("|", "\\|"))
    clean.columns = [str(c).replace("|", "\\|") for c in clean.columns]
    return clean.to_markdown(index=False, disable_numparse=True)


class _Writer:
    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.tables = folder.path / "tables"
        self.figures = folder.path / "figures"
        self.written: set[Path] = set()

    def table(self, name: str, num: pd.DataFrame, disp: pd.DataFrame | str) -> str:
        csv = self.tables / f"{name}.csv"
        md_text = disp if isinstance(disp, str) else _md(disp)
        atomic_write(csv, lambda tmp: num.to_csv(tmp, index=False))
        atomic_write_text(self.tables / f"{name}.md", md_text + "\n")
        self.written |= {csv, self.tables / f"{name}.md"}
        return md_text

    def figure(self, name: str) -> Path:
        p = self.figures / f"{name}.png"
        self.written.add(p)
        return p

    def make_figure(self, name: str, draw: Callable[[Path], bool], alt: str) -> list[str]:
        """Draw a figure; the markdown lines that link it, or none when it could not be drawn."""
        p = self.figure(name)
        if draw(p):
            return [f"![{alt}]({self.link(p)})", ""]
        self.written.discard(p)
        return []

    def link(self, p: Path) -> str:
        return p.relative_to(self.folder.path).as_posix()

    def prune(self) -> None:
        """Remove tables and figures an earlier report wrote that this one did not (a stale file misleads)."""
        for d, suffixes in ((self.tables, (".csv", ".md")), (self.figures, (".png",))):
            if d.exists():
                for f in d.iterdir():
                    if f.is_file() and f.suffix in suffixes and f not in self.written:
                        f.unlink()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "axis"


def write_report(run_dir: str | Path, *, figures: bool = True, gradcam: bool = True, n_boot: int = N_BOOT) -> Path:
    """Write REPORT.md, tables/ and figures/ for a results folder; returns the path of REPORT.md."""
    run = RunData(run_dir)
    w = _Writer(run.folder)
    meta, out = run.meta, []
    problems: list[str] = []

    def section(title: str, fn: Callable[[], list[str]]) -> None:
        """A failure in one section is reported in its place; the rest of the report is still written."""
        try:
            out.extend(fn())
        except Exception as e:  # noqa: BLE001 - the report must not die on one bad table
            tb = traceback.format_exc(limit=3)
            print(f"ablations.report: section {title!r} failed:\n{tb}", file=sys.stderr)
            problems.append(f"{title}: {type(e).__name__}: {e}")
            out.extend([f"_{title}: could not be computed ({type(e).__name__}: {e})._", ""])

    # ---------------------------------------------------------------- header
    d = meta.get("data") or {}
    sizes = d.get("sizes") or {}
    out += [f"# Ablation report: {meta.get('grid')}", ""]
    counts = run.status_counts()
    n_trials = sum(counts.values())
    if meta.get("finished"):
        state = f"Run finished {meta.get('finished')} (started {meta.get('started')})."
    else:
        state = (f"**Run not finished** (started {meta.get('started')}; still running or interrupted): tables use the "
                 f"{counts.get('finished', 0)} finished of {n_trials} trials.")
    status_line = ", ".join(f"{counts[k]} {k}" for k in STATUSES if k in counts)
    others = [k for k in counts if k not in STATUSES]
    status_line += "".join(f", {counts[k]} {k}" for k in others)
    out += [state + f" Trials: {status_line or 'none recorded yet'}.", ""]
    tpc = int(d.get("test_per_class") or 0)
    n_test = sizes.get("test", len(run.labels["test"]) if run.labels is not None else None)
    if tpc > 0:
        test_txt = (f"**Test set: a class-balanced subset**, the first {tpc} test images of each class "
                    f"({n_test} images), not the full official test set; accuracies are on this subset.")
    else:
        test_txt = f"Test set: the full official test set ({n_test} images)."
    sub_txt = f", {d['train_per_class']} training images per class" if d.get("train_per_class") else ""
    out += [f"Data `{d.get('source')}`: train {sizes.get('train', '?')}{sub_txt}, validation {sizes.get('val', '?')} "
            f"(stratified split of the training set, split seed {d.get('split_seed')}), test {n_test}. "
            f"{test_txt}", "",
            f"Run folder `{run.folder.path}`; report written {now()}.", ""]

    if not len(run.df):
        out += ["No trials recorded yet (trials.parquet is missing or empty).", ""]
    # ---------------------------------------------------------------- level comparison (first)
    if len(run.df):
        def levels():
            num, disp = level_table(run)
            lines = ["## Level comparison", "",
                     "Each level's best config is chosen on mean **validation** accuracy over its finished seeds "
                     "(never on test). Test accuracy: mean ± 95% CI over seeds (t-distribution); \"n=1, no CI\" "
                     "for one seed. \"With TTA\" uses the config's own TTA mode. The last column is what the seed "
                     "write-ups reported for that level (their own single runs, other setups: for orientation, "
                     "not a paired comparison).", "",
                     w.table("levels", num, disp), ""]
            return lines
        section("Level comparison", levels)

        out += ["## How sure is each difference", "",
                f"* **Seeds**: \"seed 95% CI\" is the t-interval of the mean paired difference over the seeds "
                f"both arms finished (training randomness; n/a with one seed, very wide with two).",
                f"* **Test images**: the paired bootstrap resamples test images ({n_boot} replicates, "
                f"random seed {BOOT_SEED}, same images for both arms and all seeds) and recomputes the "
                f"seed-averaged accuracy difference; its 95% percentile interval and two-sided p-value are shown. "
                f"The exact McNemar test (two-sided binomial on the images only one of the two gets right) is "
                f"given per seed, with won:lost counts of those images. These tests measure how sure a difference "
                f"is on this test sample for these trained models; seed-to-seed variation is in the seed CI.",
                "* **Rule**: an arm differs significantly from its reference when the bootstrap 95% CI of the "
                "difference excludes 0; otherwise it is marked \"≈ not significant\". No correction for multiple "
                "comparisons: among many arms, about 1 in 20 true nulls will look significant.",
                "* Differences are in percentage points (pp), arm minus reference. Ablations compare accuracy "
                "without TTA unless the axis is a TTA axis.", ""]

        # ------------------------------------------------------------ ablations
        axes = run.axes()
        if axes:
            out += ["## Ablations", ""]
        multi = {a for a, _ in axes if sum(1 for b, _ in axes if b == a) > 1}
        for ax, lv in axes:
            def abl(ax=ax, lv=lv):
                num, disp, title = ablation_table(run, ax, lv, n_boot)
                slug = _slug(f"{ax}_{lv}" if ax in multi else ax)
                lines = [f"### Axis {title}", "", w.table(f"ablation_{slug}", num, disp), ""]
                if figures:
                    lines += w.make_figure(f"axis_{slug}", lambda p: fig_axis(run, ax, num, p),
                                           f"accuracy against {ax}")
                return lines
            section(f"Axis {ax}", abl)

        # ------------------------------------------------------------ TTA
        def tta():
            num, disp = tta_table(run, n_boot)
            if not len(num):
                return ["## Test-time augmentation", "", "No finished config evaluated more than one TTA mode.", ""]
            return ["## Test-time augmentation", "",
                    "Gain of each TTA mode over no TTA for every config that evaluated it (same trained models, "
                    "modes combined from the stored per-view logits).", "", w.table("tta", num, disp), ""]
        section("TTA", tta)

        # ------------------------------------------------------------ ensembles
        def ens():
            if run.labels is None:
                return ["## Ensembles", "", "Skipped: labels.npz is missing.", ""]
            num, disp = ensemble_table(run, n_boot)
            lines = ["## Ensembles", "",
                     "Formed from stored test logits (no TTA), never by training again. Per seed: soft vote = mean "
                     "of member softmax probabilities; val-weighted = weights proportional to each member's "
                     "validation accuracy. The best member is chosen on validation; gain = ensemble minus best "
                     "member, with the same paired tests. Seed ensembles soft-vote all seeds of one config: one "
                     "number, no CI over seeds (the best member is its best seed on validation).", ""]
            if not len(num):
                return lines + ["No ensemble could be formed yet (see Notes).", ""]
            return lines + [w.table("ensembles", num, disp), ""]
        section("Ensembles", ens)

        # ------------------------------------------------------------ per class
        confusions: dict = {}

        def per_cls():
            nonlocal confusions
            num, disp, pairs, confusions = per_class_tables(run)
            if not len(num):
                return ["## Per-class results", "", "No finished level yet.", ""]
            lines = ["## Per-class results", "",
                     "Each level's best config; precision, recall and F1 **pooled over its seeds** (the predictions "
                     "of all its seeds together, each test image counted once per seed). Per-class accuracy is the "
                     "recall (share of that class's images classified correctly).", ""]
            md_parts = []
            for lv, t in disp.items():
                name = num[num["level"] == lv]["config"].iloc[0]
                md_parts += [f"### {name}", "", _md(t), ""]
            w.table("per_class", num, "\n".join(md_parts))
            lines += md_parts
            if len(pairs):
                pd_disp = pd.DataFrame({"Level": pairs["level"], "Pair": pairs["class_a"] + " ↔ " + pairs["class_b"],
                                        "Confusions": pairs["confusions"].astype(str),
                                        "a→b / b→a": pairs["a_as_b"].astype(str) + " / " + pairs["b_as_a"].astype(str),
                                        "% of the pair's images": pairs["share_of_pair_images"].map(_pct)})
                lines += ["### Hardest class pairs", "",
                          "Largest symmetric off-diagonal counts of the confusion matrix (seeds pooled), top 5 per "
                          "level.", "", w.table("confusion_pairs", pairs, pd_disp), ""]
            if figures:
                lines += w.make_figure("per_class_f1", lambda p: fig_per_class_f1(run, num, p), "per-class F1")
                lines += w.make_figure("confusion", lambda p: fig_confusions(run, confusions, p),
                                       "confusion matrices")
            return lines
        section("Per-class results", per_cls)

        # ------------------------------------------------------------ learning curves, Grad-CAM
        if figures:
            def curves():
                link = w.make_figure("learning_curves", lambda p: fig_learning_curves(run, p), "learning curves")
                if link:
                    return ["## Learning curves", ""] + link
                return ["## Learning curves", "", "No epochs recorded for the levels' best configs yet.", ""]
            section("Learning curves", curves)

        if figures and gradcam and run.best:
            def cams():
                lines = ["## Grad-CAM", "",
                         f"First {GRADCAM_PER_CLASS} test images of each class, heat map of the predicted class on "
                         f"the last backbone stage, or stage 3 where the last stage's map is under 4x4 (Grad-CAM); "
                         f"titles are predictions (✓ right, ✗ wrong).", ""]
                with_weights = [lv for lv, cid in run.best.items()
                                if any(run.folder.model_path(t).exists() for t in run.seeds(cid, lv).values())]
                if not with_weights:
                    return lines + ["Grad-CAM skipped: no saved weights of any level's best config in models/ "
                                    "(ablations.run --keep-models best or all keeps them).", ""]
                try:
                    images = _test_images(run)
                except _Skip as e:
                    return lines + [f"Grad-CAM skipped: {e}.", ""]
                for lv in run.levels:
                    if lv not in run.best:
                        continue
                    p = w.figure(f"gradcam_{_slug(lv)}")
                    try:
                        tid, agree, shown = fig_gradcam(run, lv, images, p)
                        check = ("" if agree < 0 else
                                 f" The rebuilt model (trial {tid}) makes the stored predictions on {agree} of the "
                                 f"{shown} images shown" + ("." if agree == shown else
                                                            ": **the saved weights may not match the trial**."))
                        lines += [f"![Grad-CAM {lv}]({w.link(p)})", ""] + ([check.strip(), ""] if check else [])
                    except _Skip as e:
                        w.written.discard(p)
                        lines += [f"Grad-CAM for {run.config_name(lv, run.best[lv])} skipped: {e}.", ""]
                return lines
            section("Grad-CAM", cams)

        # ------------------------------------------------------------ trials
        def trials():
            t = trials_table(run.df)
            disp = t.copy()
            for c in ("val_acc", "test_acc"):
                if c in disp:
                    disp[c] = disp[c].map(_pct)
            if "macro_f1" in disp:
                disp["macro_f1"] = disp["macro_f1"].map(lambda v: f"{v:.3f}" if _finite(v) else "")
            if "trainable_params" in disp:
                disp["trainable_params"] = disp["trainable_params"].map(lambda v: f"{v:,.0f}" if _finite(v) else "")
            for c in TIME_COLUMNS:
                if c in disp:
                    disp[c] = disp[c].map(lambda v: f"{v:.0f}" if _finite(v) else "")
            disp = disp.rename(columns={"val_acc": "val acc %", "test_acc": "test acc %"})
            return ["## Trials", "", f"Counts by status (unique trials): {status_line or 'none'}.", "",
                    w.table("trials", t, disp), ""]
        section("Trials", trials)

    # ---------------------------------------------------------------- what is missing
    notes = list(dict.fromkeys(run.notes))
    fin_missing = sorted(t for t in run.missing_logits if t in set(run.fin["trial_id"]))
    if fin_missing:
        notes.append(f"stored logits missing for {len(fin_missing)} finished trial(s) ({', '.join(fin_missing[:8])}"
                     f"{' …' if len(fin_missing) > 8 else ''}): their accuracies come from trials.parquet; paired "
                     f"tests and ensembles involving them are skipped.")
    if problems:
        notes += [f"section failed: {p}" for p in problems]
    if notes:
        out += ["## Notes: what is missing", ""] + [f"* {n}" for n in notes] + [""]

    path = run.folder.path / "REPORT.md"
    atomic_write_text(path, "\n".join(out).rstrip() + "\n")
    w.written.add(path)
    w.prune()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a results folder written by ablations.run")
    p.add_argument("--no-figures", action="store_true", help="tables only (no PNGs, no Grad-CAM)")
    p.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM (needs the models and the data)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates of the paired tests")
    args = p.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        print(write_report(args.run_dir, figures=not args.no_figures, gradcam=not args.no_gradcam,
                           n_boot=max(args.n_boot, 100)))
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
