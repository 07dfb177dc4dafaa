"""Where downloaded files come from and go: the Keras cache, a local mirror
folder (:data:`ENV_MIRROR`), and ``keras.utils.get_file``.

Used for Apple's checkpoints (:mod:`mobileone_tf.weights.pretrained`) and the
ImageNet class index (:mod:`mobileone_tf.models.labels`). Every lookup goes
cache -> mirror -> download:

1. the Keras cache: ``$KERAS_HOME`` or ``~/.keras`` (``/tmp/.keras`` when that
   is not writable), as ``keras.utils.get_file`` computes it; our files live
   in :data:`CACHE_SUBDIR`;
2. the folder named by ``$MOBILEONE_TF_CHECKPOINTS`` holding files under
   their original names (hash-checked where the hash is known,
   :func:`mirror_file`);
3. :func:`download_file` (``keras.utils.get_file``; Keras is imported only
   then).
"""

from __future__ import annotations

import hashlib
import os

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.weights")("ENV_MIRROR")
ENV_MIRROR = "MOBILEONE_TF_CHECKPOINTS"
CACHE_SUBDIR = os.path.join("models", "mobileone_tf")


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


def cache_dir(subdir: str = CACHE_SUBDIR) -> str:
    """``keras_cache_dir()/subdir``, created if needed."""
    path = os.path.join(keras_cache_dir(), subdir)
    os.makedirs(path, exist_ok=True)
    return path


def file_hash(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``"sha256"`` or ``"md5"``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@mobileone_export("mobileone_tf.weights")
def sha256sum(path) -> str:
    """sha256 hex digest of a file."""
    return file_hash(path, "sha256")


def mirror_dir() -> str | None:
    """The mirror folder (``$MOBILEONE_TF_CHECKPOINTS``), or None when unset."""
    return os.environ.get(ENV_MIRROR) or None


def mirror_file(name: str, sha256: str | None = None, url: str | None = None) -> str | None:
    """``name`` in the mirror folder, or None when there is none.

    Raises:
        ValueError: the file's sha256 differs from ``sha256`` (the message
            names the file, both digests and ``url`` for a fresh copy).
    """
    folder = mirror_dir()
    if not folder:
        return None
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    if sha256:
        digest = sha256sum(path)
        if digest != sha256:
            raise ValueError(f"{path}: sha256 {digest} does not match the known {sha256} "
                             f"of {name}" + (f"; replace it with a fresh copy of {url}"
                                             if url else ""))
    return path


def download_file(name: str, url: str, file_hash: str | None = None,
                  hash_algorithm: str = "sha256", cache_subdir: str = CACHE_SUBDIR) -> str:
    """Downloads ``url`` into ``keras_cache_dir()/cache_subdir/name`` with
    ``keras.utils.get_file`` (which reuses a cached file with the right hash).

    Raises:
        Exception: whatever ``get_file`` raises offline, on an HTTP error or a
            hash mismatch (callers turn it into FileNotFoundError with advice).
    """
    import keras
    return keras.utils.get_file(name, url, file_hash=file_hash, hash_algorithm=hash_algorithm,
                                cache_subdir=cache_subdir, cache_dir=keras_cache_dir())
