"""``python -m ablations.report results/<run>``: tables, statistics and figures from a results folder.

Writes ``REPORT.md`` (the claims first, then the level comparison), every table again as ``tables/<name>.csv``
(numbers, accuracies as fractions), ``tables/<name>.md`` (GitHub markdown, percentages) and ``tables/<name>.tex``
(LaTeX, booktabs), and PNG figures under ``figures/``.

Works on a partial or still-running run: unfinished and failed trials are listed as such, tables use what has
finished, and anything missing (logits, labels, weights, data for Grad-CAM) is named in the report instead of
stopping it. Choices are made on validation accuracy only; the test set is only ever measured.

REPORT.md is the concatenation of ``SECTIONS``: each is a function of the report's ``Context`` that returns its
markdown lines (a section that fails is reported in its place; the others are still written). Statistics and
tables are in ``ablations.report.tables`` (each table one numeric frame plus a column spec, ``ablations.report.tablespec``),
figures in ``ablations.report.figures``, loading the folder in ``ablations.report.rundata``.
"""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.data import describe_stored
from pipeline.errors import UserError, one_line
from pipeline.provenance import code_version

from ablations import stats as S
from ablations.plan.claims import DEFAULT_EQUIVALENCE_PP
from ablations.report import timing
from ablations.report.adaptive import StudyVerdicts
from ablations.report.claimtable import ClaimResult, claim_index, claims_table, measure_claims
from ablations.report.comparisons import ClaimIndex
from ablations.report.figures import (
    GRADCAM_PER_CLASS,
    Skip,
    fig_axis,
    fig_confusions,
    fig_gradcam,
    fig_learning_curves,
    fig_per_class_f1,
    load_test_images,
)
from ablations.report.rundata import RunData
from ablations.report.tables import (
    BOOT_SEED,
    N_BOOT,
    POWER,
    ablation_table,
    ensemble_table,
    level_table,
    per_class_tables,
    trials_table,
    tta_table,
)
from ablations.report.tablespec import Col, Table, number, pct, text
from ablations.store.mirror import is_remote
from ablations.store.results import STATUSES, RunFolder, atomic_write, atomic_write_text, now

# ============================================================================ writing


