"""ImageNet-1k class names: the class index, synset lookup and
``decode_predictions`` (``keras.applications`` semantics).

The index is Keras' own ``imagenet_class_index.json`` (the file
``keras.applications`` ``decode_predictions`` uses: index -> ``[synset,
name]``, sorted-synset order as torchvision/timm), found through
:mod:`mobileone_tf.weights.download`. Imports neither TensorFlow nor Keras
(Keras only for a download).
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from mobileone_tf import fileio
from mobileone_tf.weights import download

NUM_CLASSES = 1000
# Keras' own ImageNet class index (keras.applications.imagenet_utils).
CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/"
                   "data/imagenet_class_index.json")
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
CLASS_INDEX_FILE = "imagenet_class_index.json"
CLASS_CSV_FILE = "imagenet_classes.csv"
OWN_CLASS_INDEX_FILE = "mobileone_tf_imagenet_class_index.json"
"""mobileone_tf's cached copy of an index read from the mirror (never under
Keras' file name: Keras deletes a cached file whose hash differs)."""


def _index_from_json(path) -> list:
    try:
        with open(path) as f:
            data = json.load(f)
        index = [tuple(data[str(i)]) for i in range(len(data))]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an ImageNet class index "
                         f"({{\"0\": [synset, name], ...}}): {e}") from None
    if len(index) != NUM_CLASSES or any(len(entry) != 2 for entry in index):
        raise ValueError(f"{path}: expected {NUM_CLASSES} [synset, name] entries, "
                         f"found {len(index)}")
    return index


def _index_from_csv(path) -> list:
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                name = row["name"].split(",")[0].strip().replace(" ", "_")
                rows[int(row["index"])] = (row["synset"], name)
            except (KeyError, ValueError, AttributeError, TypeError):
                raise ValueError(f"{path}: expected the columns index,synset,name; "
                                 f"bad row {row}") from None
    if sorted(rows) != list(range(NUM_CLASSES)):
        raise ValueError(f"{path}: expected indices 0..{NUM_CLASSES - 1} "
                         "(columns index,synset,name)")
    return [rows[i] for i in range(NUM_CLASSES)]


def imagenet_class_index() -> list:
    """The 1000 ImageNet-1k classes as ``(synset, name)`` in index order.

    Resolved in this order: Keras' cached ``models/imagenet_class_index.json``
    (md5-checked); mobileone_tf's own cached copy
    (:data:`OWN_CLASS_INDEX_FILE`, from an earlier mirror read); the mirror
    folder ``$MOBILEONE_TF_CHECKPOINTS`` (``imagenet_class_index.json``, or
    ``imagenet_classes.csv`` with ``index,synset,name``: the name's first
    comma-separated part with spaces as underscores, Keras style), cached
    under mobileone_tf's own name; a download with ``keras.utils.get_file``.

    Raises:
        FileNotFoundError: none of them is available (names the URL and the
            mirror files that would do).
        ValueError: a mirror file that is not a 1000-class index.
    """
    keras_file = os.path.join(download.keras_cache_dir(), "models", CLASS_INDEX_FILE)
    if os.path.isfile(keras_file) and download.file_hash(keras_file, "md5") == CLASS_INDEX_MD5:
        return _index_from_json(keras_file)
    own = os.path.join(download.cache_dir(), OWN_CLASS_INDEX_FILE)
    if os.path.isfile(own):
        return _index_from_json(own)
    mirror_json, mirror_csv = (download.mirror_file(CLASS_INDEX_FILE),
                               download.mirror_file(CLASS_CSV_FILE))
    if mirror_json or mirror_csv:
        index = _index_from_json(mirror_json) if mirror_json else _index_from_csv(mirror_csv)
        fileio.write_json({str(i): list(e) for i, e in enumerate(index)}, own)
        return index
    try:
        path = download.download_file(CLASS_INDEX_FILE, CLASS_INDEX_URL,
                                      file_hash=CLASS_INDEX_MD5, hash_algorithm="md5",
                                      cache_subdir="models")
    except Exception as e:  # offline, HTTP error, hash mismatch
        raise FileNotFoundError(
            f"ImageNet class names unavailable: not cached and the download of "
            f"{CLASS_INDEX_URL} failed ({e}). Put {CLASS_INDEX_FILE} (that file) or "
            f"{CLASS_CSV_FILE} (index,synset,name) in the folder named by "
            f"{download.ENV_MIRROR} (currently {download.mirror_dir() or 'unset'}).") from e
    return _index_from_json(path)


def imagenet_synset_to_index() -> dict:
    """``{synset: ImageNet-1k index}`` (e.g. ``"n01440764": 0``) from
    :func:`imagenet_class_index`."""
    return {synset: i for i, (synset, _) in enumerate(imagenet_class_index())}


def decode_predictions(preds, top: int = 5) -> list:
    """Decodes ImageNet predictions like ``keras.applications``
    ``imagenet_utils.decode_predictions``.

    Args:
        preds: ``(batch, 1000)`` probabilities or logits (numpy array or
            tensor).
        top: how many classes per image (>= 1).

    Returns:
        A list (per image) of ``(synset, class_name, score)`` tuples, highest
        score first (``score`` a Python float).

    Raises:
        ValueError: ``preds`` is not ``(batch, 1000)``, or ``top`` < 1.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError("`decode_predictions` expects a batch of predictions "
                         f"(i.e. a 2D array of shape (samples, {NUM_CLASSES})). "
                         f"Received array with shape: {preds.shape}")
    if int(top) < 1:
        raise ValueError(f"`top` must be >= 1; got {top}")
    index = imagenet_class_index()
    results = []
    for row in preds:
        best = row.argsort()[-int(top):][::-1]
        result = [(index[i][0], index[i][1], float(row[i])) for i in best]
        result.sort(key=lambda item: item[2], reverse=True)
        results.append(result)
    return results
