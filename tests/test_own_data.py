"""Your own images: generated ImageFolders of another domain (not CIFAR-10's classes) in mixed sizes and PIL modes,
with fewer images than a grid asks for; decoding, the data's fingerprint, the one-line limits error, the dry run's
counts, class claims on classes the data lacks, and the dry run's estimate against a real run's wall time."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline import data as D

from ablations.plan import claims as C
from ablations.plan import grids

from .conftest import GRIDS, OTHER_CLASSES, make_imagefolder, run_cli

MIXED = ((48, 48), (48, 48), (32, 32), (64, 40), (40, 56))  # 48x48 the most common
MODES = ("RGB", "L", "RGBA", "P")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three classes of 20 training and 5 test images each, in every size of MIXED and every mode of MODES."""
    return make_imagefolder(tmp_path_factory.mktemp("mixed") / "data", {c: (20, 5) for c in OTHER_CLASSES[:3]},
                            MIXED, MODES)


def _files(root, split, cls):
    return sorted((root / split / cls).iterdir())


def test_mixed_sizes_and_modes_are_stored_at_the_most_common_size_in_rgb(mixed, tmp_path):
    from PIL import Image
    from torchvision.transforms import functional as TF

    ds = D.load(str(mixed), cache_dir=tmp_path)
    assert ds.classes == OTHER_CLASSES[:3]
    assert ds.train_x.shape == (60, 3, 48, 48) and ds.test_x.shape == (15, 3, 48, 48) and ds.train_x.dtype == np.uint8
    assert np.bincount(ds.train_y).tolist() == [20] * 3 and np.bincount(ds.test_y).tolist() == [5] * 3
    files = _files(mixed, "train", OTHER_CLASSES[0])  # class 0's training images, in the arrays' order
    opened = [Image.open(p) for p in mixed.glob("*/*/*")]
    n = {m: sum(im.mode == m for im in opened) for m in MODES}
    assert all(n.values())  # every mode is there
    resized = sum(im.size != (48, 48) for im in opened)
    assert ds.stored() == {"size": 48, "images": 75, "resized": resized,
                           "converted": {"L": n["L"], "P": n["P"], "RGBA": n["RGBA"]}}
    for i, path in enumerate(files):
        with Image.open(path) as im:
            # what torchvision's ImageFolder loader gives (convert("RGB")), then Resize(48) + CenterCrop(48)
            want = np.asarray(TF.center_crop(TF.resize(im.convert("RGB"), 48), 48))
            if im.mode == "L" and im.size == (48, 48):  # grayscale: the one channel three times
                assert (want == np.asarray(im)[..., None]).all()
        assert np.array_equal(ds.train_x[i].transpose(1, 2, 0), want), (path.name, im.mode, im.size)
    text = D.describe_stored(ds.stored())
    assert text.startswith(f"stored at 48x48 px; {resized} of 75 images resized") and f"P {n['P']}" in text


def test_the_fingerprint_names_the_stored_size_only_where_decoding_changed_images(mixed, tmp_path, monkeypatch):
    content = D.fingerprint(str(mixed))
    ds = D.load(str(mixed), cache_dir=tmp_path)
    assert ds.fingerprint == f"{content}-48px-rgb" and D.content_of(ds.fingerprint) == content
    # the grid's largest resolution caps a mixed folder's size; data_size sets it
    assert D.load(str(mixed), cache_dir=tmp_path, largest_resolution=40).train_x.shape[-1] == 40
    assert D.load(str(mixed), cache_dir=tmp_path, data_size=56).fingerprint == f"{content}-56px-rgb"
    # a folder of one square size in RGB is stored as its files hold it, under the bare content hash (CIFAR-10 is)
    same = make_imagefolder(tmp_path / "same", {c: (6, 2) for c in OTHER_CLASSES[3:5]}, ((40, 40),), ("RGB",))
    plain = D.load(str(same), cache_dir=tmp_path, largest_resolution=32)  # the cap leaves such a folder alone
    assert plain.fingerprint == D.fingerprint(str(same)) and plain.train_x.shape[-1] == 40
    assert plain.stored() == {"size": 40, "images": 16, "resized": 0, "converted": {}}
    from PIL import Image

    first = np.asarray(Image.open(_files(same, "train", OTHER_CLASSES[3])[0]))
    assert np.array_equal(plain.train_x[0].transpose(1, 2, 0), first)
    assert D.load(str(same), cache_dir=tmp_path, data_size=32).fingerprint == f"{D.fingerprint(str(same))}-32px-rgb"

    def no_decoding(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode", no_decoding)
    assert D.was_cached(str(mixed), cache_dir=tmp_path)
    again = D.load(str(mixed), cache_dir=tmp_path)
    assert again.fingerprint == ds.fingerprint and np.array_equal(again.train_x, ds.train_x)
    assert again.stored() == ds.stored()
    counts = D.count(str(mixed), cache_dir=tmp_path)
    assert counts.how == "counted in the decoded cache" and counts.train == (20, 20, 20)


SHORT = {"barley": (30, 8), "clover": (22, 5), "fennel": (30, 8)}  # clover has fewer of both


def _fixes(message: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"--set (\w+)=(\d+)", message)}