class Writer:
    """Writes tables (csv, md, tex) and figures into the run folder and remembers what it wrote."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.tables = folder.path / "tables"
        self.figures = folder.path / "figures"
        self.written: set[Path] = set()

    def table(self, t: Table) -> list[str]:
        """Write ``t`` as tables/<name>.csv (its frame), .md and .tex (its column spec); the markdown lines for
        REPORT.md: the table and its notes (the minimum detectable effect)."""
        md_text = t.markdown()
        files = {".csv": None, ".md": md_text + "\n", ".tex": t.latex()}
        for suffix, content in files.items():
            path = self.tables / f"{t.name}{suffix}"
            if content is None:
                atomic_write(path, lambda tmp: t.frame.to_csv(tmp, index=False))
            else:
                atomic_write_text(path, content)
            self.written.add(path)
        return [md_text, ""] + [line for n in t.notes for line in (n, "")]

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
        for d, suffixes in ((self.tables, (".csv", ".md", ".tex")), (self.figures, (".png",))):
            if d.exists():
                for f in d.iterdir():
                    if f.is_file() and f.suffix in suffixes and f not in self.written:
                        f.unlink()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "axis"


@dataclass
class Context:
    """What every section sees: the loaded run, the writer, the options, and what sections pass on."""

    run: RunData
    writer: Writer
    figures: bool = True
    gradcam: bool = True
    n_boot: int = N_BOOT
    problems: list[str] = field(default_factory=list)
    confusions: dict = field(default_factory=dict)  # per-class section -> confusion figure
    adaptive: StudyVerdicts | None = None  # an --until-decided run: its anytime-valid verdicts
    _claims: list[ClaimResult] | None = None

    @property
    def has_trials(self) -> bool:
        return bool(len(self.run.df))

    @property
    def claims(self) -> list[ClaimResult]:
        """The claims, measured once: the claims table shows them and the exploratory tables their verdicts."""
        if self._claims is None:
            self._claims = measure_claims(self.run, self.n_boot) if self.has_trials else []
        return self._claims

    @property
    def claimed(self) -> ClaimIndex:
        """The claims' verdicts by comparison; none in an --until-decided run, whose verdicts are the anytime-valid
        procedure's (one family over the whole study)."""
        if self.adaptive is not None:
            return ClaimIndex()
        try:
            return claim_index(self.claims)
        except Exception:  # noqa: BLE001 - the claims section reports its own failure
            return ClaimIndex()

    def status_line(self) -> str:
        counts = self.run.status_counts()
        line = ", ".join(f"{counts[k]} {k}" for k in STATUSES if k in counts)
        return line + "".join(f", {counts[k]} {k}" for k in counts if k not in STATUSES)

    def guarded(self, title: str, fn: Callable[[], list[str]]) -> list[str]:
        """A failure in one section is reported in its place; the rest of the report is still written."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - the report must not die on one bad table
            tb = traceback.format_exc(limit=3)
            print(f"ablations.report: section {title!r} failed:\n{tb}", file=sys.stderr)
            self.problems.append(f"{title}: {type(e).__name__}: {e}")
            return [f"_{title}: could not be computed ({type(e).__name__}: {e})._", ""]


# ============================================================================ sections


def header(ctx: Context) -> list[str]:
    run, meta = ctx.run, ctx.run.meta
    d = meta.get("data") or {}
    sizes = d.get("sizes") or {}
    counts = run.status_counts()
    if meta.get("finished"):
        state = f"Run finished {meta.get('finished')} (started {meta.get('started')})."
    else:
        state = (f"**Run not finished** (started {meta.get('started')}; still running or interrupted): tables use the "
                 f"{counts.get('finished', 0)} finished of {sum(counts.values())} trials.")
    tpc = int(d.get("test_per_class") or 0)
    n_test = sizes.get("test", len(run.labels["test"]) if run.labels is not None else None)
    if tpc > 0:
        test_txt = (f"**Test set: a class-balanced subset**, the first {tpc} test images of each class "
                    f"({n_test} images), not the whole test set; accuracies are on this subset.")
    else:
        test_txt = f"Test set: every image of the data's test set ({n_test} images)."
    sub_txt = f", {d['train_per_class']} training images per class" if d.get("train_per_class") else ""
    stored_txt = f" ({describe_stored(d['stored'])})" if d.get("stored") else ""
    out = [f"# Ablation report: {meta.get('grid')}", "",
           state + f" Trials: {ctx.status_line() or 'none recorded yet'}.", "",
           f"Data `{d.get('source')}`{stored_txt}: train {sizes.get('train', '?')}{sub_txt}, "
           f"validation {sizes.get('val', '?')} (stratified split of the training set, split seed "
           f"{d.get('split_seed')}), test {n_test}. {test_txt}", "",
           f"Run `{run.folder.path.name}`; code {meta.get('code_version') or 'not recorded'} (its last command); "
           f"report written {now()} by code {code_version()}.", ""]
    mixed = code_versions_line(run.fin)
    if mixed:
        out += [mixed, ""]
    if not ctx.has_trials:
        out += ["No trials recorded yet (trials.parquet is missing or empty).", ""]
    return out


def code_versions_line(fin) -> str:
    """One line when the finished trials come from more than one code version (their rows' ``code_version``);
    empty when they share one."""
    if not len(fin) or "code_version" not in fin:
        return ""
    per_trial = fin.drop_duplicates("trial_id")["code_version"].fillna("not recorded").astype(str)
    counts = per_trial.value_counts()
    if len(counts) < 2:
        return ""
    listed = ", ".join(f"{v} ({n} trial{'s' if n != 1 else ''})" for v, n in counts.items())
    return f"**The finished trials come from {len(counts)} code versions**: {listed}."


def claims_section(ctx: Context) -> list[str]:
    run = ctx.run
    out = ["## Claims", ""]
    if not run.claims:
        return out + ["This grid declares no claims (a grid's `claims:` section lists the study's hypotheses, each "
                      "with its source, and the report gives each a verdict here).", ""]
    out += ["The study's hypotheses as the grid declares them, measured here (better minus worse, test accuracy "
            "in pp without TTA, except TTA claims; class claims: mean recall of one group of classes minus the "
            "other's), in two groups: the seed write-ups' claims, and the grid's own questions (controls and "
            "questions no seed asked). These are the report's confirmatory comparisons; Holm's correction runs "
            "within each group. Verdicts (the rules are in the Method section): **confirmed** (significant in the "
            "claimed direction, beyond the claim's margin), **contradicted** (significant in the other direction), "
            "**no effect ≥ X pp** (the 90% interval over seeds and test images lies inside ±X, X the claim's "
            "smallest effect of interest), **inconclusive** (none of these: this run cannot resolve it); with fewer "
            f"than {S.MIN_SEEDS} seeds there is no verdict. Each verdict holds for the setting it was measured in "
            "(the setting column: backbone, resolution, training images, epochs); where that differs from the seed's "
            "setting, the verdict names it. Level claims compare the levels' reference configs (the recipes as "
            "declared), not the best-by-validation configs of the level comparison. A row of the ablation or TTA "
            "tables that makes the same comparison as a claim shows the claim's verdict.", ""]
    if ctx.adaptive is not None:
        out[-2] = ("The study's hypotheses as the grid declares them, each with the seed write-up it comes from, "
                   "measured here (better minus worse, test accuracy in pp without TTA, except TTA claims; class "
                   "claims: mean recall of one group of classes minus the other's). This run added seeds "
                   "adaptively (`--until-decided`): each verdict is the anytime-valid procedure's of the Method "
                   "section, Holm over every claim and axis arm of the study: **confirmed** (called higher, beyond "
                   "the claim's margin), **contradicted** (called lower), **inconclusive** otherwise; the last "
                   "column gives the seeds it used and how they stopped (decided early, decided at the cap, open at "
                   "the cap, open at the budget).")
    if run.claims_origin:
        out += [run.claims_origin, ""]
    if not ctx.has_trials:
        return out + [f"* **{c.id}**: {c.says} ({c.source})" for c in run.claims] + [""]
    return out + ctx.writer.table(claims_table(run, ctx.claims, ctx.adaptive))


def levels_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    return ["## Level comparison", "",
            "Each level's best config is chosen on mean **validation** accuracy over its finished seeds (never on "
            f"test). Accuracy: mean ± 95% CI over seeds (t-distribution) from {S.MIN_SEEDS} seeds on; with fewer "
            "seeds the per-seed values (\"57.4 / 60.5\"). \"With TTA\" uses the same TTA views for every level: the "
            "widest mode every level's best config evaluated (a level's wider modes are in the TTA table). The last "
            "column is what the seed write-ups reported for that level (their own single runs, other setups: for "
            "orientation, not a paired comparison)." + (
                " This run added seeds adaptively: configs have different numbers of seeds, and a column counts "
                "the anytime-valid verdicts that involve each level's configs by how their seeds stopped."
                if ctx.adaptive is not None else ""), "", *ctx.writer.table(level_table(ctx.run, ctx.adaptive))]


def method_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    adaptive = []
    if ctx.adaptive is not None:
        adaptive = ["### Adaptive seeds: the verdicts of the claims, ablation and level tables", "",
                    *ctx.adaptive.method_lines(), "### The fixed-sample rule", ""]
    return ["## Method: how sure is each difference", "", *adaptive,
            "* Differences are in percentage points (pp): arm minus reference (claims: better minus worse), test "
            "accuracy without TTA unless the axis is a TTA axis. Two configs trained with the same seed are a pair.",
            "* **Seeds** (training randomness): every seed is evaluated on the same test images, so the spread of "
            "the per-seed differences is training noise alone. \"Δ (95% CI over seeds only)\" is their mean ± its "
            f"t-interval (n − 1 df) from {S.MIN_SEEDS} seeds on; with fewer seeds the per-seed differences "
            "themselves are printed (\"+3.1 / -1.1\"), never an interval.",
            f"* **Test images** (the test sample): the paired bootstrap resamples test images ({ctx.n_boot} "
            f"replicates, random seed {BOOT_SEED}, the same images for both sides and every seed) and recomputes the "
            "seed-averaged difference; \"95% CI (test images only)\" is its percentile interval (in the CSV). A "
            "class claim resamples images within each class. The exact McNemar test per seed (two-sided binomial on "
            "the images only one side gets right, with won:lost counts) is in the CSV; it is not part of the rule.",
            "* **Both together**: \"95% CI (seeds and test images)\" is the mean difference ± t · SE with SE² = s²/n + "
            "SE_images² (s: the SD of the per-seed differences; SE_images: the bootstrap replicates' SD) and the "
            "seeds' n − 1 degrees of freedom, so it is never narrower than the seeds' interval alone. This interval "
            "is the headline; its t-test (\"p seeds + images\") is the one the verdicts use. (A percentile bootstrap "
            "over 3 seeds draws from only 10 seed multisets and is too narrow.)",
            "* **Rule**: a difference is called higher or lower when the seeds-and-images test rejects 0 after "
            f"**Holm's step-down correction within its family**, p Holm < {S.ALPHA:g}. The claims are the "
            "confirmatory families (Holm within each of their two groups); each ablation axis, the TTA table and "
            "the ensembles are exploratory families of their own, and each table says what its family is. A "
            "comparison measured by a claim gets the claim's verdict wherever it appears, and is not counted again "
            f"in the exploratory family. Otherwise \"{S.INCONCLUSIVE}\": this run cannot tell, which is not the same "
            f"as no difference. With fewer than {S.MIN_SEEDS} seeds: no verdict (\"{S.NEEDS_SEEDS}\"); a seed "
            "ensemble (one ensemble of all seeds) gets none either.",
            "* Holm within each family rather than Benjamini–Hochberg over the whole report: the tables answer "
            "separate questions and are read one at a time, and Holm bounds the chance of any false \"higher\" or "
            "\"lower\" within a family (family-wise error), at no cost for a family of one comparison.",
            "* **Claims**: confirmed when significant in the claimed direction and beyond the claim's margin (with a "
            "margin, the test is against the margin instead of 0); contradicted when significant in the other "
            "direction. **No effect ≥ X pp** when the claim is not significant and two one-sided tests at 5% "
            "(TOST, the same standard error and df) reject both |difference| ≥ X: exactly when the 90% interval "
            "lies inside ±X. X is the claim's `equivalence` (pp) in the grid, default "
            f"{DEFAULT_EQUIVALENCE_PP:g} pp, and a claim's margin where it has one (a margin claim is refuted by an "
            "effect below its margin). The equivalence test is per claim, not corrected for the number of claims.",
            f"* **Minimum detectable effect**, under each table: the true difference the seeds-and-images test "
            f"detects with {POWER:.0%} power at {S.ALPHA:.0%} (exact, noncentral t, n − 1 df) at the table's number of "
            "seeds, the pooled SD of its per-seed differences and its median test-image SE, and what the test images "
            "alone resolve. It says what \"inconclusive\" means for that table.",
            "* Best configs and ensemble members are chosen on validation; test numbers never choose anything.", ""]


def ablations_section(ctx: Context) -> list[str]:
    run = ctx.run
    axes = run.axes()
    if not axes:
        return []
    out = ["## Ablations", ""]
    multi = {a for a, _ in axes if sum(1 for b, _ in axes if b == a) > 1}
    for ax, lv in axes:
        def one(ax=ax, lv=lv) -> list[str]:
            name = slug(f"{ax}_{lv}" if ax in multi else ax)
            table, title = ablation_table(run, ax, lv, ctx.n_boot, name=f"ablation_{name}", adaptive=ctx.adaptive,
                                          claimed=ctx.claimed)
            lines = [f"### Axis {title}", "", *ctx.writer.table(table)]
            if ctx.figures:
                lines += ctx.writer.make_figure(f"axis_{name}", lambda p: fig_axis(run, ax, table.frame, p),
                                                f"accuracy against {ax}")
            return lines
        out += ctx.guarded(f"Axis {ax}", one)
    return out


def tta_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    table = tta_table(ctx.run, ctx.n_boot, ctx.claimed)
    if not len(table.frame):
        return ["## Test-time augmentation", "", "No finished config evaluated more than one TTA mode.", ""]
    return ["## Test-time augmentation", "",
            "Gain of each TTA mode over no TTA for every config that evaluated it (same trained models, modes "
            "combined from the stored per-view logits).", "", *ctx.writer.table(table)]


def ensembles_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    if ctx.run.labels is None:
        return ["## Ensembles", "", "Skipped: labels.npz is missing.", ""]
    table = ensemble_table(ctx.run, ctx.n_boot)
    out = ["## Ensembles", "",
           "Formed from stored test logits (no TTA), never by training again. Per seed: soft vote = mean of member "
           "softmax probabilities; val-weighted = weights proportional to each member's validation accuracy. The "
           "best member is chosen on validation; gain = ensemble minus best member, with the same tests. Seed "
           "ensembles soft-vote all seeds of one config: one number, no seed replication, so no verdict (the best "
           "member is its best seed on validation).", ""]
    if not len(table.frame):
        return out + ["No ensemble could be formed yet (see Notes).", ""]
    return out + ctx.writer.table(table)


def per_class_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    run = ctx.run
    per_class, pairs, ctx.confusions = per_class_tables(run)
    if not len(per_class.frame):
        return ["## Per-class results", "", "No finished level yet.", ""]
    out = ["## Per-class results", "",
           "Each level's best config; precision, recall and F1 **pooled over its seeds** (the predictions of all its "
           "seeds together, each test image counted once per seed). Per-class accuracy is the recall (share of that "
           "class's images classified correctly).", "", *ctx.writer.table(per_class)]
    if len(pairs.frame):
        out += ["### Hardest class pairs", "",
                "Largest symmetric off-diagonal counts of the confusion matrix (seeds pooled), top 5 per level.", "",
                *ctx.writer.table(pairs)]
    if ctx.figures:
        out += ctx.writer.make_figure("per_class_f1", lambda p: fig_per_class_f1(run, per_class.frame, p),
                                      "per-class F1")
        out += ctx.writer.make_figure("confusion", lambda p: fig_confusions(run, ctx.confusions, p),
                                      "confusion matrices")
    return out


def curves_section(ctx: Context) -> list[str]:
    if not (ctx.has_trials and ctx.figures):
        return []
    link = ctx.writer.make_figure("learning_curves", lambda p: fig_learning_curves(ctx.run, p), "learning curves")
    if link:
        return ["## Learning curves", ""] + link
    return ["## Learning curves", "", "No epochs recorded for the levels' best configs yet.", ""]


def gradcam_section(ctx: Context) -> list[str]:
    run, w = ctx.run, ctx.writer
    if not (ctx.has_trials and ctx.figures and ctx.gradcam and run.best):
        return []
    out = ["## Grad-CAM", "",
           f"First {GRADCAM_PER_CLASS} test images of each class, heat map of the predicted class on the last backbone "
           f"stage, or stage 3 where the last stage's map is under 4x4 (Grad-CAM); titles are predictions (✓ right, "
           f"✗ wrong).", ""]
    with_weights = [lv for lv, cid in run.best.items()
                    if any(run.folder.model_path(t).exists() for t in run.seeds(cid, lv).values())]
    if not with_weights:
        return out + ["Grad-CAM skipped: no saved weights of any level's best config in models/ "
                      "(ablations.run --keep-models best or all keeps them).", ""]
    try:
        images = load_test_images(run)
    except Skip as e:
        return out + [f"Grad-CAM skipped: {e}.", ""]
    for lv in (lv for lv in run.levels if lv in run.best):
        p = w.figure(f"gradcam_{slug(lv)}")
        try:
            tid, agree, shown = fig_gradcam(run, lv, images, p)
        except Skip as e:
            w.written.discard(p)
            out += [f"Grad-CAM for {run.config_name(lv, run.best[lv])} skipped: {e}.", ""]
            continue
        out += [f"![Grad-CAM {lv}]({w.link(p)})", ""]
        if agree >= 0:
            out += [f"The rebuilt model (trial {tid}) makes the stored predictions on {agree} of the {shown} images "
                    f"shown" + ("." if agree == shown else ": **the saved weights may not match the trial**."), ""]
    return out


def time_section(ctx: Context) -> list[str]:
    """Where the time of the latest session that ran trials went (``ablations.report.timing``; run.json ``sessions``)."""
    sessions = [s for s in ctx.run.meta.get("sessions", []) if s.get("time")]
    if not sessions:
        return []
    t = sessions[-1]["time"]
    table = Table("where_the_time_went", timing.table_frame(t),
                  [Col("part", text("part")), Col("slot-seconds", number("seconds", ",.0f")),
                   Col("share of slot time", pct("share"))])
    return ["## Where the time went", "",
            f"The last session that ran trials: {t['trials']} trials in {t['wall_s'] / 60:.1f} min wall on "
            f"{t['slots']} trial slots ({t['slot_s']:,.0f} slot-seconds). **Efficiency "
            f"{t['efficiency']:.0%}**: training, evaluation and prefix computation as a share of slot time.", "",
            *ctx.writer.table(table)]


def trials_section(ctx: Context) -> list[str]:
    if not ctx.has_trials:
        return []
    return ["## Trials", "", f"Counts by status (unique trials): {ctx.status_line() or 'none'}.", "",
            *ctx.writer.table(trials_table(ctx.run.df))]


def notes_section(ctx: Context) -> list[str]:
    run = ctx.run
    notes = list(dict.fromkeys(run.notes))
    fin_missing = sorted(t for t in run.missing_logits if t in set(run.fin["trial_id"]))
    if fin_missing:
        notes.append(f"stored logits missing for {len(fin_missing)} finished trial(s) ({', '.join(fin_missing[:8])}"
                     f"{' …' if len(fin_missing) > 8 else ''}): their accuracies come from trials.parquet; paired "
                     f"tests and ensembles involving them are skipped.")
    notes += [f"section failed: {p}" for p in ctx.problems]
    return ["## Notes: what is missing", ""] + [f"* {n}" for n in notes] + [""] if notes else []


# REPORT.md, top to bottom; the notes come last because every other section may add to them
SECTIONS: list[tuple[str, Callable[[Context], list[str]]]] = [
    ("Header", header), ("Claims", claims_section), ("Level comparison", levels_section),
    ("Method", method_section), ("Ablations", ablations_section), ("TTA", tta_section),
    ("Ensembles", ensembles_section), ("Per-class results", per_class_section),
    ("Learning curves", curves_section), ("Grad-CAM", gradcam_section), ("Where the time went", time_section),
    ("Trials", trials_section),
    ("Notes", notes_section),
]


def write_report(run_dir: str | Path, *, figures: bool = True, gradcam: bool = True, n_boot: int = N_BOOT) -> Path:
    """Write REPORT.md, tables/ and figures/ for a results folder; returns the path of REPORT.md."""
    run = RunData(run_dir)
    ctx = Context(run, Writer(run.folder), figures=figures, gradcam=gradcam, n_boot=n_boot)
    if run.meta.get("adaptive") and len(run.df):
        try:
            ctx.adaptive = StudyVerdicts.of(run, n_boot)
        except Exception as e:  # noqa: BLE001 - the report must not die on it; the notes say what happened
            print(f"ablations.report: the adaptive verdicts failed:\n{traceback.format_exc(limit=3)}", file=sys.stderr)
            ctx.problems.append(f"adaptive verdicts: {type(e).__name__}: {e} (the tables show the fixed-sample "
                                f"rule, which is not valid for adaptively chosen seeds)")
    out: list[str] = []
    for title, section in SECTIONS:
        out += ctx.guarded(title, lambda section=section: section(ctx))
    path = run.folder.path / "REPORT.md"
    atomic_write_text(path, "\n".join(out).rstrip() + "\n")
    ctx.writer.written.add(path)
    ctx.writer.prune()
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablations.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a results folder written by ablations.run, or its mirror under a remote "
                                   "--storage (s3://BUCKET/PREFIX/RUN)")
    p.add_argument("--no-figures", action="store_true", help="tables only (no PNGs, no Grad-CAM)")
    p.add_argument("--no-gradcam", action="store_true", help="skip Grad-CAM (needs the models and the data)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap replicates of the paired tests")
    args = p.parse_args(argv)
    kw = dict(figures=not args.no_figures, gradcam=not args.no_gradcam, n_boot=max(args.n_boot, 100))
    try:
        if is_remote(args.run_dir):
            return report_on_mirror(args.run_dir, **kw)
        if not Path(args.run_dir).is_dir():
            print(f"error: {args.run_dir} is not a folder", file=sys.stderr)
            return 2
        print(write_report(args.run_dir, **kw))
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def report_on_mirror(uri: str, **kw) -> int:
    """A run mirrored under a remote storage (``ablations.store.mirror``), from any machine: brought down into a
    temporary folder, reported there, and the report (REPORT.md, tables/, figures/) put back beside it."""
    import tempfile

    from ablations.store.mirror import Mirror, pull

    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / uri.rstrip("/").rsplit("/", 1)[-1]
        if not pull(uri, local) or not (local / "run.json").exists():
            print(f"error: {uri} holds no mirrored run (no run.json)", file=sys.stderr)
            return 2
        report = write_report(local, **kw)
        mirror = Mirror(local, uri)
        mirror.sent = {str(p.relative_to(local)): (p.stat().st_size, p.stat().st_mtime_ns) for p in mirror.files()
                       if p.relative_to(local).parts[0] not in ("tables", "figures") and p.name != "REPORT.md"}
        mirror.push()
        print(f"{uri.rstrip('/')}/{report.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
