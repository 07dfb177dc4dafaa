"""The unlabelled training images of QAT: folders -> a finite ``tf.data`` pipeline.

A thin adapter over :func:`mobileone_tf.data.image_folder_dataset` (listing,
decoding and the mild crop/flip augmentation live there) that names the
undecodable files up front, refuses a folder with no usable image, and gives
the dataset a known length (so ``fine_tune`` can run "one pass per epoch").
"""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export


@mobileone_export("mobileone_tf.quantization")
def qat_dataset(directory, image_size=224, batch_size=32, *, shuffle=True, augment=True,
                seed=0, crop_pct=0.875, with_skipped=False, exclude=None):
    """Unlabelled images of one or several folders for calibration and distillation.

    Lists ``directory`` recursively
    (:func:`mobileone_tf.data.list_image_folders`, minus the ``exclude``
    globs), finds the files the in-graph decoder cannot read
    (:func:`mobileone_tf.data.find_undecodable`: they are skipped), and
    returns :func:`mobileone_tf.data.image_folder_dataset` with
    ``augment`` (``True``/``"crop_flip"``: resize of the short side to
    ``int(image_size / crop_pct)``, random ``image_size`` crop, random
    horizontal flip; ``"random_resized_crop"``; ``False``: centre crop),
    ``shuffle`` (reshuffled each pass) and full batches only.

    Args:
        directory: folder of images (any layout, no labels needed), or a
            list of folders (e.g. Imagenette train and tiny-imagenet-202).
        image_size: square crop size (pixels).
        batch_size: images per batch (>= 1).
        with_skipped: also return the skipped files.
        exclude: glob patterns of paths to leave out
            (:func:`mobileone_tf.data.select_paths`), e.g. the held-out
            slice used to choose settings.

    Returns:
        ``tf.data.Dataset`` of float32 ``(batch_size, image_size, image_size,
        3)`` RGB 0..255 with a known cardinality (``decodable // batch_size``
        batches); with ``with_skipped``, ``(dataset, skipped)`` where
        ``skipped`` lists the undecodable files (str).

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        ValueError: no image files, none decodable
            (:class:`mobileone_tf.data.ImageDecodeError`, naming the files),
            or fewer decodable images than ``batch_size``.
    """
    import tensorflow as tf
    from mobileone_tf import data
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    paths = data.list_image_folders(directory, exclude)
    name = (os.fspath(directory) if isinstance(directory, (str, os.PathLike))
            else ", ".join(os.fspath(d) for d in directory))
    skipped = data.find_undecodable(paths)
    usable = len(paths) - len(skipped)
    if usable == 0:
        raise data.ImageDecodeError(
            f"{name}: no decodable image "
            f"({data.describe_skipped(skipped, len(paths))})", skipped)
    steps = usable // int(batch_size)
    if steps < 1:
        raise ValueError(f"{name}: {usable} decodable images, fewer than "
                         f"batch_size {batch_size}")
    ds = data.image_folder_dataset(directory, batch_size=batch_size, image_size=image_size,
                                   crop_pct=crop_pct, shuffle=shuffle, seed=seed,
                                   augment=augment, drop_remainder=True, exclude=exclude)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return (ds, skipped) if with_skipped else ds
