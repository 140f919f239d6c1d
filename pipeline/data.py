"""CIFAR-10, or any ImageFolder, as uint8 arrays of one square size, decoded once and cached.

Sources:
  * a directory or ``.tar.gz`` in ImageFolder layout: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (any of
    ``IMAGE_SUFFIXES``)
  * ``torchvision``: ``torchvision.datasets.CIFAR10(download=True)`` (needs internet the first time)
  * ``auto``: ``$ABLATIONS_DATA`` if set, else the shared archive beside the repository if present,
    else ``torchvision``.

Decoding takes what torchvision's ``ImageFolder`` takes: any image PIL opens, in any mode, converted to RGB as
torchvision's loader converts it (``Image.convert("RGB")``: grayscale is repeated, alpha dropped, a palette looked
up), and of any size. Every image is stored at one square size, the *stored size* (``stored_size``): the config
key ``data_size`` when set; else, where every image already has one square size (CIFAR-10: 32), that size; else the
shorter side of the most common size, capped at the largest resolution a trial of the run uses. An image of
another size is resized once, at decode time, as torchvision's ``Resize(s)`` + ``CenterCrop(s)`` would: its
shorter side to the stored size (bilinear), then the centre square.

Arrays are NCHW uint8. They are cached under ``$ABLATIONS_CACHE`` (default ``~/.cache/ablations``) in a folder
named by the data's fingerprint (``data_key``): a hash of the source's content, and where decoding changed any
image (resized or converted it) the stored size and ``rgb`` after it. Data stored exactly as its files hold it
(same-size square RGB images, such as CIFAR-10) keeps the bare content hash. A survey of the source (its classes,
images per split and class, their sizes and modes: ``Survey``), written beside the caches when it is first
decoded, lets a later run find its cache, and the dry run count the images, without opening an image.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.errors import (
    DataError,  # noqa: F401  (re-exported)
    one_line,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CACHE_VERSION = 1
SURVEY_VERSION = 1
SPLITS = ("train", "test")
LISTED_CLASSES = 12  # a limits error names at most this many short classes per limit


@dataclass(frozen=True)
class Survey:
    """What a source holds: its classes (in label order), images per split and class, and how many images have
    each size ("WxH") and each PIL mode. Made while the source is decoded (every image is opened then)."""

    classes: tuple[str, ...]
    counts: dict[str, tuple[int, ...]]  # split -> images per class, in class order
    sizes: dict[str, int]
    modes: dict[str, int]

    @property
    def images(self) -> int:
        return sum(self.sizes.values())

    def square_side(self) -> int | None:
        """The side every image has, where they all have one square size."""
        if len(self.sizes) == 1:
            w, h = _wh(next(iter(self.sizes)))
            return w if w == h else None
        return None

    def common_side(self) -> int:
        """The shorter side of the most common size (of equally common sizes, the largest)."""
        return min(_wh(max(self.sizes, key=lambda s: (self.sizes[s], min(_wh(s)), s))))

    def as_is(self, size: int) -> bool:
        """Whether images stored at ``size`` are exactly what the files hold (nothing resized or converted)."""
        return self.square_side() == size and set(self.modes) <= {"RGB"}

    def resized(self, size: int) -> int:
        return sum(n for s, n in self.sizes.items() if _wh(s) != (size, size))

    def converted(self) -> dict[str, int]:
        """Images converted to RGB, per original mode."""
        return {m: n for m, n in sorted(self.modes.items()) if m != "RGB"}

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "counts": {k: list(v) for k, v in self.counts.items()},
                "sizes": self.sizes, "modes": self.modes}

    @classmethod
    def from_json(cls, d: dict) -> "Survey":
        return cls(tuple(d["classes"]), {k: tuple(int(n) for n in v) for k, v in d["counts"].items()},
                   {str(k): int(v) for k, v in d["sizes"].items()}, {str(k): int(v) for k, v in d["modes"].items()})


def _wh(size: str) -> tuple[int, int]:
    w, h = size.split("x")
    return int(w), int(h)


def stored_size(survey: Survey, data_size: int = 0, largest_resolution: int = 0) -> int:
    """The side images are stored at: ``data_size`` when set; else the one square size every image has; else the
    shorter side of the most common size, capped at ``largest_resolution`` (the largest a trial uses; 0: no cap)."""
    if data_size:
        return data_size
    side = survey.square_side()
    if side:
        return side
    common = survey.common_side()
    return min(common, largest_resolution) if largest_resolution else common


def data_key(content: str, survey: Survey, size: int) -> str:
    """The data's fingerprint: the content hash, with the stored size and the RGB conversion where decoding
    changes any image (data stored as its files hold it keeps the bare hash)."""
    return content if survey.as_is(size) else f"{content}-{size}px-rgb"


def content_of(key: str) -> str:
    """The content hash of a data fingerprint (``data_key``)."""
    return re.sub(r"-\d+px-rgb$", "", key)


def describe_stored(stored: dict) -> str:
    """What decoding did, in words, from ``Dataset.stored()`` (also as run.json records it)."""
    size, n = stored.get("size"), stored.get("images")
    if not size:
        return ""
    resized, converted = stored.get("resized", 0), stored.get("converted") or {}
    if not resized and not converted:
        return f"stored at {size}x{size} px RGB, as the files hold them"
    parts = [f"stored at {size}x{size} px"]
    if resized:
        parts.append(f"{resized:,} of {n:,} images resized (shorter side to {size}, centre crop)")
    if converted:
        modes = ", ".join(f"{m} {k:,}" for m, k in converted.items())
        parts.append(f"{sum(converted.values()):,} converted to RGB ({modes})")
    return "; ".join(parts)


@dataclass
class Dataset:
    train_x: np.ndarray  # (N, 3, S, S) uint8, the official training set
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    source: str
    fingerprint: str  # data_key: names the cache and is recorded in run.json
    survey: Survey | None = None

    def stored(self) -> dict:
        """What decoding did: the stored size, and of the source's images how many were resized and converted to
        RGB (per original mode)."""
        size = int(self.train_x.shape[-1])
        if self.survey is None:
            return {"size": size}
        return {"size": size, "images": self.survey.images, "resized": self.survey.resized(size),
                "converted": self.survey.converted()}


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


# ----------------------------------------------------------------------------- the decoded-data cache


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir or default_cache_dir())


def _cache_path(root: Path, key: str) -> Path:
    return root / f"data-v{CACHE_VERSION}-{key}"


def _survey_path(root: Path, content: str) -> Path:
    return root / f"survey-v{SURVEY_VERSION}-{content}.json"


def read_survey(root: Path, content: str) -> Survey | None:
    """The survey of the source with this content hash, if it was decoded here before: its survey file, or a
    cache of it stored as the files hold it (such a cache predates surveys: every image of it is RGB and of its
    arrays' size)."""
    p = _survey_path(root, content)
    if p.exists():
        try:
            return Survey.from_json(json.loads(p.read_text()))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: decoded again and rewritten
    cache = _cache_path(root, content)
    if not (cache / "meta.json").exists():
        return None
    meta = json.loads((cache / "meta.json").read_text())
    classes = tuple(meta["classes"])
    counts, n, shape = {}, 0, None
    for split in SPLITS:
        y = np.load(cache / f"{split}_y.npy")
        counts[split] = tuple(int(k) for k in np.bincount(y, minlength=len(classes)))
        n += len(y)
        shape = np.load(cache / f"{split}_x.npy", mmap_mode="r").shape
    survey = Survey(classes, counts, {f"{shape[3]}x{shape[2]}": n}, {"RGB": n})
    _write_survey(root, content, survey)
    return survey


def _write_survey(root: Path, content: str, survey: Survey) -> None:
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(survey.to_json(), f)
    os.replace(tmp, _survey_path(root, content))


def load(source: str | None = "auto", cache_dir: str | Path | None = None, data_size: int = 0,
         largest_resolution: int = 0) -> Dataset:
    """Decode ``source`` once into uint8 arrays at its stored size (``stored_size``); later calls read the
    cache."""
    source = resolve_source(source)
    root = _cache_root(cache_dir)
    content = fingerprint(source)
    survey = read_survey(root, content)
    if survey is not None:
        size = stored_size(survey, data_size, largest_resolution)
        cache = _cache_path(root, data_key(content, survey, size))
        if (cache / "meta.json").exists():
            return _read_cache(cache, source, data_key(content, survey, size), survey)
        data_size = size  # decode straight to it
    if source == "torchvision":
        classes, items = _torchvision_items(root)
    else:
        classes, items = _imagefolder_items(Path(source))
    arrays, survey, size = _decode(classes, items, data_size, largest_resolution)
    key = data_key(content, survey, size)
    _write_survey(root, content, survey)
    _write_cache(_cache_path(root, key), *arrays, classes, source)
    return Dataset(*arrays, classes, source, key, survey)


def was_cached(source: str | None = "auto", cache_dir: str | Path | None = None, data_size: int = 0,
               largest_resolution: int = 0) -> bool:
    source = resolve_source(source)
    root = _cache_root(cache_dir)
    content = fingerprint(source)
    survey = read_survey(root, content)
    if survey is None:
        return False
    key = data_key(content, survey, stored_size(survey, data_size, largest_resolution))
    return (_cache_path(root, key) / "meta.json").exists()


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


def _read_cache(cache: Path, source: str, key: str, survey: Survey | None) -> Dataset:
    meta = json.loads((cache / "meta.json").read_text())
    arrs = {n: np.load(cache / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")}
    return Dataset(arrs["train_x"], arrs["train_y"], arrs["test_x"], arrs["test_y"], tuple(meta["classes"]), source,
                   key, survey)


# ----------------------------------------------------------------------------- counting without decoding


@dataclass(frozen=True)
class Counts:
    """A source's images per class of each split, and how they were found (for the dry run's data line)."""

    source: str
    classes: tuple[str, ...]
    train: tuple[int, ...]
    test: tuple[int, ...]
    how: str


def count(source: str | None = "auto", cache_dir: str | Path | None = None) -> Counts:
    """The source's images per class without decoding: from its survey where it was decoded here before, else
    CIFAR-10's own counts for ``torchvision``, else a count of the image files (an archive's member list)."""
    source = resolve_source(source)
    survey = read_survey(_cache_root(cache_dir), fingerprint(source))
    if survey is not None:
        return Counts(source, survey.classes, survey.counts["train"], survey.counts["test"],
                      "counted in the decoded cache")
    if source == "torchvision":
        return Counts(source, CIFAR10_CLASSES, (5000,) * 10, (1000,) * 10, "CIFAR-10's own counts")
    per: dict[str, Counter] = {s: Counter() for s in SPLITS}
    for split, cls, _, _ in _imagefolder_entries(Path(source), read=False):
        if split in per:
            per[split][cls] += 1
    classes = _check_classes(Path(source), per["train"], per["test"])
    return Counts(source, classes, tuple(per["train"][c] for c in classes), tuple(per["test"][c] for c in classes),
                  "counted image files, not yet decoded")


# ----------------------------------------------------------------------------- decoding


@dataclass
class _Item:
    """One image of a source: its split, class, a name for messages, and its data: an archive member's bytes, a
    file, or an (H, W, 3) uint8 RGB array (torchvision's)."""

    split: str
    cls: str
    name: str
    data: object

    def open(self, pixels: bool = True):
        """The image as PIL opens it (``pixels`` false: only its header read)."""
        from PIL import Image, UnidentifiedImageError

        if isinstance(self.data, np.ndarray):
            return Image.fromarray(self.data)
        try:
            im = Image.open(self.data if isinstance(self.data, Path) else io.BytesIO(self.data))
            if pixels:
                im.load()
            return im
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{self.name}: cannot decode image ({one_line(e)})") from None


def _imagefolder_entries(path: Path, read: bool = True) -> Iterator[tuple[str, str, str, object]]:
    """(split, class, name, bytes or path) of every image file of a directory or a tar(.gz) archive (``read``
    false: None instead of an archive member's bytes)."""
    if path.is_dir():
        for p in sorted(path.glob("*/*/*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                yield p.parts[-3], p.parts[-2], str(p), p
        return
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = Path(m.name).parts
                if m.isfile() and len(parts) >= 3 and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield parts[-3], parts[-2], m.name, tf.extractfile(m).read() if read else None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar archive ({one_line(e)})") from None


def _check_classes(path: Path, train: Counter, test: Counter) -> tuple[str, ...]:
    for split, found in (("train", train), ("test", test)):
        if not found:
            raise DataError(f"{path}: no images under {split}/<class>/ (ImageFolder layout expected)")
    classes = tuple(sorted(train))
    if tuple(sorted(test)) != classes:
        raise DataError(f"{path}: test classes {sorted(test)} do not match train classes {list(classes)}")
    if len(classes) < 2:
        raise DataError(f"{path}: found {len(classes)} class folder(s); need at least 2")
    return classes


def _imagefolder_items(path: Path) -> tuple[tuple[str, ...], list[_Item]]:
    """The classes and images of an ImageFolder, each class's images together in class order (an archive's bytes
    held in memory, a directory's files opened when decoded)."""
    items, per = [], {s: Counter() for s in SPLITS}
    for split, cls, name, data in _imagefolder_entries(path):
        if split in per:
            per[split][cls] += 1
            items.append(_Item(split, cls, name, data))
    classes = _check_classes(path, per["train"], per["test"])
    label = {c: k for k, c in enumerate(classes)}
    items.sort(key=lambda item: label[item.cls])  # stable: within a class, the source's order
    return classes, items


def _headers(items: list[_Item]) -> Counter:
    """Image sizes ("WxH") of ``items``, from their headers."""
    sizes: Counter = Counter()
    for item in items:
        im = item.open(pixels=False)
        sizes[f"{im.width}x{im.height}"] += 1
        im.close()
    return sizes


def _fit(im, size: int) -> np.ndarray:
    """An image as (size, size, 3) uint8 RGB: converted as torchvision's loader converts (``convert("RGB")``), then
    its shorter side resized to ``size`` (bilinear) and the centre square cropped, as ``Resize`` + ``CenterCrop``."""
    from PIL import Image

    if im.mode != "RGB":
        with warnings.catch_warnings():  # a palette with transparency: the alpha is dropped, as torchvision does
            warnings.simplefilter("ignore", UserWarning)
            im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (size, size):
        if w <= h:
            nw, nh = size, max(size, int(size * h / w))
        else:
            nw, nh = max(size, int(size * w / h)), size
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


def _decode(classes: tuple[str, ...], items: list[_Item], data_size: int, largest_resolution: int):
    """Every image at the stored size, as arrays (train_x, train_y, test_x, test_y), with the survey and the size.
    Without ``data_size`` the images are kept as decoded while they share the first one's square size in RGB; at
    the first that does not, every image's header settles the stored size (``stored_size``) and the images so far
    are resized to it."""
    from PIL import Image

    sizes, modes = Counter(), Counter()
    out: list[np.ndarray] = []
    size = data_size or 0
    first = None
    for i, item in enumerate(items):
        im = item.open()
        try:
            sizes[f"{im.width}x{im.height}"] += 1
            modes[im.mode] += 1
            if not size:
                first = first or im.size
                if im.size == first and first[0] == first[1] and im.mode == "RGB":
                    out.append(np.asarray(im, dtype=np.uint8))
                    continue
                seen = Survey(classes, {}, dict(sizes + _headers(items[i + 1:])), {})
                size = stored_size(seen, 0, largest_resolution)
                out = [_fit(Image.fromarray(a), size) for a in out]
            out.append(_fit(im, size))
        finally:
            im.close()
    size = size or first[0]
    label = {c: k for k, c in enumerate(classes)}
    arrays, counts = [], {}
    for split in SPLITS:  # in the items' order
        idx = [i for i, item in enumerate(items) if item.split == split]
        x = np.ascontiguousarray(np.stack([out[i] for i in idx]).transpose(0, 3, 1, 2))
        y = np.asarray([label[items[i].cls] for i in idx], dtype=np.int64)
        counts[split] = tuple(int(k) for k in np.bincount(y, minlength=len(classes)))
        arrays += [x, y]
    return arrays, Survey(classes, counts, dict(sizes), dict(modes)), size


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


def _torchvision_items(root: Path) -> tuple[tuple[str, ...], list[_Item]]:
    """CIFAR-10's classes and images in torchvision's order."""
    from torchvision.datasets import CIFAR10

    if not torchvision_downloaded(root):
        check_reachable(CIFAR10.url)
    try:
        train = CIFAR10(root / "torchvision", train=True, download=True)
        test = CIFAR10(root / "torchvision", train=False, download=True)
    except Exception as e:  # URLError, checksum errors ...
        raise DataError(f"torchvision CIFAR10 download failed ({one_line(e)}); pass --data PATH to a local copy") from None
    classes = tuple(train.classes)
    return classes, [_Item(split, classes[t], f"{split}[{i}]", a) for split, ds in (("train", train), ("test", test))
                     for i, (a, t) in enumerate(zip(ds.data, ds.targets))]


# ----------------------------------------------------------------------------- splits and their limits


def split_counts(classes: tuple[str, ...], train: tuple[int, ...], test: tuple[int, ...], val_size: int = 5000,
                 split_seed: int = 0, train_per_class: int = 0, test_per_class: int = 0) -> dict[str, int]:
    """The images a run's splits hold ({"train", "val", "test"}) for a source with these images per class, or one
    ``DataError`` line naming every limit the data cannot meet, the classes (by name) that fall short, and the
    ``--set`` that takes the most every class has. 0 for a per-class limit takes every image of each class."""
    n, k = sum(train), len(classes)
    problems, fixes = [], []
    single = [c for c, m in zip(classes, train) if m < 2]
    if single:
        problems.append(f"a stratified validation split needs 2 training images of each class ({_names(single)} "
                        f"{'has' if len(single) == 1 else 'have'} fewer)")
    val = val_size
    if not k <= val_size <= n - k:
        val = min(max(k, round(n / 10)), n - k)
        problems.append(f"val_size={val_size} (the training set holds {n} images of {k} classes: it must be between "
                        f"{k} and {n - k})")
        fixes.append(f"val_size={val}")
    left = _left_for_training(train, val, split_seed) if not single and k <= val <= n - k else list(train)
    for key, limit, have, where in (("train_per_class", train_per_class, left, f" after {val} for validation"),
                                    ("test_per_class", test_per_class, list(test), "")):
        short = [f"{c} {m}" for c, m in zip(classes, have) if limit and m < limit]
        if short:
            problems.append(f"{key}={limit} ({len(short)} of {k} classes have fewer{where}: {_names(short)})")
            fixes.append(f"{key}={min(have)}")
    if problems:
        fix = (f"; {' '.join(f'--set {f}' for f in fixes)} takes the most every class has" if fixes else "")
        raise DataError(f"the data cannot meet the grid's limits: {'; '.join(problems)}{fix} (train_per_class=0 and "
                        f"test_per_class=0 take every image of each class)")
    return {"train": sum(min(m, train_per_class) if train_per_class else m for m in left), "val": val_size,
            "test": sum(min(m, test_per_class) if test_per_class else m for m in test)}


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED_CLASSES])
    return shown + (f" and {len(items) - LISTED_CLASSES} more" if len(items) > LISTED_CLASSES else "")


def _left_for_training(train: tuple[int, ...], val_size: int, split_seed: int) -> list[int]:
    """Images per class the stratified validation split leaves for training (it depends only on the counts)."""
    labels = np.repeat(np.arange(len(train)), train)
    idx, _ = _stratified_split(labels, val_size, split_seed)
    return np.bincount(labels[idx], minlength=len(train)).tolist()


def _stratified_split(labels: np.ndarray, val_size: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels, random_state=split_seed)


def make_splits(ds: Dataset, val_size: int = 5000, split_seed: int = 0,
                train_per_class: int = 0, test_per_class: int = 0) -> Splits:
    """Stratified train/validation split of the official training set; the official test set stays test.

    ``train_per_class`` keeps a class-balanced subset of the training part (0 = all);
    ``test_per_class`` keeps the first N test images of each class (0 = all). Limits the data cannot meet are
    refused in one line (``split_counts``).
    """
    counts = [tuple(int(m) for m in np.bincount(y, minlength=len(ds.classes))) for y in (ds.train_y, ds.test_y)]
    split_counts(ds.classes, *counts, val_size, split_seed, train_per_class, test_per_class)
    train_idx, val_idx = _stratified_split(ds.train_y, val_size, split_seed)
    if train_per_class:
        train_idx = _per_class(train_idx, ds.train_y, train_per_class)
    test_idx = np.arange(len(ds.test_y))
    if test_per_class:
        test_idx = _per_class(test_idx, ds.test_y, test_per_class)
    return Splits(
        train_x=ds.train_x[train_idx], train_y=ds.train_y[train_idx],
        val_x=ds.train_x[val_idx], val_y=ds.train_y[val_idx],
        test_x=ds.test_x[test_idx], test_y=ds.test_y[test_idx],
        train_idx=train_idx, val_idx=val_idx, test_idx=test_idx, classes=ds.classes,
    )


def _per_class(idx: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.concatenate([idx[labels[idx] == c][:k] for c in np.unique(labels)]))
