"""The output folder of a run: what it holds (nothing, an unfinished run, a
finished run), ``overwrite`` / ``resume`` decisions, and the epoch log.

A run writes into ``output_dir``: ``backup/`` (``BackupAndRestore``:
weights, optimizer state, EMA, step counter of the last completed epoch),
``best.weights.h5``, ``last.weights.h5``, ``log.csv`` (one row per epoch),
``logs/`` (TensorBoard), then at the end ``fused.keras``,
``fused.weights.h5`` and, last, ``summary.json``: a folder with
``summary.json`` holds a *finished* run, one with other run files and no
``summary.json`` an *unfinished* one.

Rules (:func:`check_output_dir`): a finished run is never touched unless
``overwrite`` (start over: its files are removed first, see
:func:`clear_run`); an unfinished run is continued only with ``resume``
(from its last completed epoch) or started over with ``overwrite``. Files
that are not run files are left alone. This module imports no TensorFlow.
"""

import csv
import io
import json
import os
import shutil
import tempfile

from mobileone_tf import fileio
from mobileone_tf.api_export import mobileone_export

SUMMARY = "summary.json"
LOG = "log.csv"
BACKUP = "backup"
RUN_FILES = (SUMMARY, "fused.keras", "fused.weights.h5", "best.weights.h5",
             "last.weights.h5", LOG, BACKUP, "logs")
"""Everything a run writes into its ``output_dir`` (files and folders)."""

_TRASH_PREFIX = ".overwrite-"

NEW, UNFINISHED, FINISHED = "new", "unfinished", "finished"


def run_state(output_dir) -> str:
    """``"new"`` (no run files; the folder may not exist), ``"unfinished"``
    or ``"finished"`` (``summary.json`` present)."""
    output_dir = os.fspath(output_dir)
    if os.path.exists(os.path.join(output_dir, SUMMARY)):
        return FINISHED
    if any(os.path.exists(os.path.join(output_dir, n)) for n in RUN_FILES):
        return UNFINISHED
    return NEW


def backup_epoch(output_dir) -> int:
    """Epochs completed according to the ``BackupAndRestore`` backup (0: none)."""
    path = os.path.join(os.fspath(output_dir), BACKUP, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    try:
        with open(path) as f:
            return int(json.load(f)["epoch"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable backup metadata ({e}); pass --overwrite "
                         "to start the run over") from None


@mobileone_export("mobileone_tf.training")
def check_output_dir(output_dir, overwrite=False, resume=False) -> str:
    """Decides what a new run may do with ``output_dir``; changes nothing.

    Returns:
        ``"new"`` (start), ``"overwrite"`` (remove the old run's files, then
        start) or ``"resume"`` (continue the unfinished run).

    Raises:
        ValueError: both ``overwrite`` and ``resume``.
        FileExistsError: a finished run without ``overwrite``; an unfinished
            run without ``resume`` or ``overwrite``; ``output_dir`` is a file.
    """
    output_dir = os.fspath(output_dir)
    if overwrite and resume:
        raise ValueError("--overwrite and --resume exclude each other: --resume continues "
                         "an unfinished run, --overwrite starts over")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"--output_dir {output_dir} is a file, not a folder")
    state = run_state(output_dir)
    if state == NEW:
        return "new"
    if overwrite:
        return "overwrite"
    if state == FINISHED:
        raise FileExistsError(
            f"{output_dir} holds a finished run ({SUMMARY}); it is left untouched: pass "
            "--overwrite to start over (its run files are removed first) or choose "
            "another --output_dir" + (" (--resume only continues an unfinished run)"
                                     if resume else ""))
    if resume:
        return "resume"
    raise FileExistsError(
        f"{output_dir} holds an unfinished run ({backup_epoch(output_dir)} epochs "
        "completed, no summary.json): pass --resume to continue it or --overwrite to "
        "start over")


@mobileone_export("mobileone_tf.training")
def clear_run(output_dir):
    """Removes the run files (:data:`RUN_FILES`) of ``output_dir``, nothing else.

    They are first moved (``os.rename``, ``summary.json`` first) into one
    hidden folder inside ``output_dir``, which is then deleted: a failure
    part-way leaves no ``summary.json`` (so no run that looks finished) and
    never mixes with the files of the next run, which starts only after the
    move succeeded; a leftover hidden folder is deleted on the next call.
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(_TRASH_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    trash = tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=output_dir)
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.lexists(path):
            os.rename(path, os.path.join(trash, name))
    shutil.rmtree(trash)


def read_log(output_dir):
    """Rows of ``log.csv`` (list of dicts; empty when there is none)."""
    path = os.path.join(os.fspath(output_dir), LOG)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_log(output_dir, epochs: int):
    """Keeps the rows of epochs ``0 .. epochs - 1`` of ``log.csv`` (a resumed
    run re-runs the epochs after its last backup: their old rows would be
    duplicates). Rewrites the file atomically; returns the kept rows."""
    path = os.path.join(os.fspath(output_dir), LOG)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = list(reader)
    kept = [r for r in rows if r.get("epoch", "").strip().isdigit()
            and int(r["epoch"]) < epochs]
    if not kept:
        os.remove(path)  # the next CSVLogger writes a header for its own columns
    elif len(kept) != len(rows):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)  # csv.excel, as CSVLogger
        writer.writeheader()
        writer.writerows(kept)
        fileio.atomic_write(path, buf.getvalue())
    return kept
