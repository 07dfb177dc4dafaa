"""Atomic writes: nothing half-written, nothing left behind on failure."""

import json
import os

import pytest

from mobileone_tf import fileio


def test_atomic_write_and_no_overwrite(tmp_path):
    p = tmp_path / "sub" / "a.json"
    assert fileio.write_json({"x": 1}, p) == str(p)
    assert json.loads(p.read_text()) == {"x": 1}
    with pytest.raises(FileExistsError):
        fileio.atomic_write(p, b"new", overwrite=False)
    assert json.loads(p.read_text()) == {"x": 1}
    fileio.atomic_write(p, "text")
    assert p.read_text() == "text"
    assert os.listdir(p.parent) == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "r.json"
    fileio.write_json({"ok": True}, p)
    with pytest.raises(TypeError):
        fileio.write_json({"bad": object()}, p)   # not JSON-serializable
    with pytest.raises(TypeError):
        fileio.atomic_write(p, 123)               # neither bytes nor str
    assert json.loads(p.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["r.json"]


def test_permissions_follow_umask(tmp_path):
    """Like open(): 0666 minus the umask (mkstemp alone would give 0600)."""
    import os
    old = os.umask(0o022)
    try:
        p = fileio.atomic_write(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert os.stat(p).st_mode & 0o777 == 0o644
