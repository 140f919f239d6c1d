"""``TrialStore``: where a trial run in its Tune actor keeps its epoch states and final artifacts, on a local path
and on a real S3 API (moto's server). Its contract: the newest complete epoch state is what a retry resumes from,
older states are gone once a newer one is in place, and the final artifacts appear with final.json last."""
from __future__ import annotations

import json
import os

import pytest
import torch

from ablations.driver.trainable import FINAL_FILES, TrialStore

from .conftest import BUCKET, s3_keys


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "storage")
    env = request.getfixturevalue("s3")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # pyarrow's S3 filesystem reads the endpoint and keys from the environment
    request.addfinalizer(lambda: [os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
                                  for k, v in saved.items()])
    return f"s3://{BUCKET}/store-{tmp_path.name}"


def _files(store: TrialStore) -> list[str]:
    import pyarrow.fs as pafs

    infos = store.fs.get_file_info(pafs.FileSelector(store.root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(store.root) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_epoch_states_keep_only_the_newest_and_resume_from_it(store_uri):
    store = TrialStore(store_uri, "t1")
    assert store.load_state() is None and not store.has_final()
    for epoch in (1, 2, 3):
        store.save_state(epoch, {"epoch": epoch, "w": torch.full((3,), float(epoch))})
    assert _files(store) == ["epoch-0003/state.pt"]
    state = TrialStore(store_uri, "t1").load_state()  # a new process (a retry) finds it
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.full((3,), 3.0))
    assert TrialStore(store_uri, "t2").load_state() is None  # trials do not see each other's states


def test_final_artifacts_replace_the_epoch_states(store_uri, tmp_path):
    store = TrialStore(store_uri, "t1")
    store.save_state(1, {"epoch": 1})
    d = tmp_path / "final"
    d.mkdir()
    for name in FINAL_FILES:
        (d / name).write_text(json.dumps({"name": name}))
    path = store.save_final(d)
    assert store.has_final() and path == store.final
    assert _files(store) == sorted(f"final/{n}" for n in FINAL_FILES)
    with store.fs.open_input_stream(f"{store.final}/final.json") as f:
        assert json.loads(f.read()) == {"name": "final.json"}


def test_an_s3_store_writes_under_the_storage_prefix(s3, tmp_path):
    os.environ.update(s3)
    try:
        store = TrialStore(f"s3://{BUCKET}/prefixed", "abc")
        store.save_state(2, {"epoch": 2})
    finally:
        for k in s3:
            os.environ.pop(k, None)
    files = [k for k in s3_keys(s3, "prefixed/") if not k.endswith("/")]  # pyarrow adds folder markers
    assert files == ["prefixed/abc/actor/epoch-0002/state.pt"]
