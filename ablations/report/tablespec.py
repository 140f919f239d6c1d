"""A table of the report: ONE numeric frame plus a column spec.

The frame holds the numbers (accuracies as fractions, p-values, counts, and a few text columns such as names
and verdicts); it is written as ``tables/<name>.csv``. The column spec is a list of ``Col(label, fmt)``: ``fmt``
turns one row of the frame (a mapping) into the text of that column. Markdown (REPORT.md, ``tables/<name>.md``)
and LaTeX (``tables/<name>.tex``, booktabs rules) are both rendered from the same frame and spec, so the three
files cannot disagree.

Formatters are built by the small factories below (``text``, ``pct``, ``number``, ``p_value``, ``per_seed``,
``per_seed_diff``, ...); a table builder picks them per column.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ablations import stats as S
from ablations.stats import finite

Row = Mapping[str, Any]
Formatter = Callable[[Row], str]
EMPTY = "–"


def fmt_value(v) -> str:
    """A config value as the report names it: floats in %g, everything else as text."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def pct_text(x, digits: int = 1, signed: bool = False) -> str:
    """A fraction as percent (or a difference as percentage points); '–' when missing."""
    if not finite(x):
        return EMPTY
    return f"{float(x) * 100:{'+' if signed else ''}.{digits}f}"


def seed_values(row: Row, prefix: str) -> dict[int, float]:
    """The per-seed values a frame stores as ``<prefix>_seed<s>`` columns: {seed: value}, finite ones only."""
    out = {}
    for k, v in row.items():
        m = re.fullmatch(re.escape(prefix) + r"_seed(\d+)", str(k))
        if m and finite(v):
            out[int(m.group(1))] = float(v)
    return dict(sorted(out.items()))


def seeds_text(values: Mapping[int, float] | list[float], signed: bool = False) -> str:
    """Fewer than MIN_SEEDS seeds: the per-seed values themselves, '57.4 / 60.5', never an interval."""
    vals = list(values.values()) if isinstance(values, Mapping) else list(values)
    return " / ".join(pct_text(v, signed=signed) for v in vals) if vals else EMPTY


def mean_or_seeds(mean, half, values: Mapping[int, float], signed: bool = False) -> str:
    """'58.9 ± 1.2' (t-interval over seeds) from MIN_SEEDS seeds on; the per-seed values below that."""
    if len(values) < S.MIN_SEEDS:
        return seeds_text(values, signed)
    text = S.fmt_pm(mean, half)
    return ("+" + text if signed and finite(mean) and mean > 0 else text)


# ---------------------------------------------------------------------------- formatter factories


def text(key: str, empty: str = EMPTY) -> Formatter:
    def f(r: Row) -> str:
        v = r.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            return empty
        return fmt_value(v) if isinstance(v, (float, np.floating)) else str(v)
    return f


def pct(key: str, digits: int = 1, signed: bool = False) -> Formatter:
    return lambda r: pct_text(r.get(key), digits, signed)


def number(key: str, spec: str) -> Formatter:
    """A number in a format spec: ',.0f' for counts, '.3f' for an F1."""
    return lambda r: format(float(r[key]), spec) if finite(r.get(key)) else EMPTY


def p_value(key: str) -> Formatter:
    return lambda r: S.fmt_p(r.get(key)) if finite(r.get(key)) else EMPTY


def per_seed(prefix: str, signed: bool = False) -> Formatter:
    """``<prefix>_mean`` ± ``<prefix>_ci`` from MIN_SEEDS seeds on, else the ``<prefix>_seed<s>`` values."""
    return lambda r: mean_or_seeds(r.get(f"{prefix}_mean"), r.get(f"{prefix}_ci"), seed_values(r, prefix), signed)


def per_seed_diff(reference_text: Formatter | None = None) -> Formatter:
    """A comparison's difference over seeds, in pp: 'diff ± diff_ci (n=3)' or the per-seed differences.
    ``reference_text`` says what to print on rows without a comparison (the reference arm itself)."""
    def f(r: Row) -> str:
        values = seed_values(r, "diff")
        if not values:
            return reference_text(r) if reference_text else EMPTY
        if len(values) < S.MIN_SEEDS:
            return seeds_text(values, signed=True) + f" (n={len(values)})"
        return f"{mean_or_seeds(r.get('diff'), r.get('diff_ci'), values, signed=True)} (n={len(values)})"
    return f


