"""Loading real CIFAR-10 from an ImageFolder archive, the decoded-data cache, and the splits."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import data as D

from .conftest import digest_rows


def test_archive_loads_real_images_with_labels(mini_archive, tmp_path):
    ds = D.load(str(mini_archive), cache_dir=tmp_path)
    assert ds.classes == D.CIFAR10_CLASSES
    assert ds.train_x.shape == (400, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (200, 3, 32, 32)
    assert np.bincount(ds.train_y).tolist() == [40] * 10
    assert np.bincount(ds.test_y).tolist() == [20] * 10
    # real photographs, not blank or constant arrays
    assert 60 < ds.train_x.mean() < 200 and ds.train_x.std() > 30
    # the same images decoded by PIL directly (first image of the first class)
    import io
    import tarfile

    from PIL import Image

    with tarfile.open(mini_archive) as tf:
        first = sorted(m.name for m in tf if m.isfile() and "/train/airplane/" in f"/{m.name}")[0]
        img = np.asarray(Image.open(io.BytesIO(tf.extractfile(first).read())).convert("RGB"))
    assert any((ds.train_x[i].transpose(1, 2, 0) == img).all() for i in range(40))


def test_second_load_reads_the_cache_without_decoding(mini_archive, tmp_path, monkeypatch):
    assert not D.was_cached(str(mini_archive), cache_dir=tmp_path)
    first = D.load(str(mini_archive), cache_dir=tmp_path)
    assert D.was_cached(str(mini_archive), cache_dir=tmp_path)

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode", no_decoding)
    second = D.load(str(mini_archive), cache_dir=tmp_path)
    assert np.array_equal(first.train_x, second.train_x) and np.array_equal(first.test_y, second.test_y)
    assert second.fingerprint == first.fingerprint


def test_directory_source_equals_archive_source(mini_archive, tmp_path):
    import tarfile

    root = tmp_path / "folder"
    with tarfile.open(mini_archive) as tf:
        tf.extractall(root, filter="data")
    from_dir = D.load(str(root), cache_dir=tmp_path / "c1")
    from_tar = D.load(str(mini_archive), cache_dir=tmp_path / "c2")
    assert from_dir.classes == from_tar.classes
    assert digest_rows(from_dir.train_x) == digest_rows(from_tar.train_x)


def test_full_archive_has_the_official_sizes(cifar):
    assert cifar.train_x.shape == (50000, 3, 32, 32)
    assert cifar.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(cifar.train_y).tolist() == [5000] * 10
    assert np.bincount(cifar.test_y).tolist() == [1000] * 10


def test_stratified_split_has_no_overlap_and_is_balanced(cifar):
    s = D.make_splits(cifar, val_size=5000, split_seed=0)
    assert len(s.train_y) == 45000 and len(s.val_y) == 5000 and len(s.test_y) == 10000
    assert not set(s.train_idx) & set(s.val_idx)
    assert len(set(s.train_idx) | set(s.val_idx)) == 50000
    assert np.bincount(s.val_y).tolist() == [500] * 10  # stratified
    # validation images really are training-set images, the test set is the official one
    assert np.array_equal(s.val_x, cifar.train_x[s.val_idx])
    assert np.array_equal(s.test_x, cifar.test_x)
    # the same seed gives the same split, another seed another one
    again = D.make_splits(cifar, val_size=5000, split_seed=0)
    other = D.make_splits(cifar, val_size=5000, split_seed=1)
    assert np.array_equal(again.val_idx, s.val_idx)
    assert not np.array_equal(other.val_idx, s.val_idx)


def test_class_balanced_subsets(small_splits):
    s = small_splits
    assert np.bincount(s.train_y).tolist() == [60] * 10
    assert np.bincount(s.test_y).tolist() == [30] * 10
    assert np.bincount(s.val_y).tolist() == [20] * 10
    assert not set(s.train_idx) & set(s.val_idx)  # the subset is drawn from the training part only


@pytest.mark.parametrize("bad, message", [
    ("missing", "not found"),
    ("empty", "no images"),
    ("corrupt", "not a readable tar"),
    ("badimage", "cannot decode"),
])
def test_bad_sources_fail_with_one_line(tmp_path, bad, message):
    if bad == "missing":
        src = tmp_path / "nope.tar.gz"
    elif bad == "empty":
        src = tmp_path / "empty"
        src.mkdir()
    elif bad == "corrupt":
        src = tmp_path / "corrupt.tar.gz"
        src.write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    else:
        src = tmp_path / "badimage"
        for split in ("train", "test"):
            for cls in ("a", "b"):
                (src / split / cls).mkdir(parents=True)
                (src / split / cls / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(D.DataError, match=message) as e:
        D.load(str(src), cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_mismatched_classes_are_refused(tmp_path):
    """(Images of other sizes and modes are taken: tests/test_own_data.py.)"""
    from PIL import Image

    def write(root, split, cls, i, size):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i * 40, 0, 0)).save(root / split / cls / f"{i}.png")

    classes = tmp_path / "classes"
    for cls in ("a", "b"):
        write(classes, "train", cls, 0, (32, 32))
    for cls in ("a", "c"):
        write(classes, "test", cls, 0, (32, 32))
    with pytest.raises(D.DataError, match="do not match"):
        D.load(str(classes), cache_dir=tmp_path / "c2")
