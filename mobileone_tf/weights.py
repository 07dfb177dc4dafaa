"""``weights="imagenet"``: find, verify, port and cache Apple's released weights.

Apple publishes (ml-mobileone README) two PyTorch checkpoints per variant at
``https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/``:
``mobileone_sN.pth.tar`` (fused, inference form) and
``mobileone_sN_unfused.pth.tar`` (branched, training-time form).
:data:`CHECKPOINTS` lists them (also in ``checkpoints/manifest.json``).

:func:`imagenet_weights_path` resolves, in this order, for each candidate
checkpoint (a branched model prefers the unfused checkpoint, a fused model
the fused one; either can serve the other form):

1. the Keras cache: ``$KERAS_HOME/models/mobileone_tf/<name>.weights.h5``,
   ported by an earlier call (``KERAS_HOME`` or ``~/.keras``, or
   ``/tmp/.keras`` when that is not writable, as ``keras.utils.get_file``);
2. a local mirror folder named by the environment variable
   ``MOBILEONE_TF_CHECKPOINTS`` holding files under Apple's names (their
   sha256 is checked where :data:`CHECKPOINTS` knows it);
3. a download with ``keras.utils.get_file``.

The checkpoint is ported once (:mod:`mobileone_tf.porting`) and the
``.weights.h5`` cached atomically. A fused checkpoint loaded into a branched
model is an exact-output *initialisation* (fused kernel in the first branch,
see :func:`mobileone_tf.layers.unfuse_block_state`), not Apple's training-time
weights.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os

from mobileone_tf import porting, variants

ENV_MIRROR = "MOBILEONE_TF_CHECKPOINTS"
BASE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/"
CACHE_SUBDIR = os.path.join("models", "mobileone_tf")

# Keras' own ImageNet class index (keras/src/applications/imagenet_utils.py).
CLASS_INDEX_URL = ("https://storage.googleapis.com/download.tensorflow.org/"
                   "data/imagenet_class_index.json")
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"
CLASS_INDEX_FILE = "imagenet_class_index.json"
_OWN_CLASS_INDEX_FILE = "mobileone_tf_imagenet_class_index.json"

_KNOWN_SHA256 = {
    "mobileone_s0.pth.tar":
        "968b1f851cee94b5516f68b50c710a74a6d60d5b1759bbf53528b7b860cc6a97",
}


def _entry(variant, form):
    file = f"mobileone_{variant}{'' if form == 'fused' else '_unfused'}.pth.tar"
    return {"variant": variant, "form": form, "file": file, "url": BASE_URL + file,
            "sha256": _KNOWN_SHA256.get(file)}


CHECKPOINTS = [_entry(v, f) for v in variants.VARIANTS for f in ("fused", "branched")]
"""Apple's official ImageNet-1k checkpoints: dicts with ``variant``, ``form``
(``"fused"``/``"branched"``), ``file``, ``url`` and ``sha256`` (None where
unknown). Mirrored in ``checkpoints/manifest.json``."""


def keras_cache_dir() -> str:
    """Keras' cache root as ``keras.utils.get_file`` computes it."""
    base = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return base


def _cache_dir() -> str:
    path = os.path.join(keras_cache_dir(), CACHE_SUBDIR)
    os.makedirs(path, exist_ok=True)
    return path


