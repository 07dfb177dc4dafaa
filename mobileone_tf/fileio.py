"""Atomic file writes shared by every module that writes results (and
:func:`read_json`, their reader): the data
goes to a temporary file in the destination folder (same filesystem), then
``os.replace`` moves it into place, so a reader never sees a half-written
file and a failure leaves nothing behind."""

import json
import os
import tempfile


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
