"""``weights="imagenet"``: finding, verifying, porting and caching Apple's
released checkpoints, and the ImageNet class index.

Resolution order for a variant and form (first hit wins):

1. the Keras cache: ``$KERAS_HOME/models/mobileone_tf/mobileone_{v}_{form}.weights.h5``
   (ported by an earlier call);
2. a local mirror folder named by the ``MOBILEONE_TF_CHECKPOINTS`` environment
   variable, holding Apple's file names (``mobileone_s0.pth.tar``,
   ``mobileone_s0_unfused.pth.tar``);
3. a download of the official checkpoint with ``keras.utils.get_file``.

The checkpoint found is ported once (:mod:`mobileone_tf.porting`) and cached.
A branched (train-time) model prefers Apple's unfused checkpoint and falls
back to the fused one, which then initialises the branches exactly
(:meth:`mobileone_tf.layers.MobileOneBlock.load_fused`); that is an
initialisation with identical outputs, not Apple's training-time weights.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os

from mobileone_tf import variants

MIRROR_ENV = "MOBILEONE_TF_CHECKPOINTS"
_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "checkpoints", "manifest.json")
KERAS_CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/"
                         "data/imagenet_class_index.json")
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def keras_cache_dir() -> str:
    """Keras' cache folder: ``$KERAS_HOME`` or ``~/.keras``, else ``/tmp/.keras``
    when that is not writable (the rule ``keras.utils.get_file`` follows)."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        os.makedirs(base, exist_ok=True)
        if not os.access(base, os.W_OK):
            raise OSError
    except OSError:
        base = os.path.join("/tmp", ".keras")
        os.makedirs(base, exist_ok=True)
    return base


def _cache_subdir() -> str:
    path = os.path.join(keras_cache_dir(), "models", "mobileone_tf")
    os.makedirs(path, exist_ok=True)
    return path


def manifest() -> list:
    """The known official checkpoints (``checkpoints/manifest.json``)."""
    with open(_MANIFEST) as f:
        return json.load(f)["checkpoints"]


def _entry(variant, form):
    for row in manifest():
        if row["variant"] == variant and row["form"] == form:
            return row
    raise KeyError((variant, form))


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path, row):
    if row.get("sha256") and sha256(path) != row["sha256"]:
        raise ValueError(f"{path} has the wrong sha256 for {row['file']} (expected "
                         f"{row['sha256']}): a corrupt or different file; replace it with "
                         f"the one from {row['url']}")


def imagenet_weights_path(variant, fused: bool = False) -> str:
    """Path of the ported ImageNet ``.weights.h5`` for a variant, resolving,
    verifying, porting and caching as described in the module docstring.

    Args:
        variant: ``"s0"`` ... ``"s4"``.
        fused: the form the caller will load (only decides which of Apple's
            checkpoints is preferred; both forms load into both models).

    Returns:
        Path of a ``.weights.h5`` written by
        :func:`mobileone_tf.porting.write_weights_h5`.

    Raises:
        FileNotFoundError: offline with nothing cached or mirrored; the message
            names the file, its URL and where to put it.
        ValueError: a mirrored file with the wrong sha256 or content.
    """
    from mobileone_tf import porting
    v = variants.get_variant(variant).name
    forms = ["fused", "branched"] if fused else ["branched", "fused"]
    cache = _cache_subdir()
    for form in forms:  # 1. the Keras cache
        cached = os.path.join(cache, f"mobileone_{v}_{form}.weights.h5")
        if os.path.isfile(cached):
            return cached
    mirror = os.environ.get(MIRROR_ENV)
    found = None
    if mirror:  # 2. the local mirror
        for form in forms:
            row = _entry(v, form)
            candidate = os.path.join(mirror, row["file"])
            if os.path.isfile(candidate):
                _verify(candidate, row)
                found = (candidate, row)
                break
    if found is None:  # 3. download
        errors = []
        import keras
        for form in forms:
            row = _entry(v, form)
            try:
                path = keras.utils.get_file(
                    row["file"], row["url"], file_hash=row.get("sha256"),
                    cache_dir=keras_cache_dir(), cache_subdir=os.path.join("models", "mobileone_tf"))
                found = (path, row)
                break
            except Exception as e:  # network errors come in many types
                errors.append(f"{row['url']}: {type(e).__name__}: {e}")
        if found is None:
            row = _entry(v, forms[0])
            raise FileNotFoundError(
                f"No ImageNet weights for MobileOne-{v.upper()}: nothing in the Keras cache "
                f"({cache}), {MIRROR_ENV} is "
                + (f"'{mirror}' without {row['file']}" if mirror else "not set")
                + f", and the download failed ({'; '.join(errors)}). Download {row['file']} "
                f"from {row['url']} into a folder and set {MIRROR_ENV} to that folder, or "
                f"put the file in {cache}.")
    path, row = found
    port = porting.port_checkpoint(path, variant=v)
    cached = os.path.join(cache, f"mobileone_{v}_{port.form}.weights.h5")
    porting.write_weights_h5(port.state, cached, v, port.form, source=row["url"],
                             overwrite=True)
    return cached