def test_limits_the_data_cannot_meet_are_one_line_with_the_classes_and_the_fix(tmp_path):
    folder = make_imagefolder(tmp_path / "short", SHORT, ((32, 32),))
    ds = D.load(str(folder), cache_dir=tmp_path)
    with pytest.raises(D.DataError) as e:
        D.make_splits(ds, val_size=500, train_per_class=25, test_per_class=6)
    message = str(e.value)
    assert "\n" not in message
    # every limit at once, the short classes by name, the --set that takes the most every class has
    assert "val_size=500" in message and "train_per_class=25" in message and "test_per_class=6" in message
    assert "clover 5" in message and "barley" not in message.split("test_per_class=6")[1].split(";")[0]
    fixes = _fixes(message)
    assert set(fixes) == {"val_size", "train_per_class", "test_per_class"} and fixes["test_per_class"] == 5
    assert "train_per_class=0 and test_per_class=0 take every image" in message
    # one step: the fix as given works, class-balanced
    s = D.make_splits(ds, **fixes)
    assert np.bincount(s.train_y).tolist() == [fixes["train_per_class"]] * 3
    assert np.bincount(s.test_y).tolist() == [5] * 3 and len(s.val_y) == fixes["val_size"]
    # 0 takes every image: the dry run's sizes (from a count of the files) are what the split takes
    s = D.make_splits(ds, val_size=10)
    counts = D.count(str(folder), cache_dir=tmp_path / "none")
    assert counts.how == "counted image files, not yet decoded"
    assert D.split_counts(counts.classes, counts.train, counts.test, val_size=10) == \
        {"train": len(s.train_y), "val": 10, "test": len(s.test_y)} == {"train": 72, "val": 10, "test": 21}


def test_class_claims_on_classes_the_data_lacks_are_listed_not_testable():
    full = grids.expand(*grids.load_spec("full"))
    rigid = next(c for c in full.claims if c.id == "rigid_beat_organic")
    assert C.absent_classes(rigid, D.CIFAR10_CLASSES) == []
    assert C.absent_classes(rigid, OTHER_CLASSES) == [*rigid.better, *rigid.worse]
    assert C.absent_classes(rigid, [c.upper() for c in D.CIFAR10_CLASSES]) == []  # compared without case
    level = next(c for c in full.claims if c.kind == "levels")
    assert C.absent_classes(level, OTHER_CLASSES) == []
    lines = dict(line.split(":", 1) for line in grids.describe_claims(full, OTHER_CLASSES))
    assert "[not testable here (classes absent): airplane, automobile" in lines["rigid_beat_organic"]
    assert "not testable" not in lines["finetune_beats_frozen"]