def boot_ci(r: Row) -> str:
    """The image bootstrap's 95% interval of the seed-averaged difference, in pp."""
    if not finite(r.get("boot_lo")):
        return EMPTY
    out = f"[{pct_text(r['boot_lo'], signed=True)}, {pct_text(r['boot_hi'], signed=True)}]"
    paired = r.get("paired_seeds") or 0
    if finite(r.get("boot_seeds")) and 0 < r["boot_seeds"] < paired:
        out += f" ({int(r['boot_seeds'])} seed(s) with logits)"
    return out


def both_ci(r: Row) -> str:
    """The 95% interval of the mean difference over seeds and test images together (``stats.both_sources``), in
    pp: the headline interval of a comparison."""
    if not finite(r.get("ci_lo")):
        return EMPTY
    return f"[{pct_text(r['ci_lo'], signed=True)}, {pct_text(r['ci_hi'], signed=True)}]"


def mcnemar(r: Row) -> str:
    """'p (won:lost)' per seed: won = images only A gets right, lost = images only B gets right."""
    parts = []
    for s in sorted(_mcnemar_seeds(r)):
        n01, n10, p = (r.get(f"mcnemar_seed{s}_{k}") for k in ("n01", "n10", "p"))
        if finite(p):
            parts.append(f"{S.fmt_p(p)} ({int(n10)}:{int(n01)})")
    return ", ".join(parts) or EMPTY


def _mcnemar_seeds(r: Row) -> set[int]:
    return {int(m.group(1)) for k in r for m in [re.fullmatch(r"mcnemar_seed(\d+)_p", str(k))] if m}


def comparison_columns(diff_label: str = "Δ vs ref, pp (95% CI over seeds only)",
                       reference_text: Formatter | None = None) -> list["Col"]:
    """The columns every seed-and-image comparison shows, each labelled with the noise it covers: the difference
    and its interval over seeds alone, the interval over seeds and test images together (the one the verdict
    follows), the image bootstrap's alone, the p-values, Holm's adjusted p, the per-seed McNemar tests and the
    verdict."""
    return [Col(diff_label, per_seed_diff(reference_text)),
            Col("95% CI, pp (seeds and test images)", both_ci),
            Col("95% CI, pp (test images only)", boot_ci, md=False),
            Col("p seeds (t)", p_value("p_seed"), md=False),
            Col("p images (bootstrap)", p_value("boot_p"), md=False),
            Col("p seeds + images", p_value("p_both"), md=False),
            Col("p Holm", p_value("p_holm")),
            Col("McNemar p per seed (won:lost)", mcnemar, md=False),
            Col("Verdict", text("verdict"))]


def confidence_sequence(r: Row) -> str:
    """An adaptive verdict's 95% confidence sequence of the mean difference, in pp (open ends while no look
    could exclude anything)."""
    lo, hi = r.get("cs_lo"), r.get("cs_hi")
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return EMPTY
    return f"[{pct_text(lo, signed=True) if finite(lo) else '-∞'}, {pct_text(hi, signed=True) if finite(hi) else '+∞'}]"


def seeds_status(r: Row) -> str:
    """'4: decided early': the seeds an adaptive verdict used and how its seeds stopped."""
    if not finite(r.get("seeds_used")):
        return EMPTY
    return f"{int(r['seeds_used'])}: {r.get('status')}" if r.get("seeds_used") else str(r.get("status") or EMPTY)


def adaptive_columns(diff_label: str = "Δ vs ref, pp (over seeds)",
                     reference_text: Formatter | None = None) -> list["Col"]:
    """The columns of a comparison judged by the anytime-valid procedure of an --until-decided run
    (``ablations.report.adaptive``): the difference over its seeds, the confidence sequence, the one-sided
    p-values of seeds and images, Holm over the whole study, the verdict, and its seeds and how they stopped."""
    return [Col(diff_label, per_seed_diff(reference_text)),
            Col("95% confidence sequence, pp", confidence_sequence),
            Col("p seeds (anytime-valid)", p_value("p_seed_anytime"), md=False),
            Col("p images (bootstrap)", p_value("p_image_one_sided"), md=False),
            Col("p Holm (whole study)", p_value("p_holm")),
            Col("Verdict", text("verdict")),
            Col("Seeds: how they stopped", seeds_status)]


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Col:
    """A shown column. ``md=False``: in the CSV and LaTeX only, not in Markdown (REPORT.md keeps at most
    ``MD_MAX_COLUMNS`` short columns, to paste). ``note=True``: prose; in Markdown it leaves the table and becomes a
    numbered note under it, its row marked [n]."""

    label: str
    fmt: Formatter
    md: bool = True
    note: bool = False


