"""Atomic writes shared by every module that writes results (and
:func:`read_json`, their reader).

A file (:func:`atomic_write`) goes to a temporary file in the destination
folder (same filesystem), then ``os.replace`` moves it into place, so a reader
never sees a half-written file and a failure leaves nothing behind. A folder
(:func:`atomic_dir`: a KerasHub preset, an exported SavedModel, the MediaPipe
folder) is written into a :func:`staging_dir` beside its target and moved into
place by :func:`install_dir`. Permissions follow the umask.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid


def atomic_write(path, data, *, overwrite: bool = True) -> str:
    """Writes ``data`` (bytes or str) to ``path`` atomically; returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists (pass overwrite=True)")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(obj, path, *, indent: int = 2, default=None) -> str:
    """``obj`` as JSON, written atomically (see :func:`atomic_write`)."""
    return atomic_write(path, json.dumps(obj, indent=indent, default=default))


def read_json(path):
    """The JSON object of ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON (naming the file and the position).
    """
    path = os.fspath(path)
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------
# folders: staging beside the target, then one rename
# ---------------------------------------------------------------------------
_STAGING = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}$")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(target):
    """Removes the staging folders of ``target`` (:func:`staging_dir`) left by
    a process that no longer runs (killed by SIGKILL or the OOM killer, which
    no ``finally`` survives); returns their paths. A folder of a live process
    is kept."""
    parent = os.path.dirname(os.path.abspath(target))
    prefix = f".{os.path.basename(target)}.tmp-"
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = _STAGING.search(name)
        if name.startswith(prefix) and m and int(m.group(1)) != os.getpid() \
                and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed.append(os.path.join(parent, name))
    return removed


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def staging_dir(target):
    """A new empty folder ``.<name>.tmp-<pid>-<hex>`` beside ``target`` (same
    filesystem, so a rename into place is atomic; umask permissions), removed
    afterwards whatever happens: any exception, Ctrl-C, and SIGTERM (turned
    into ``SystemExit(143)`` while the folder exists, in the main thread).
    Folders left by a killed process (SIGKILL) are removed by the next staging
    for the same target (:func:`remove_stale_staging`)."""
    remove_stale_staging(target)
    parent = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")
    previous = None
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        os.makedirs(tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def install_dir(staged, target, *, overwrite: bool = True) -> str:
    """Moves the folder ``staged`` to ``target`` (same filesystem) with one
    rename; an existing ``target`` (folder or file) is first renamed aside,
    put back if the move fails, and removed after it succeeded. Returns
    ``target``.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False
            (nothing moved).
    """
    staged, target = os.fspath(staged), os.fspath(target)
    if not os.path.lexists(target):
        try:
            os.rename(staged, target)  # refuses a folder that appeared meanwhile
            return target
        except OSError:
            if not os.path.lexists(target):
                raise
    if not overwrite:
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    old = f"{target}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)
    return target


@contextlib.contextmanager
def atomic_dir(target, *, overwrite: bool = False):
    """Writes a folder atomically: yields an empty folder to fill (inside a
    :func:`staging_dir` beside ``target``), then moves it to ``target``
    (:func:`install_dir`) when the block ends without an exception. On an
    exception, Ctrl-C or SIGTERM nothing is left and an existing ``target`` is
    unchanged.

    Raises:
        FileExistsError: ``target`` exists and ``overwrite`` is False (checked
            before and after the block).
    """
    target = os.fspath(target)
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with staging_dir(target) as tmp:
        staged = os.path.join(tmp, os.path.basename(target))
        os.mkdir(staged)
        yield staged
        install_dir(staged, target, overwrite=overwrite)
