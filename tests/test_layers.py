"""The folders of the code tell what it may reach, checked on its import statements (every one, also those inside
functions) and by importing:

* ``ablations/driver`` is the Ray layer: the only code that imports Ray;
* ``ablations/plan`` (grids, claims, the estimate, resources) and ``ablations/store`` (the results folder) reach
  neither the Ray layer, nor the report, nor the orchestration (``ablations/command`` and the entry points);
* ``ablations/stats`` takes plain data: it imports no other part of the project (its error type aside) and no torch;
* ``ablations/report`` reaches neither the Ray layer nor the orchestration, and imports where Ray cannot;
* ``pipeline`` (one trial, plain PyTorch) imports nothing of ``ablations`` and no Ray.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

ENTRY_POINTS = ("ablations.run", "ablations.check", "ablations.aws", "ablations.mirror", "ablations.report",
                "ablations.bench")


def imports(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` of the file names (absolute imports: the code has no
    relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import of {node.module}"
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # 'from ablations import stats'
    return found


def modules(folder: str) -> dict[str, set[str]]:
    return {str(p.relative_to(REPO)): imports(p) for p in sorted((REPO / folder).rglob("*.py"))}


def reaching(folder: str, prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for path, mods in modules(folder).items():
        bad = sorted(m for m in mods if m in prefixes or m.startswith(tuple(p + "." for p in prefixes)))
        if bad:
            out[path] = bad
    return out


def test_only_the_ray_layer_imports_ray():
    found = {**reaching("ablations", ("ray",)), **reaching("pipeline", ("ray",))}
    assert found and all(p.startswith("ablations/driver/") for p in found), \
        {p: m for p, m in found.items() if not p.startswith("ablations/driver/")}


def test_plan_and_store_reach_neither_the_ray_layer_nor_the_report_nor_the_orchestration():
    forbidden = ("ablations.driver", "ablations.report", "ablations.command", *ENTRY_POINTS)
    assert reaching("ablations/plan", forbidden) == {}
    assert reaching("ablations/store", forbidden) == {}


def test_stats_takes_plain_data():
    project = ("ablations.plan", "ablations.store", "ablations.driver", "ablations.report", "ablations.command",
               "ablations.bench", "torch", "pipeline.data", "pipeline.config", "pipeline.train")
    assert reaching("ablations/stats", project) == {}


def test_the_report_reaches_neither_the_ray_layer_nor_the_orchestration():
    assert reaching("ablations/report", ("ablations.driver", "ablations.command", "ablations.run",
                                         "ablations.check", "ray")) == {}


def test_pipeline_is_plain_pytorch():
    assert reaching("pipeline", ("ablations", "ray")) == {}


CODE = """
import importlib, pkgutil, sys
sys.modules["ray"] = None  # any 'import ray' now raises ImportError
import ablations.plan, ablations.store, ablations.report, ablations.stats
names = []
for pkg in (ablations.plan, ablations.store, ablations.report, ablations.stats):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if m.name.endswith("__main__"):
            continue
        importlib.import_module(m.name)
        names.append(m.name)
driver = sorted(n for n in sys.modules if n.startswith("ablations.driver"))
print(len(names), ",".join(driver) or "-")
"""


def test_plan_store_report_and_stats_import_where_ray_cannot():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    n, driver = out.stdout.split()
    assert int(n) >= 25 and driver == "-", out.stdout


def test_python_m_entry_points_still_run():
    for module in ENTRY_POINTS:
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                             cwd=REPO)
        assert out.returncode == 0 and "usage: python -m " in out.stdout, (module, out.stderr[-1000:])