MD_MAX_COLUMNS = 9


@dataclass
class Table:
    """One table: ``frame`` (the numbers, the CSV) and ``columns`` (how each shown column is formatted).
    ``group``: a frame column; Markdown shows one sub-table per value under a '### value' heading."""

    name: str
    frame: pd.DataFrame
    columns: list[Col]
    group: str | None = None
    notes: list[str] = field(default_factory=list)  # lines printed under the table in REPORT.md

    def display(self, frame: pd.DataFrame | None = None) -> pd.DataFrame:
        """The shown text of every cell (one row per frame row, one column per spec entry)."""
        frame = self.frame if frame is None else frame
        rows = [_plain(r) for r in frame.to_dict("records")]
        return pd.DataFrame({c.label: [c.fmt(r) for r in rows] for c in self.columns},
                            columns=[c.label for c in self.columns])

    def markdown(self) -> str:
        """The paste-ready table: the short columns, and the prose of each row as a numbered note under it."""
        if not len(self.frame):
            return "_(empty)_"
        if self.group is None:
            return self._markdown_part(self.frame)
        parts = []
        for value, sub in self.frame.groupby(self.group, sort=False):
            parts += [f"### {value}", "", self._markdown_part(sub), ""]
        return "\n".join(parts).rstrip()

    def _markdown_part(self, frame: pd.DataFrame) -> str:
        shown = [c for c in self.columns if c.md and not c.note]
        prose = [c for c in self.columns if c.md and c.note]
        cells, notes = [], []
        for r in (_plain(r) for r in frame.to_dict("records")):
            row = [c.fmt(r) for c in shown]
            text = "; ".join(f"{c.label}: {t}" for c in prose for t in [c.fmt(r)] if t not in ("", EMPTY))
            if text:
                notes.append(f"{len(notes) + 1}. {text}")
                row[0] = f"{row[0]} [{len(notes)}]"
            cells.append(row)
        table = markdown(pd.DataFrame(cells, columns=[c.label for c in shown]))
        return table + ("\n\n" + "\n".join(notes) if notes else "")

    def latex(self) -> str:
        """A booktabs ``tabular`` (pandas ``Styler.to_latex``); grouped tables get the group as first column."""
        disp = self.display()
        if self.group is not None and len(self.frame):
            disp.insert(0, self.group.capitalize(), [str(v) for v in self.frame[self.group]])
        if not len(disp):
            disp = pd.DataFrame({c: [] for c in disp.columns})
        sty = disp.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        tex = sty.to_latex(hrules=True, column_format="l" * max(len(disp.columns), 1))
        return "% needs \\usepackage{booktabs}\n" + latex_symbols(tex)


def _plain(r: dict) -> dict:
    """A frame record with numpy scalars as Python ones (formatters compare and format them)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table of text cells: no number parsing, pipes escaped, whitespace collapsed."""
    if not len(df):
        return "_(empty)_"
    clean = df.copy()
    for c in clean.columns:
        clean[c] = clean[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                else re.sub(r"\s+", " ", str(v)).replace("|", "\\|"))
    clean.columns = [str(c).replace("|", "\\|") for c in clean.columns]
    return clean.to_markdown(index=False, disable_numparse=True)


LATEX_SYMBOLS = {"±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "Δ": r"$\Delta$",
                 "−": "-", "–": "--", "—": "---", "↔": r"$\leftrightarrow$", "→": r"$\to$", "×": r"$\times$",
                 "…": r"\ldots{}"}


def latex_symbols(tex: str) -> str:
    """The report's Unicode symbols as LaTeX commands, so the tables compile with pdflatex too."""
    for k, v in LATEX_SYMBOLS.items():
        tex = tex.replace(k, v)
    return tex
