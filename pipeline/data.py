"""CIFAR-10 (or any ImageFolder of same-size RGB images) as uint8 arrays, decoded once and cached.

Sources:
  * a directory or ``.tar.gz`` in ImageFolder layout: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``
  * ``torchvision``: ``torchvision.datasets.CIFAR10(download=True)`` (needs internet the first time)
  * ``auto``: ``$ABLATIONS_DATA`` if set, else the shared archive beside the repository if present,
    else ``torchvision``.

Arrays are NCHW uint8. The decoded arrays are cached under ``$ABLATIONS_CACHE`` (default
``~/.cache/ablations``) in a folder named by a hash of the source, so a second run does not decode again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import (
    DataError,  # noqa: F401  (re-exported)
    one_line,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CACHE_VERSION = 1


@dataclass
class Dataset:
    train_x: np.ndarray  # (N, 3, H, W) uint8, the official training set
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str
    fingerprint: str  # hash of the source; names the cache and is recorded in run.json


@dataclass
class Splits:
    """The arrays one run trains and evaluates on. Indices point into the source's train/test sets."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    classes: tuple[str, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}

    def describe(self) -> str:
        return (f"train {len(self.train_y)}, val {len(self.val_y)}, test {len(self.test_y)} images of "
                f"{tuple(self.train_x.shape[1:])}, {len(self.classes)} classes")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ABLATIONS_CACHE") or Path.home() / ".cache" / "ablations")


def in_checkout() -> bool:
    """Whether this code runs from a checkout of the project (beside which ../shared may lie), not an installed
    copy in site-packages."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def resolve_source(source: str | None) -> str:
    if source in (None, "", "auto"):
        env = os.environ.get("ABLATIONS_DATA")
        if env:
            return env
        return str(SHARED_ARCHIVE) if in_checkout() and SHARED_ARCHIVE.exists() else "torchvision"
    return source


def why_torchvision() -> str:
    """Why ``--data auto`` chose torchvision's download (for the one-line error when it cannot download)."""
    where = (f"no {SHARED_ARCHIVE} beside the checkout" if in_checkout() else
             f"this is an installed copy ({REPO_ROOT}), so no ../shared/data archive is looked for")
    return f"--data auto found no $ABLATIONS_DATA and {where}"


def fingerprint(source: str) -> str:
    """Hash of the source's content (archive bytes, or a directory's file list with sizes and times)."""
    if source == "torchvision":
        return "torchvision-cifar10"
    path = Path(source)
    if not path.exists():
        raise DataError(f"data path not found: {source}")
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load(source: str | None = "auto", cache_dir: str | Path | None = None) -> Dataset:
    """Decode ``source`` once into uint8 arrays; later calls read the cache."""
    source = resolve_source(source)
    key = fingerprint(source)
    cache = Path(cache_dir or default_cache_dir()) / f"data-v{CACHE_VERSION}-{key}"
    if (cache / "meta.json").exists():
        return _read_cache(cache, source, key)
    if source == "torchvision":
        train_x, train_y, test_x, test_y, classes = _decode_torchvision(Path(cache_dir or default_cache_dir()))
    else:
        train_x, train_y, test_x, test_y, classes = _decode_imagefolder(Path(source))
    _write_cache(cache, train_x, train_y, test_x, test_y, classes, source)
    return Dataset(train_x, train_y, test_x, test_y, classes, source, key)


def was_cached(source: str | None = "auto", cache_dir: str | Path | None = None) -> bool:
    source = resolve_source(source)
    cache = Path(cache_dir or default_cache_dir()) / f"data-v{CACHE_VERSION}-{fingerprint(source)}"
    return (cache / "meta.json").exists()


