"""Which code made a result: ``code_version()``, recorded in run.json and in every trial's row.

From a git checkout of this project: ``git:<commit>``, with ``+dirty`` when its code (``ablations/``,
``pipeline/``, ``pyproject.toml``) differs from that commit, tracked or new files alike. From an installed copy:
``package:<version>``. ``unknown`` when neither can be read (no git, a copy without metadata).
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PROJECT = "cifar-ablations"
CODE_PATHS = ("ablations", "pipeline", "pyproject.toml")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _checkout() -> Path | None:
    """The project's checkout this code runs from, if it runs from one (not from site-packages)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    try:
        ours = pyproject.is_file() and f'name = "{PROJECT}"' in pyproject.read_text()
    except OSError:
        return None
    return root if ours and (root / ".git").exists() else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    root = _checkout()
    if root is not None:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        if commit:
            changed = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *CODE_PATHS)
            return f"git:{commit}" + ("+dirty" if changed is None or changed else "")
    try:
        import importlib.metadata as md

        return f"package:{md.version(PROJECT)}"
    except Exception:  # noqa: BLE001 - no metadata: say so rather than fail a trial
        return "unknown"
