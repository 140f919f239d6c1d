"""The folders of ``ablations`` tell what may import Ray: ``driver`` (and the entry points) may; ``report`` and
``stats`` may not, nor may they reach the driver. Checked by importing every module of those packages in a
process where Ray cannot be imported."""
from __future__ import annotations

import subprocess
import sys

from .conftest import REPO

CODE = """
import importlib, pkgutil, sys
sys.modules["ray"] = None  # any 'import ray' now raises ImportError
import ablations.report, ablations.stats
names = []
for pkg in (ablations.report, ablations.stats):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if m.name.endswith("__main__"):
            continue
        importlib.import_module(m.name)
        names.append(m.name)
driver = sorted(n for n in sys.modules if n.startswith("ablations.driver"))
print(len(names), ",".join(driver) or "-")
"""


def test_the_report_and_stats_packages_import_without_ray_or_the_driver():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    n, driver = out.stdout.split()
    assert int(n) >= 10 and driver == "-", out.stdout


def test_python_m_entry_points_still_run():
    for module in ("ablations.report", "ablations.bench", "ablations.check", "ablations.aws", "ablations.run"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300,
                             cwd=REPO)
        assert out.returncode == 0 and "usage: python -m " in out.stdout, (module, out.stderr[-1000:])