def _write_cache(cache: Path, train_x, train_y, test_x, test_y, classes, source) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
    try:
        for name, arr in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps({"classes": list(classes), "source": source}))
        try:
            os.rename(tmp, cache)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_cache(cache: Path, source: str, key: str) -> Dataset:
    meta = json.loads((cache / "meta.json").read_text())
    arrs = {n: np.load(cache / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")}
    return Dataset(arrs["train_x"], arrs["train_y"], arrs["test_x"], arrs["test_y"], tuple(meta["classes"]), source, key)


def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "RGB":
                raise DataError(f"{name}: image mode {im.mode}, expected RGB")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{name}: cannot decode image ({one_line(e)})") from None


def _iter_imagefolder(path: Path):
    """Yield (split, class, name, bytes) from a directory or a tar(.gz) archive."""
    if path.is_dir():
        for p in sorted(path.glob("*/*/*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                yield p.parts[-3], p.parts[-2], str(p), p.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield parts[-3], parts[-2], m.name, tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar archive ({one_line(e)})") from None


def write_subset(src: str | Path, dest: str | Path, train_per_class: int, test_per_class: int) -> Path:
    """A ``.tar.gz`` in ImageFolder layout holding the first N images per class of each split of ``src`` (an
    ImageFolder archive), copied byte for byte; 0 keeps every image of that split."""
    counts: dict[tuple[str, str], int] = {}
    limit = {"train": train_per_class, "test": test_per_class}
    with tarfile.open(src, "r:*") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in limit:
                continue
            key = (parts[-3], parts[-2])
            if limit[parts[-3]] and counts.get(key, 0) >= limit[parts[-3]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            tout.addfile(m, tin.extractfile(m))
    return Path(dest)


def _decode_imagefolder(path: Path):
    images: dict[str, dict[str, list[np.ndarray]]] = {"train": {}, "test": {}}
    shape = None
    for split, cls, name, data in _iter_imagefolder(path):
        if split not in images:
            continue
        arr = _decode_image(data, name)
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise DataError(f"{name}: image shape {arr.shape} differs from the first image's {shape}")
        images[split].setdefault(cls, []).append(arr)
    for split in ("train", "test"):
        if not images[split]:
            raise DataError(f"{path}: no images under {split}/<class>/ (ImageFolder layout expected)")
    classes = tuple(sorted(images["train"]))
    if tuple(sorted(images["test"])) != classes:
        raise DataError(f"{path}: test classes {sorted(images['test'])} do not match train classes {list(classes)}")
    if len(classes) < 2:
        raise DataError(f"{path}: found {len(classes)} class folder(s); need at least 2")

    def stack(split):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            xs.extend(images[split][cls])
            ys.extend([label] * len(images[split][cls]))
        x = np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2))
        return x, np.asarray(ys, dtype=np.int64)

    train_x, train_y = stack("train")
    test_x, test_y = stack("test")
    return train_x, train_y, test_x, test_y, classes


def torchvision_downloaded(root: Path | None = None) -> bool:
    """Whether torchvision's CIFAR-10 files are already in the cache (no download needed)."""
    from torchvision.datasets import CIFAR10

    folder = Path(root or default_cache_dir()) / "torchvision"
    return (folder / CIFAR10.base_folder).is_dir()


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail within seconds, with one line, where the download host cannot be reached (no internet): a download
    would otherwise wait on DNS and connect timeouts and retries."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout).close()
    except OSError as e:
        raise DataError(f"cannot download CIFAR-10 with torchvision: {u.hostname} is not reachable "
                        f"({e.strerror or type(e).__name__}; {why_torchvision()}); pass --data PATH to a local copy "
                        f"or set ABLATIONS_DATA") from None


def _decode_torchvision(root: Path):
    from torchvision.datasets import CIFAR10

    if not torchvision_downloaded(root):
        check_reachable(CIFAR10.url)
    try:
        train = CIFAR10(root / "torchvision", train=True, download=True)
        test = CIFAR10(root / "torchvision", train=False, download=True)
    except Exception as e:  # URLError, checksum errors ...
        raise DataError(f"torchvision CIFAR10 download failed ({one_line(e)}); pass --data PATH to a local copy") from None

    def conv(ds):
        return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)

    return (*conv(train), *conv(test), tuple(train.classes))


def make_splits(ds: Dataset, val_size: int = 5000, split_seed: int = 0,
                train_per_class: int = 0, test_per_class: int = 0) -> Splits:
    """Stratified train/validation split of the official training set; the official test set stays test.

    ``train_per_class`` keeps a class-balanced subset of the training part (0 = all);
    ``test_per_class`` keeps the first N test images of each class (0 = all).
    """
    from sklearn.model_selection import train_test_split

    n_classes = len(ds.classes)
    idx = np.arange(len(ds.train_y))
    if not n_classes <= val_size <= len(idx) - n_classes:
        raise DataError(f"val_size={val_size} must be between {n_classes} and {len(idx) - n_classes}")
    train_idx, val_idx = train_test_split(idx, test_size=val_size, stratify=ds.train_y, random_state=split_seed)
    if train_per_class:
        train_idx = _per_class(train_idx, ds.train_y, train_per_class, "train_per_class")
    test_idx = np.arange(len(ds.test_y))
    if test_per_class:
        test_idx = _per_class(test_idx, ds.test_y, test_per_class, "test_per_class")
    return Splits(
        train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
        val_x=ds.train_x[val_idx], val_y=ds.train_y[val_idx],
        test_x=ds.test_x[test_idx], test_y=ds.test_y[test_idx],
        train_idx=train_idx, val_idx=val_idx, test_idx=test_idx, classes=ds.classes,
    )


def _per_class(idx: np.ndarray, labels: np.ndarray, k: int, what: str) -> np.ndarray:
    keep = []
    for c in np.unique(labels):
        members = idx[labels[idx] == c]
        if len(members) < k:
            raise DataError(f"{what}={k}: class {c} has only {len(members)} images")
        keep.append(members[:k])
    return np.sort(np.concatenate(keep))
