"""Atomic writes: nothing half-written, nothing left behind on failure."""

import json
import os
import pathlib

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


# --- folders (issue 24): one atomic directory install -------------------------
def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_atomic_dir_installs_with_umask_permissions(tmp_path):
    """A folder appears complete in one rename, with 0777 minus the umask
    (tempfile.mkdtemp alone would give 0700)."""
    target = tmp_path / "deep" / "preset"
    old = os.umask(0o022)
    try:
        with fileio.atomic_dir(target) as staged:
            assert not target.exists()  # nothing at the target while writing
            (pathlib.Path(staged) / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert _tree(target.parent) == ["preset", "preset/config.json"]
    assert os.stat(target).st_mode & 0o777 == 0o755


def test_atomic_dir_refuses_or_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="out exists"):
        with fileio.atomic_dir(target):
            raise AssertionError("not reached: refused before the block")
    with fileio.atomic_dir(target, overwrite=True) as staged:
        (pathlib.Path(staged) / "new.txt").write_text("new")
    assert _tree(tmp_path) == ["out", "out/new.txt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_or_interrupt_leaves_the_old_folder_and_nothing_else(tmp_path, error):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(type(error)):
        with fileio.atomic_dir(target, overwrite=True) as staged:
            (pathlib.Path(staged) / "half.txt").write_text("half")
            raise error
    assert _tree(tmp_path) == ["out", "out/old.txt"]


def test_install_dir_puts_the_old_target_back_when_the_move_fails(tmp_path, monkeypatch):
    target, staged = tmp_path / "out", tmp_path / "staged"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged.mkdir()
    real = os.replace

    def failing(src, dst):
        if str(src) == str(staged):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        fileio.install_dir(staged, target)
    monkeypatch.undo()
    assert _tree(tmp_path) == ["out", "out/old.txt", "staged"]
    with pytest.raises(FileExistsError):
        fileio.install_dir(staged, target, overwrite=False)
    assert fileio.install_dir(staged, target) == str(target)
    assert _tree(tmp_path) == ["out"]
