"""Paths as ``run.json`` and ``REPORT.md`` record them: no absolute path of the machine that made the run.

A results folder moves (``ray rsync-down``, a commit, another machine), so what it records is relative: local
paths relative to the run folder (the data source, the Ray storage), and the command as it was typed, its
relative paths as the user gave them and each absolute path made relative to the run folder. URIs
(``s3://...``) and names that are not paths (``torchvision``) stay as they are.
"""
from __future__ import annotations

import os
from pathlib import Path

NOT_PATHS = ("torchvision", "auto", "")


def is_local_path(value: str) -> bool:
    return value not in NOT_PATHS and "://" not in value


def relative_to(path: str, base: str | Path) -> str:
    """``path`` relative to ``base`` (both resolved on this machine), or as it is when it is not a local path."""
    if not is_local_path(path):
        return path
    return Path(os.path.relpath(Path(path).expanduser().resolve(), Path(base).resolve())).as_posix()


def resolve(recorded: str, run_dir: str | Path) -> str:
    """A path ``run.json`` recorded, as a path on this machine (older folders recorded absolute paths)."""
    if not is_local_path(recorded) or os.path.isabs(recorded):
        return recorded
    return os.path.normpath(Path(run_dir) / recorded)


def command(args: list[str], run_dir: str | Path) -> list[str]:
    """``python -m ablations.run ARGS`` as typed, each absolute path (alone or after '=') relative to the run
    folder."""
    def token(t: str) -> str:
        if os.path.isabs(t):
            return relative_to(t, run_dir)
        key, sep, value = t.partition("=")
        if sep and os.path.isabs(value):
            return f"{key}={relative_to(value, run_dir)}"
        return t

    return ["python", "-m", "ablations.run", *map(token, args)]
