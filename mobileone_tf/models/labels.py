"""ImageNet-1k class names: the class index, synset lookup and
``decode_predictions`` (``keras.applications`` semantics).

The index ships with the package (``imagenet_class_index.json``, Keras'
format: ``{"0": [synset, name], ...}``, sorted-synset order as
torchvision/timm/Keras), so it works offline. It was generated from timm's
ImageNet data files (``timm/data/_info/imagenet_synsets.txt`` and
``imagenet_synset_to_lemma.txt``, Apache-2.0; the names are WordNet's): each
name is the synset's first lemma with spaces as underscores, as Keras names
them. Imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from mobileone_tf.api_export import mobileone_export

NUM_CLASSES = 1000
CLASS_INDEX_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "imagenet_class_index.json")


@functools.lru_cache(maxsize=1)
def _index() -> tuple:
    with open(CLASS_INDEX_FILE) as f:
        data = json.load(f)
    index = tuple(tuple(data[str(i)]) for i in range(NUM_CLASSES))
    if len(data) != NUM_CLASSES or any(len(entry) != 2 for entry in index):
        raise ValueError(f"{CLASS_INDEX_FILE}: expected {NUM_CLASSES} [synset, name] entries")
    return index


@mobileone_export("mobileone_tf.models")
def imagenet_class_index() -> list:
    """The 1000 ImageNet-1k classes as ``(synset, name)`` tuples in index
    order, e.g. ``("n01440764", "tench")`` for class 0 (the packaged index,
    see the module docstring)."""
    return list(_index())


@mobileone_export("mobileone_tf.models")
def imagenet_synset_to_index() -> dict:
    """``{synset: ImageNet-1k index}`` (e.g. ``"n01440764": 0``) from
    :func:`imagenet_class_index`."""
    return {synset: i for i, (synset, _) in enumerate(imagenet_class_index())}


@mobileone_export("mobileone_tf", "mobileone_tf.models")
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
