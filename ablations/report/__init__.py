"""The report, Ray-free: a results folder in, REPORT.md, tables (CSV, Markdown, LaTeX) and figures out.

* ``writer``: REPORT.md section by section (``write_report``; ``python -m ablations.report``);
* ``rundata``: a results folder as the report reads it (trials, epochs, logits on demand, the grid's claims);
* ``tables`` / ``tablespec``: every table, one numeric frame and a column spec each;
* ``figures``: learning curves, confusion matrices, axes, per-class F1, Grad-CAM;
* ``timing``: where a session's time went; ``adaptive``: the verdicts of an ``--until-decided`` run.

May import ``ablations.stats``, the top-level contracts (results, grids, claims, mirror, portable) and
``pipeline``; never Ray or ``ablations.driver`` (tests/test_layers.py).
"""
from ablations.report.writer import main, write_report  # noqa: F401
