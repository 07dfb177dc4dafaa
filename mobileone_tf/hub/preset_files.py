"""Checks a local KerasHub preset directory before KerasHub reads it.

KerasHub's ``from_preset`` loads a task whose ``task.weights.h5`` is missing
with a randomly initialised head and no warning, surfaces raw errors for a
missing ``model.weights.h5`` (``model.weights.json doesn't exist``) or a
truncated ``config.json`` (a bare ``JSONDecodeError``), and hands every
configuration entry to the classes it builds, so a ``"weights"`` entry naming
a file outside the directory gets that file opened.
:func:`check_preset` refuses all of these with one line naming the preset
file (and key), without opening any file outside the directory.

No TensorFlow, Keras or KerasHub here (the loader is
:func:`mobileone_tf.hub.load_preset`).
"""

from __future__ import annotations

import json
import os

from mobileone_tf.api_export import mobileone_export

CONFIG = "config.json"
TASK = "task.json"
MODEL_WEIGHTS = "model.weights.h5"
SHARDED_WEIGHTS = "model.weights.json"
TASK_WEIGHTS = "task.weights.h5"
TASK_CONFIGS = ("preprocessor.json", "image_converter.json", "audio_converter.json",
                "video_converter.json", "tokenizer.json")
"""Configuration files a task load may read besides ``task.json`` (each checked
when present)."""

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_JSON_BYTES = 64 << 20
"""A preset's JSON files are small; anything larger is refused unread."""


@mobileone_export("mobileone_tf.hub")
def check_preset(preset, backbone_only=False):
    """Validates a local preset directory (``save_to_preset`` layout).

    Checked, in order: ``preset`` is a directory; ``config.json`` (and, for a
    task load, ``task.json`` and the converter/preprocessor files present)
    parses as a JSON object with a string ``registered_name`` and a
    ``config`` object; the backbone's weights (``model.weights.h5``, or a
    sharded ``model.weights.json`` and its shards) and, for a task load,
    ``task.weights.h5`` are present HDF5 files; every string under a key
    ending in ``weights`` (or in ``weight_map``) in those JSON files is the
    plain name of a file inside ``preset`` (no path, no ``..``). Every file
    read must lie inside ``preset`` (links out are refused unread).

    Args:
        preset: local preset directory (``str`` or path).
        backbone_only: check only what a backbone load reads
            (``config.json`` and the backbone weights).

    Returns:
        ``{"config": dict, "task": dict or None}``: the parsed ``config.json``
        and ``task.json`` (``None`` without one or with ``backbone_only``).

    Raises:
        FileNotFoundError: ``preset`` is not a directory, or a required file
            (``config.json``, ``model.weights.h5``, ``task.weights.h5`` of a
            task, a shard) is missing; the message names it.
        ValueError: a JSON file that does not parse or is not a Keras object
            config, a weights file that is not HDF5, a file that links
            outside the directory, or a weights entry that is not a plain
            file name inside it (names the file and the key).
    """
    preset = os.fspath(preset)
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"{preset}: not a preset directory (load_preset reads local "
                                "directories written by save_to_preset / make_preset)")
    root = os.path.realpath(preset)
    config = _keras_object(preset, root, CONFIG)
    found = {CONFIG: config}
    task = None
    if not backbone_only and os.path.lexists(os.path.join(preset, TASK)):
        task = found[TASK] = _keras_object(preset, root, TASK)
        for name in TASK_CONFIGS:
            if os.path.lexists(os.path.join(preset, name)):
                found[name] = _keras_object(preset, root, name)
    for name, value in found.items():
        _check_weight_names(preset, root, name, value)
    _check_backbone_weights(preset, root)
    if task is not None:
        _hdf5(preset, root, TASK_WEIGHTS, missing=(
            "without it the task's head, e.g. a classifier's 'predictions' layer, would be "
            "randomly initialised; pass backbone_only=True to load only the backbone"))
    return {"config": config, "task": task}


def _inside(preset, root, name):
    """``preset/name`` after checking it is a plain file name whose file (links
    resolved) lies inside the directory; nothing is opened."""
    path = os.path.join(preset, name)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        raise ValueError(f"{path} leads outside the preset directory; refusing to read it")
    return path


def _read_json(preset, root, name):
    path = _inside(preset, root, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the preset directory")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(f"{path}: over {MAX_JSON_BYTES >> 20} MB, not a preset JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as e:  # position only: the file's text is not echoed
        raise ValueError(f"{path}: not valid JSON ({e.msg}: line {e.lineno} column "
                         f"{e.colno}; truncated?)") from None


def _keras_object(preset, root, name):
    value = _read_json(preset, root, name)
    if not (isinstance(value, dict) and isinstance(value.get("registered_name"), str)
            and isinstance(value.get("config"), dict)):
        raise ValueError(f"{os.path.join(preset, name)}: not a serialized Keras object "
                         "(a JSON object with 'registered_name' and 'config')")
    return value


def _weight_entries(value, key=""):
    """``(key path, string)`` for every string under a key ending in
    ``weights`` or in ``weight_map``."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{key}.{k}" if key else str(k)
            if str(k).lower().endswith("weights") or k == "weight_map":
                yield from _strings(v, path)
            else:
                yield from _weight_entries(v, path)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _weight_entries(v, f"{key}[{i}]")


def _strings(value, key):
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def _plain_name(name):
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and ":" not in name and not os.path.isabs(name) and name.strip() == name)


def _check_weight_names(preset, root, file_name, value):
    where = os.path.join(preset, file_name)
    for key, name in _weight_entries(value):
        shown = name if len(name) <= 80 else name[:77] + "..."
        if not _plain_name(name):
            raise ValueError(f"{where}: key {key!r} names {shown!r}: a weights file of a "
                             "preset must be a plain file name inside the preset directory "
                             "(no path, no '..')")
        path = _inside(preset, root, name)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: key {key!r} names {shown!r}, which is not a file of "
                             "the preset directory")


def _check_backbone_weights(preset, root):
    if os.path.lexists(os.path.join(preset, MODEL_WEIGHTS)) or not os.path.lexists(
            os.path.join(preset, SHARDED_WEIGHTS)):
        _hdf5(preset, root, MODEL_WEIGHTS, missing="the backbone's weights")
        return
    index = _read_json(preset, root, SHARDED_WEIGHTS)
    shards = dict(_weight_entries(index)) if isinstance(index, dict) else {}
    if not shards:
        raise ValueError(f"{os.path.join(preset, SHARDED_WEIGHTS)}: no 'weight_map' of shard "
                         "files")
    _check_weight_names(preset, root, SHARDED_WEIGHTS, index)
    for shard in sorted(set(shards.values())):
        _hdf5(preset, root, shard, missing=f"a shard listed in {SHARDED_WEIGHTS}")


def _hdf5(preset, root, name, missing):
    path = _inside(preset, root, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the preset directory ({missing})")
    with open(path, "rb") as f:
        head = f.read(len(HDF5_SIGNATURE))
    if head != HDF5_SIGNATURE:
        raise ValueError(f"{path}: not an HDF5 weights file (empty or damaged)")