def test_the_claims_table_lists_a_class_claim_on_other_classes_as_not_testable(tmp_path):
    from ablations.report.claimtable import claims_table, measure_claims
    from ablations.report.rundata import RunData
    from ablations.store.results import RunFolder

    spec = {"base": {"epochs": 1}, "levels": {"L1": {"set": {}}},
            "claims": {"rigid": {"says": "ships beat cats", "source": "s", "level": "L1", "better": ["ship"],
                                 "worse": ["cat"]}}}
    plan = grids.expand("own", spec)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.write_meta({"grid": "own", "grid_spec": spec, "eval_axes": [], "plan": plan.to_json(),
                       "trial_ids": sorted(plan.trials()),
                       "data": {"source": "own", **plan.data_settings(), "classes": list(OTHER_CLASSES)}})
    folder.write_labels({"val": np.arange(10), "test": np.arange(10)}, OTHER_CLASSES)
    folder.write_trials([{**p.row(), "status": "pending", "error": None} for p in plan.points])
    run = RunData(folder.path)
    table = claims_table(run, measure_claims(run)).frame.set_index("claim")
    assert table.loc["rigid", "verdict"] == "not testable here (classes absent): ship, cat"


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory):
    """Ten classes, fewer images than the smoke grid asks for, one class shorter than the rest."""
    counts = {c: (40, 12) for c in OTHER_CLASSES}
    counts["moss"] = (26, 7)
    return make_imagefolder(tmp_path_factory.mktemp("own") / "flora", counts, MIXED, MODES, seed=1)


def test_the_dry_run_counts_the_folder_and_refuses_its_limits_in_one_line(own_folder, tmp_path):
    proc = run_cli("--grid", "smoke", "--data", str(own_folder), "--dry-run", "--results", str(tmp_path),
                   env={"ABLATIONS_CACHE": str(tmp_path / "cache")}, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), proc.stdout + proc.stderr
    assert "train_per_class=150" in err[0] and "test_per_class=100" in err[0] and "moss" in err[0]
    fixes = _fixes(err[0])  # the folder's 386 training images cannot give 500 for validation either
    assert set(fixes) == {"val_size", "train_per_class", "test_per_class"} and fixes["test_per_class"] == 7
    env = {"ABLATIONS_CACHE": str(tmp_path / "cache")}
    # one step: the flags the line names
    proc = run_cli("--grid", "smoke", "--data", str(own_folder), "--dry-run", "--results", str(tmp_path),
                   *[a for k, v in fixes.items() for a in ("--set", f"{k}={v}")], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (f"data: {own_folder}: train {fixes['train_per_class'] * 10}, val {fixes['val_size']}, test 70 images of "
            f"10 classes (counted image files, not yet decoded)") in proc.stdout
    # a class claim on classes the data lacks: listed, not testable here
    proc = run_cli("--grid", "full", "--data", str(own_folder), "--dry-run", "--set", "val_size=100",
                   "--results", str(tmp_path), env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rigid_beat_organic:" in proc.stdout and "[not testable here (classes absent): airplane" in proc.stdout
    assert "train 286, val 100, test 115 images of 10 classes" in proc.stdout  # every image: the limits are 0
    assert not any(tmp_path.glob("smoke*")) and not any(tmp_path.glob("full*"))  # a dry run writes nothing


@pytest.mark.ray
def test_a_grid_on_an_own_folder_finishes_and_its_estimate_is_within_3x_of_its_wall_time(own_folder, tmp_path):
    """The README's flags for a folder smaller than the grid asks: the --set values the limits error names. The dry
    run's estimate (from the folder's own counts) against the run's wall time, as the run records it."""
    env = {"ABLATIONS_CACHE": str(tmp_path / "cache")}
    args = ["--grid", str(GRIDS / "tiny.yaml"), "--data", str(own_folder), "--set", "train_per_class=0",
            "--set", "val_size=100", "--results", str(tmp_path), "--name", "own", "--log", "none", "--num-cpus", "2"]
    dry = run_cli(*args, "--dry-run", env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    estimate_min = float(re.search(r"about ([\d.]+) min wall", dry.stdout).group(1))
    proc = run_cli(*args, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((tmp_path / "own" / "run.json").read_text())
    session = meta["sessions"][-1]
    assert session["estimated_wall_s"] == pytest.approx(estimate_min * 60, abs=3.5)  # the dry run's, rounded
    assert 1 / 3 <= session["wall_s"] / session["estimated_wall_s"] <= 3, session
    # the data line: the stored size and conversion, in run.json and the report
    # (the most common size, 48, capped at the grid's largest resolution, 32)
    assert meta["data"]["stored"]["size"] == 32 and meta["data"]["fingerprint"].endswith("-32px-rgb")
    assert meta["data"]["classes"] == list(OTHER_CLASSES)
    report = (tmp_path / "own" / "REPORT.md").read_text()
    assert "stored at 32x32 px;" in report and "converted to RGB (L " in report