# ---------------------------------------------------------------------------
# ImageNet class index
# ---------------------------------------------------------------------------
_CLASS_INDEX = None


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()


def _from_keras_json(path):
    with open(path) as f:
        index = json.load(f)
    return [tuple(index[str(i)]) for i in range(1000)]


def _from_csv(path):
    """``index,synset,name`` rows; names become Keras-style (first synonym,
    spaces as underscores)."""
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = row["name"].split(",")[0].strip().replace(" ", "_")
            rows[int(row["index"])] = (row["synset"], name)
    if sorted(rows) != list(range(1000)):
        raise ValueError(f"{path} does not list the 1000 ImageNet classes 0..999")
    return [rows[i] for i in range(1000)]


def imagenet_class_index() -> list:
    """The 1000 ImageNet-1k classes as ``(synset, name)`` in index order.

    Keras' own class index (``imagenet_class_index.json``, the file
    ``keras.applications`` uses) from the Keras cache; else the mirror folder
    (``$MOBILEONE_TF_CHECKPOINTS``) holding ``imagenet_class_index.json`` or
    ``imagenet_classes.csv`` (``index,synset,name``); else Keras' download.

    Raises:
        FileNotFoundError: none of them is available (offline).
    """
    global _CLASS_INDEX
    if _CLASS_INDEX is not None:
        return _CLASS_INDEX
    keras_json = os.path.join(keras_cache_dir(), "models", "imagenet_class_index.json")
    mirror = os.environ.get(MIRROR_ENV)
    if os.path.isfile(keras_json) and _md5(keras_json) == KERAS_CLASS_INDEX_MD5:
        _CLASS_INDEX = _from_keras_json(keras_json)
    elif mirror and os.path.isfile(os.path.join(mirror, "imagenet_class_index.json")):
        _CLASS_INDEX = _from_keras_json(os.path.join(mirror, "imagenet_class_index.json"))
    elif mirror and os.path.isfile(os.path.join(mirror, "imagenet_classes.csv")):
        _CLASS_INDEX = _from_csv(os.path.join(mirror, "imagenet_classes.csv"))
    else:
        import keras
        try:
            path = keras.utils.get_file(
                "imagenet_class_index.json", KERAS_CLASS_INDEX_URL, cache_subdir="models",
                file_hash=KERAS_CLASS_INDEX_MD5, cache_dir=keras_cache_dir())
        except Exception as e:
            raise FileNotFoundError(
                "No ImageNet class index: not in the Keras cache, no imagenet_class_index.json "
                f"or imagenet_classes.csv in ${MIRROR_ENV}, and the download of "
                f"{KERAS_CLASS_INDEX_URL} failed ({type(e).__name__}: {e}).") from e
        _CLASS_INDEX = _from_keras_json(path)
    return _CLASS_INDEX


def reset_class_index_cache():
    """Forgets the loaded class index (tests, or after changing the mirror)."""
    global _CLASS_INDEX
    _CLASS_INDEX = None