def sha256sum(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _candidates(variant, fused):
    order = ("fused", "branched") if fused else ("branched", "fused")
    return [e for form in order for e in CHECKPOINTS
            if e["variant"] == variant and e["form"] == form]


def _ported_name(entry) -> str:
    return entry["file"][: -len(".pth.tar")] + ".weights.h5"


def _download(entry, cache_dir) -> str:
    """Downloads a checkpoint with ``keras.utils.get_file`` (tests replace this)."""
    import keras
    return keras.utils.get_file(entry["file"], entry["url"], file_hash=entry["sha256"],
                                hash_algorithm="sha256", cache_subdir=CACHE_SUBDIR,
                                cache_dir=cache_dir)


def _port_to_cache(entry, checkpoint) -> str:
    result = porting.port_checkpoint(checkpoint, variant=entry["variant"])
    if result.form != entry["form"]:
        raise ValueError(f"{checkpoint}: expected the {entry['form']} form, found "
                         f"{result.form}")
    out = os.path.join(_cache_dir(), _ported_name(entry))
    return porting.write_weights_h5(result.state, out, entry["variant"], result.form,
                                    source=entry["url"])


def imagenet_weights_path(variant, fused: bool = False) -> str:
    """Path of the ported ImageNet ``.weights.h5`` for a variant (see module doc).

    Args:
        variant: ``"s0"`` ... ``"s4"``.
        fused: whether the model that will load it is the fused form (prefers
            the fused checkpoint) or the branched form (prefers unfused).

    Returns:
        Path of a ``.weights.h5`` written by
        :func:`mobileone_tf.porting.write_weights_h5` in the Keras cache.

    Raises:
        FileNotFoundError: nothing cached, nothing in the mirror, and the
            download failed (the message names the URL, the file name and
            the folder to put it in).
        ValueError: a mirrored file with the wrong sha256, or that does not
            port.
    """
    v = variants.get_variant(variant).name
    entries = _candidates(v, fused)
    cache = _cache_dir()
    for entry in entries:  # 1. Keras cache
        path = os.path.join(cache, _ported_name(entry))
        if os.path.isfile(path):
            return path
    mirror = os.environ.get(ENV_MIRROR)
    if mirror:  # 2. local mirror
        for entry in entries:
            src = os.path.join(mirror, entry["file"])
            if os.path.isfile(src):
                if entry["sha256"]:
                    digest = sha256sum(src)
                    if digest != entry["sha256"]:
                        raise ValueError(
                            f"{src}: sha256 {digest} does not match the known "
                            f"{entry['sha256']} of Apple's {entry['file']}; "
                            f"replace it with a fresh copy of {entry['url']}")
                return _port_to_cache(entry, src)
    errors = []
    for entry in entries:  # 3. download
        try:
            src = _download(entry, keras_cache_dir())
        except Exception as e:  # offline, HTTP error, hash mismatch
            errors.append(f"{entry['url']}: {e}")
            continue
        return _port_to_cache(entry, src)
    first = entries[0]
    raise FileNotFoundError(
        f"ImageNet weights for MobileOne-{v.upper()} are not cached and could not be "
        f"downloaded ({'; '.join(errors)}). Download {first['url']}"
        + (f" (or {entries[1]['url']})" if len(entries) > 1 else "")
        + f" and put it, under that file name, in the folder named by the "
        f"environment variable {ENV_MIRROR} (currently "
        f"{mirror or 'unset'}), or pass weights=PATH to the file.")


# ---------------------------------------------------------------------------
# ImageNet class names
# ---------------------------------------------------------------------------
def _md5(path) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _index_from_json(path) -> list:
    with open(path) as f:
        data = json.load(f)
    index = [tuple(data[str(i)]) for i in range(len(data))]
    if len(index) != 1000:
        raise ValueError(f"{path}: expected 1000 classes, found {len(index)}")
    return index


def _index_from_csv(path) -> list:
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            name = row["name"].split(",")[0].strip().replace(" ", "_")
            rows[int(row["index"])] = (row["synset"], name)
    if sorted(rows) != list(range(1000)):
        raise ValueError(f"{path}: expected indices 0..999 (columns index,synset,name)")
    return [rows[i] for i in range(1000)]


def imagenet_class_index() -> list:
    """The 1000 ImageNet-1k classes as ``(synset, name)`` in index order.

    Keras' own class index (``imagenet_class_index.json``, as
    ``keras.applications`` ``decode_predictions``), resolved: Keras' cached
    file (md5-checked), then mobileone_tf's own cached copy from an earlier
    mirror read, then the mirror folder ``$MOBILEONE_TF_CHECKPOINTS``
    (``imagenet_class_index.json``, or ``imagenet_classes.csv`` with
    ``index,synset,name``: the name's first comma-separated part with spaces
    as underscores, Keras style), then a download with
    ``keras.utils.get_file``. A csv-derived index is cached under
    mobileone_tf's own name, never under Keras' (Keras deletes a cached file
    whose hash differs).

    Raises:
        FileNotFoundError: none of them is available (names the URL and the
            mirror files that would do).
    """
    keras_file = os.path.join(keras_cache_dir(), "models", CLASS_INDEX_FILE)
    if os.path.isfile(keras_file) and _md5(keras_file) == CLASS_INDEX_MD5:
        return _index_from_json(keras_file)
    own = os.path.join(_cache_dir(), _OWN_CLASS_INDEX_FILE)
    if os.path.isfile(own):
        return _index_from_json(own)
    mirror = os.environ.get(ENV_MIRROR)
    if mirror:
        index = None
        if os.path.isfile(os.path.join(mirror, CLASS_INDEX_FILE)):
            index = _index_from_json(os.path.join(mirror, CLASS_INDEX_FILE))
        elif os.path.isfile(os.path.join(mirror, "imagenet_classes.csv")):
            index = _index_from_csv(os.path.join(mirror, "imagenet_classes.csv"))
        if index is not None:
            _write_json_atomic(own, {str(i): list(e) for i, e in enumerate(index)})
            return index
    try:
        import keras
        path = keras.utils.get_file(CLASS_INDEX_FILE, CLASS_INDEX_URL,
                                    cache_subdir="models", file_hash=CLASS_INDEX_MD5,
                                    cache_dir=keras_cache_dir())
        return _index_from_json(path)
    except Exception as e:
        raise FileNotFoundError(
            f"ImageNet class names unavailable: not cached and the download of "
            f"{CLASS_INDEX_URL} failed ({e}). Put {CLASS_INDEX_FILE} (that file) or "
            f"imagenet_classes.csv (index,synset,name) in the folder named by "
            f"{ENV_MIRROR} (currently {mirror or 'unset'}).") from e


def _write_json_atomic(path, data):
    import tempfile
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
