"""Images an exporter needs: the verification set and the int8 calibration
(representative) set, from a folder (:mod:`mobileone_tf.data`: the
project's torchvision-exact eval transform; an undecodable file raises an
error naming it), from an array, or generated.

Every array here is float32 NHWC ``(N, H, W, 3)``, RGB 0..255.
"""

from __future__ import annotations

import os

import numpy as np

from mobileone_tf.export.common import ExportError


def generated_images(n, size, seed=0):
    """``n`` smooth random RGB images (float32 0..255): low-frequency noise
    upsampled (bicubic) plus a little pixel noise, so that they look like
    image content rather than white noise. ``size``: int or ``(H, W)``."""
    import tensorflow as tf
    h, w = (size, size) if np.isscalar(size) else size
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    img = tf.image.resize(low, (h, w), method="bicubic").numpy()
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.float32)


def _side(size):
    if np.isscalar(size):
        return int(size)
    if size[0] != size[1]:
        raise ExportError(f"Only square input sizes are supported; got {tuple(size)}")
    return int(size[0])


def folder_images(folder, size, n):
    """Up to ``n`` images of ``folder`` (recursive; several folders or a
    held-out slice left out: :class:`mobileone_tf.data.ImageFolders`), spread
    evenly over its sorted listing (:func:`mobileone_tf.data.image_batches`), eval-transformed
    to ``size``.

    Raises:
        ExportError: ``folder`` is not a folder.
        ValueError: no images in it; ``mobileone_tf.data.ImageDecodeError``
            (a ``ValueError``) naming an undecodable file.
    """
    from mobileone_tf import data
    source = data.image_folders(folder)
    for f in source.folders if source else [folder]:
        if not f or not os.path.isdir(f):
            raise ExportError(f"Image folder not found: {f!r}")
    return np.concatenate(list(data.image_batches(source, _side(size), 1, int(n))))


def check_image_source(source, what):
    """Checks a folder or array of images without loading any.

    Raises:
        ExportError: ``source`` is missing, not a folder, or not an
            ``(N, H, W, 3)`` array with ``N >= 1``.
    """
    if source is None or (isinstance(source, (str, os.PathLike)) and not source):
        raise ExportError(f"{what} is missing")
    from mobileone_tf import data
    folders = data.image_folders(source)
    if folders is not None:
        for folder in folders.folders:
            if not os.path.isdir(folder):
                raise ExportError(f"{what}: image folder not found: {folder!r}")
        return
    shape = np.shape(source)
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise ExportError(f"{what} must be an image folder or a float array (N, H, W, 3) "
                          f"RGB 0..255; got shape {shape}")


def sample_images(source, size, n, what="images"):
    """``n`` (or fewer) images from folders (:func:`folder_images`) or the
    first ``n`` of an array ``(N, H, W, 3)`` of that size.

    Raises:
        ExportError: see :func:`check_image_source`, or an array of another size.
    """
    from mobileone_tf import data
    check_image_source(source, what)
    if data.image_folders(source) is not None:
        return folder_images(source, size, n)
    images = np.asarray(source, np.float32)[:int(n)]
    h, w = (size, size) if np.isscalar(size) else tuple(size)
    if images.shape[1:3] != (h, w):
        raise ExportError(f"{what} has images of size {images.shape[1:3]}; the export "
                          f"input is {h}x{w}")
    return images


def verification_images(verify_data, size, n=8):
    """``n`` verification images from ``verify_data`` (folder or array), or
    ``n`` :func:`generated_images` when it is ``None``."""
    if verify_data is None or (isinstance(verify_data, str) and not verify_data):
        return generated_images(n, size)
    return sample_images(verify_data, size, n, "verify_data")


def describe(source, n):
    """A short text naming an image source for reports."""
    from mobileone_tf import data
    folders = data.image_folders(source)
    if folders is not None:
        return str(folders)
    return f"{n} {'given' if source is not None else 'generated'} images"
