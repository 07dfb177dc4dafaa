"""Reading image files, and naming the ones that cannot be read.

Two decoders, one per execution model, and both are here:

* :func:`open_image` -- THE function that reads an image file in Python
  (PIL). Every eager image read of the package goes through it: the
  torchvision-equal eval transform, :func:`mobileone_tf.data.load_images`,
  ``eval_dataset``'s default PIL backend, ``scripts/classify.py``,
  ``scripts/evaluate.py``, export calibration/verification images, and the
  folder checks below. A file it cannot decode raises
  :class:`ImageDecodeError` naming the file.
* :func:`decode_image` -- the in-graph (``tf.data``) decoder of encoded bytes,
  for the training / TFRecord / unlabelled pipelines. A graph op cannot raise a
  Python error naming a file, so those pipelines skip undecodable elements
  (``Dataset.ignore_errors``) and name them afterwards with
  :func:`mobileone_tf.data.find_undecodable` (the same decoder, run over the
  file list).

Before a run, :func:`check_images` / :func:`check_image_folder` decode every
file with :func:`open_image` and raise naming the bad ones (e.g. the
validation folder before training starts). :func:`describe_skipped` is the
one-line report of skipped files that bulk commands print.

This module imports TensorFlow only inside :func:`decode_image`.
"""

from __future__ import annotations

import concurrent.futures
import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.data.listing import list_examples

MAX_NAMED = 10
"""How many file names an error message or report lists before ``...``."""


@mobileone_export("mobileone_tf.data")
class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image).

    The message starts with the file: ``"PATH: not a decodable image
    (REASON)"``; several files: ``"N undecodable images: PATH (REASON); ..."``.

    Attributes:
        paths: the files (str), in the order found.
    """

    def __init__(self, message, paths=()):
        super().__init__(message)
        self.paths = [os.fspath(p) for p in paths]


def _reason(exc) -> str:
    from PIL import UnidentifiedImageError
    if isinstance(exc, UnidentifiedImageError):
        return "unknown or corrupt image format"
    return str(exc).strip() or type(exc).__name__


@mobileone_export("mobileone_tf.data")
def open_image(path):
    """Reads and fully decodes one image file with PIL.

    Args:
        path: str / path-like (bytes are decoded as UTF-8, for
            ``tf.numpy_function``).

    Returns:
        a loaded ``PIL.Image.Image`` in mode ``"RGB"`` (greyscale replicated
        to 3 channels, alpha dropped, CMYK/palette converted; GIF: first
        frame); the file is closed.

    Raises:
        FileNotFoundError: no such file (the message names it).
        ImageDecodeError: the file is not a decodable image -- unknown format
            (e.g. a text file named ``.jpg``), corrupt or truncated data, or a
            decompression bomb (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    from PIL import Image
    if isinstance(path, bytes):
        path = path.decode()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such image file: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads: truncation is detected here
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, (PermissionError, IsADirectoryError)):
            raise
        raise ImageDecodeError(f"{path}: not a decodable image ({_reason(e)})",
                               [path]) from e


@mobileone_export("mobileone_tf.data")
def decode_image(data):
    """In-graph decoder: encoded JPEG / PNG / BMP / GIF (first frame) / WebP
    bytes (a scalar ``tf.string``) -> ``uint8 (H, W, 3)`` RGB tensor.

    Greyscale is replicated to 3 channels, RGBA drops alpha, CMYK JPEGs are
    converted by libjpeg. JPEGs use the accurate integer IDCT
    (``dct_method="INTEGER_ACCURATE"``), bit-exact with PIL; TF's default fast
    IDCT differs from PIL by up to 20 levels per pixel. Undecodable data
    raises ``tf.errors.InvalidArgumentError`` (no file name: see the module
    docstring for how the pipelines name skipped files).
    """
    import tensorflow as tf
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def _problem(path):
    """``None`` when ``path`` decodes with :func:`open_image`, else the error."""
    try:
        open_image(path)
    except (ImageDecodeError, OSError) as e:
        return e
    return None


@mobileone_export("mobileone_tf.data")
def check_images(paths, workers=None) -> None:
    """Decodes every file of ``paths`` with :func:`open_image` (in a thread
    pool of ``workers``, default ``min(8, cpu count)``; PIL releases the GIL
    while decoding) and raises when any cannot be read.

    Raises:
        ImageDecodeError: naming every undecodable file (the first
            :data:`MAX_NAMED` with their reasons in the message, all in
            ``.paths``); a single bad file gives the single-file message.
        FileNotFoundError / PermissionError: a single missing / unreadable
            file (several are reported as one ImageDecodeError).
    """
    paths = [os.fspath(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        bad = [(p, e) for p, e in zip(paths, pool.map(_problem, paths)) if e is not None]
    if len(bad) == 1:
        raise bad[0][1]
    if bad:
        listed = "; ".join(f"{p} ({_reason(e.__cause__ or e)})" for p, e in bad[:MAX_NAMED])
        more = f"; ... ({len(bad)} in all)" if len(bad) > MAX_NAMED else ""
        raise ImageDecodeError(f"{len(bad)} undecodable images: {listed}{more}",
                               [p for p, _ in bad])


@mobileone_export("mobileone_tf.data")
def check_image_folder(data_dir, synset_to_index=None, num_classes=None, workers=None):
    """Lists a labelled folder (:func:`mobileone_tf.data.list_examples`) and
    decodes every image (:func:`check_images`): the check to run on a
    validation folder before training starts, so that a bad file stops the
    run at once, by name, instead of failing after the first epoch.

    Returns:
        ``(paths, labels)`` as :func:`mobileone_tf.data.list_examples`.

    Raises:
        FileNotFoundError / ValueError: see ``list_examples``.
        ImageDecodeError: naming the undecodable file(s).
    """
    paths, labels = list_examples(data_dir, synset_to_index=synset_to_index,
                                  num_classes=num_classes)
    check_images(paths, workers=workers)
    return paths, labels


@mobileone_export("mobileone_tf.data")
def describe_skipped(skipped, total=None) -> str:
    """One-line report of skipped undecodable files, e.g. ``"2 of 1300
    images skipped (not decodable): a.jpg, b.jpg"`` (full paths, the first
    :data:`MAX_NAMED` named); ``""`` when ``skipped`` is empty."""
    skipped = sorted(os.fspath(p) for p in skipped)
    if not skipped:
        return ""
    of = f" of {total}" if total is not None else ""
    more = f", ... ({len(skipped) - MAX_NAMED} more)" if len(skipped) > MAX_NAMED else ""
    noun = "image" if len(skipped) == 1 and total is None else "images"
    return (f"{len(skipped)}{of} {noun} skipped (not decodable): "
            f"{', '.join(skipped[:MAX_NAMED])}{more}")
