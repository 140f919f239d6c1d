

def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    """Results are shared (a cluster's head, a group's server): not the 0600 of a temporary file."""
    import os

    from ablations.store.results import atomic_write_text

    path = tmp_path / "REPORT.md"
    atomic_write_text(path, "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
