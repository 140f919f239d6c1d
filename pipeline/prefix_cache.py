"""Frozen-prefix outputs on local disk, computed once and shared by every trial process on a node.

One directory per node: ``$ABLATIONS_PREFIX_CACHE``, default ``$ABLATIONS_CACHE/prefix`` (``~/.cache/ablations/
prefix``). Each entry is named by a key (a hash of what was computed, see ``pipeline.sources``):

    <key>.npy    the outputs, shape (N, ...), in the storage dtype (float16 unless asked otherwise); read memory-mapped
    <key>.json   its record: shape, dtype, size and CRC-32 of the data, and the key's parts. Written last, so an
                 entry without it is incomplete; its modification time is the entry's last use (for LRU eviction)
    <key>.lock   held (flock) while the entry is computed: a second process asking for it waits, then reads it
    .budget.lock held while an entry makes room

Budget: ``$ABLATIONS_PREFIX_CACHE_GB`` gigabytes (default 20, or half of the disk's free space when that is
less). Before an entry is written, the least recently used entries are deleted until it fits; a trial whose
entries together exceed the budget does not use the cache (``pipeline.sources`` decides and records why). An
entry whose files do not match its record (a partial write, truncation, flipped bits) is deleted and computed
again. Deleting an entry that another process has memory-mapped is safe on POSIX: its mapping stays valid.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

BUDGET_ENV = "ABLATIONS_PREFIX_CACHE_GB"
DIR_ENV = "ABLATIONS_PREFIX_CACHE"
DEFAULT_BUDGET_GB = 20.0
_CHUNK = 64 << 20  # bytes per step when checksumming


@dataclass
class Entry:
    array: np.ndarray  # read-only memory map
    state: str  # "hit" (found), "waited" (another process computed it while this one waited), "computed"


def default_directory() -> Path:
    from pipeline.data import default_cache_dir

    return Path(os.environ.get(DIR_ENV) or default_cache_dir() / "prefix")


def default_budget(directory: Path) -> int:
    if os.environ.get(BUDGET_ENV):
        return int(float(os.environ[BUDGET_ENV]) * 1e9)
    return int(min(DEFAULT_BUDGET_GB * 1e9, shutil.disk_usage(directory).free / 2))


def _touch(path: Path) -> None:
    """Mark an entry used now (its record's modification time, to the nanosecond, orders LRU eviction)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def crc32(array: np.ndarray) -> int:
    flat = array.reshape(-1).view(np.uint8)
    crc = 0
    for i in range(0, len(flat), _CHUNK):
        crc = zlib.crc32(flat[i:i + _CHUNK], crc)
    return crc


class PrefixCache:
    """Entries of frozen-prefix outputs in ``directory`` (None: a private temporary one, removed on ``close``)."""

    def __init__(self, directory: str | Path | None = None, budget_bytes: int | None = None,
                 dtype: str = "float16"):
        if directory is None:
            directory = tempfile.mkdtemp(prefix="ablations-prefix-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, directory, True)
        else:
            self._finalizer = None
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget = default_budget(self.directory) if budget_bytes is None else int(budget_bytes)
        self.dtype = np.dtype(dtype)
        self._verified: set[tuple] = set()  # entries whose checksum this process has checked

    @classmethod
    def default(cls) -> "PrefixCache":
        """The node's shared cache (directory and budget from the environment, see the module docstring)."""
        return cls(default_directory())

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return int(np.prod(shape)) * self.dtype.itemsize

    # ---------------------------------------------------------------- entries

    def get_or_compute(self, key: str, shape: tuple[int, ...], compute: Callable[[np.ndarray], None],
                       parts: dict | None = None) -> Entry:
        """The entry ``key`` of ``shape``: read if valid, else computed by ``compute(out)``, which fills ``out``
        (a writable array of ``shape`` in the storage dtype). One process computes; others wait and read."""
        shape = tuple(int(s) for s in shape)
        array = self._open(key, shape)
        if array is not None:
            return Entry(array, "hit")
        with self._locked(self._path(key, ".lock")):
            array = self._open(key, shape)
            if array is not None:
                return Entry(array, "waited")
            self._remove(key)
            self._make_room(self.nbytes(shape), keep=key)
            self._write(key, shape, compute, parts or {})
            array = self._open(key, shape)
        if array is None:
            raise OSError(f"prefix cache entry {key} did not read back after writing it in {self.directory}")
        return Entry(array, "computed")

    def keys(self) -> list[str]:
        """Committed entries, least recently used first."""
        records = []
        for p in self.directory.glob("*.json"):
            if "." in p.stem or p.name.startswith("."):
                continue  # a record being written, or the read-speed note
            try:
                records.append((p.stat().st_mtime_ns, p.stem))
            except OSError:
                continue  # deleted meanwhile
        return [k for _, k in sorted(records)]

    def used_bytes(self) -> int:
        total = 0
        for key in self.keys():
            try:
                total += json.loads(self._path(key, ".json").read_text())["data_bytes"]
            except (OSError, ValueError, KeyError):
                continue
        return total

    # ---------------------------------------------------------------- internals

    def _path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}"

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _open(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The entry's data memory-mapped, if its files match its record (checksum checked once per process)."""
        record_path = self._path(key, ".json")
        try:
            record = json.loads(record_path.read_text())
            data_path = self._path(key, ".npy")
            if (tuple(record["shape"]) != shape or record["dtype"] != self.dtype.str
                    or data_path.stat().st_size != record["file_bytes"]):
                return None
            array = np.load(data_path, mmap_mode="r")
            if array.shape != shape or array.dtype != self.dtype:
                return None
            stamp = (key, record["crc32"], data_path.stat().st_ino)
            if stamp not in self._verified:
                if crc32(array) != record["crc32"]:
                    return None
                self._verified.add(stamp)
            _touch(record_path)
            return array
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write(self, key: str, shape: tuple[int, ...], compute: Callable[[np.ndarray], None], parts: dict) -> None:
        for stale in self.directory.glob(f"{key}.*.tmp*"):  # a writer of this key that died (we hold its lock)
            stale.unlink(missing_ok=True)
        tmp = self._path(key, f".{os.getpid()}.tmp.npy")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=shape)
            compute(out)
            out.flush()
            record = {"key": key, "shape": list(shape), "dtype": self.dtype.str, "data_bytes": int(out.nbytes),
                      "crc32": crc32(out), "parts": parts, "created": time.time()}
            del out
            record["file_bytes"] = tmp.stat().st_size
            os.replace(tmp, self._path(key, ".npy"))
            record_tmp = self._path(key, f".{os.getpid()}.tmp.json")
            record_tmp.write_text(json.dumps(record, default=str))
            os.replace(record_tmp, self._path(key, ".json"))
        finally:
            tmp.unlink(missing_ok=True)

    def _remove(self, key: str) -> None:
        self._path(key, ".json").unlink(missing_ok=True)  # first: without its record an entry is not read
        self._path(key, ".npy").unlink(missing_ok=True)

    def _make_room(self, nbytes: int, keep: str) -> None:
        """Delete least recently used entries until ``nbytes`` more fit the budget."""
        with self._locked(self.directory / ".budget.lock"):
            sizes = {}
            for key in self.keys():
                try:
                    sizes[key] = json.loads(self._path(key, ".json").read_text())["data_bytes"]
                except (OSError, ValueError, KeyError):
                    sizes[key] = self._path(key, ".npy").stat().st_size if self._path(key, ".npy").exists() else 0
            total = sum(sizes.values())
            for key in sizes:  # least recently used first
                if total + nbytes <= self.budget:
                    break
                if key != keep:
                    self._remove(key)
                    total -= sizes[key]

    # ---------------------------------------------------------------- read speed (for the GPU cost model)

    def read_seconds_per_byte(self, probe_bytes: int = 64 << 20) -> float:
        """Measured time to read a byte of this directory's disk, uncached (a probe file written, dropped from
        the page cache, read back); measured once per directory and remembered in ``.read_speed.json``."""
        record = self.directory / ".read_speed.json"
        try:
            return float(json.loads(record.read_text())["seconds_per_byte"])
        except (OSError, ValueError, KeyError):
            pass
        probe = self.directory / f".probe.{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(np.random.default_rng(0).integers(0, 255, probe_bytes, dtype=np.uint8).tobytes())
                f.flush()
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            t = time.perf_counter()
            with open(probe, "rb") as f:
                while f.read(8 << 20):
                    pass
            seconds_per_byte = (time.perf_counter() - t) / probe_bytes
        finally:
            probe.unlink(missing_ok=True)
        record.write_text(json.dumps({"seconds_per_byte": seconds_per_byte, "measured": time.time()}))
        return seconds_per_byte
