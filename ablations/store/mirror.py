"""Results that outlive the cluster: a run folder mirrored under a remote storage URI.

With ``--storage s3://BUCKET/PREFIX`` (any URI pyarrow understands), the run folder is copied to
``s3://BUCKET/PREFIX/<run name>/`` when the run starts, after every finished trial and at the end: ``run.json``, the
parquet tables, ``ledger.jsonl``, ``labels.npz``, the logits, the kept models (``init_from`` parents, the levels'
best for Grad-CAM), ``REPORT.md``, ``tables/`` and ``figures/``; everything a report and a resume need, not Ray's
own files (``ray/``) or the trackers' (``logs/``). A copy is incremental: a file goes up again only when its size
or modification time changed.

``pull`` brings a mirrored run folder down: ``python -m ablations.run ... --storage URI`` on a new head continues
a run whose folder is only in the mirror, and ``python -m ablations.report s3://BUCKET/PREFIX/RUN`` reports on it
from a laptop. From a laptop, without the AWS CLI:

    python -m ablations.store.mirror s3://BUCKET/PREFIX/RUN results/RUN     # the whole run folder, into results/RUN
"""
from __future__ import annotations

import os
from pathlib import Path

SKIP_DIRS = ("ray", "logs")  # Ray's checkpoints live in the storage already; tracker files are not results


def is_remote(storage: str | None) -> bool:
    return bool(storage) and "://" in str(storage) and not str(storage).startswith("file://")


def filesystem(storage: str):
    """(pyarrow filesystem, root path) of a storage URI (``s3://``, ``gs://``, ``file://``) or a local path: the
    one way every part of the project (trials, the preflight, the driver, this mirror) reads and writes storage."""
    import os

    import pyarrow.fs as pafs

    if "://" in storage:
        return pafs.FileSystem.from_uri(storage)
    return pafs.LocalFileSystem(), os.path.abspath(storage)


class Mirror:
    """The copy of one local run folder under ``uri`` (``<storage>/<run name>``)."""

    def __init__(self, folder: Path, uri: str):
        self.folder, self.uri = Path(folder), uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri)
        self.sent: dict[str, tuple[int, int]] = {}

    def files(self) -> list[Path]:
        if not self.folder.exists():
            return []
        out = []
        for p in sorted(self.folder.rglob("*")):
            rel = p.relative_to(self.folder)
            if p.is_file() and rel.parts[0] not in SKIP_DIRS and not p.name.endswith(".tmp") \
                    and not p.name.startswith("."):
                out.append(p)
        return out

    def push(self) -> int:
        """Copy what changed since the last push; returns how many files went up."""
        n = 0
        for p in self.files():
            st = p.stat()
            key, stamp = str(p.relative_to(self.folder)), (st.st_size, st.st_mtime_ns)
            if self.sent.get(key) == stamp:
                continue
            dest = f"{self.root}/{key}"
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(dest) as f:
                f.write(p.read_bytes())
            self.sent[key] = stamp
            n += 1
        return n

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.root}/run.json").type == pafs.FileType.File


def pull(uri: str, dest: Path) -> int:
    """Copy a mirrored run folder (``uri``) into ``dest``; returns how many files came down."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri.rstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    n = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(root.rstrip("/")) + 1:]
        target = Path(dest) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f:
            data = f.read()
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        n += 1
    return n
