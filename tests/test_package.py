"""The project as a user installs it without ``-e``: a wheel built from the checkout holds every built-in grid and
every file read at run time, and runs from outside the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from ablations.plan import grids

from .conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout, installed into a folder of its own (no dependencies: they are this venv's)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(REPO)], check=True, timeout=900, capture_output=True)
    wheel = next((tmp / "dist").glob("cifar_ablations-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"),
                    str(wheel)], check=True, timeout=600, capture_output=True)
    return wheel, tmp / "site"


def run_installed(site, *args: str, cwd) -> subprocess.CompletedProcess:
    """``python -m ablations.run ARGS`` with the installed copy first on the path, from a folder outside the
    checkout (so neither the checkout nor ../shared beside it can be found)."""
    code = ("import sys, runpy; sys.path.insert(0, %r); import ablations; "
            "assert ablations.__file__.startswith(%r), ablations.__file__; sys.argv = ['ablations.run', *%r]; "
            "runpy.run_module('ablations.run', run_name='__main__')" % (str(site), str(site), list(args)))
    env = {k: v for k, v in os.environ.items() if k != "ABLATIONS_DATA"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_the_wheel_holds_every_builtin_grid_the_measurements_and_the_aws_policies(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ablations/plan/builtin_grids/{g}.yaml" for g in grids.builtin_names()} <= names
    assert "ablations/plan/measured.yaml" in names  # the estimate's speeds, read at run time
    assert {f"ablations/aws_policies/{p}.json" for p in ("head", "worker", "launcher", "ec2-trust")} <= names
    assert "pipeline/train.py" in names and "ablations/run.py" in names


def test_an_installed_copy_runs_a_builtin_grid_from_outside_the_checkout(installed, tmp_path):
    _, site = installed
    out = run_installed(site, "--grid", "smoke", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "grid smoke: 5 trials" in out.stdout


def test_an_installed_copy_says_where_data_comes_from(installed, tmp_path):
    from pipeline.data import DataError, check_reachable

    try:
        check_reachable("https://www.cs.toronto.edu/")
        pytest.skip("this machine can download CIFAR-10: --data auto would, instead of failing")
    except DataError:
        pass
    _, site = installed
    out = run_installed(site, "--grid", "smoke", "--results", str(tmp_path / "r"), cwd=tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "this is an installed copy" in err[0] and "--data PATH" in err[0], err
