"""Segmentation data: image/mask pairs of a split, mask checks, and the
``tf.data`` pipelines.

Layout (CamVid as the SegNet authors prepared it, ``../shared/data/camvid``):
``images/<stem>.jpg`` (RGB), ``masks/<stem>.png`` (class indices: 8-bit grey,
palette or 16-bit PNGs, read by :func:`read_mask`) and
``splits/{train,val,test}.txt`` (one stem per line). Arrays: images float32
NHWC RGB 0..255, masks int32 ``(B, H, W)``; ``ignore_class`` marks pixels
that count in neither the loss nor the scores (CamVid's void, 11).
"""

from __future__ import annotations

import os

import numpy as np

CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
                  "Fence", "Car", "Pedestrian", "Bicyclist")
"""CamVid's 11 classes (index order of the masks); 11 is void (ignored)."""
CAMVID_IGNORE = 11
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def split_pairs(root, split, limit=0):
    """``[(image path, mask path), ...]`` of ``root/splits/{split}.txt``
    (the first ``limit`` when ``limit`` > 0).

    Raises:
        FileNotFoundError: the split file, or an image or mask it names.
        ValueError: an empty split.
    """
    root = os.fspath(root)
    listing = os.path.join(root, "splits", f"{split}.txt")
    if not os.path.isfile(listing):
        raise FileNotFoundError(f"no split file {listing} (expected "
                                "splits/{train,val,test}.txt with one file stem a line)")
    with open(listing) as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        raise ValueError(f"{listing} lists no images")
    if limit and limit > 0:
        stems = stems[:int(limit)]
    pairs = []
    for stem in stems:
        image = next((os.path.join(root, "images", stem + s) for s in IMAGE_SUFFIXES
                      if os.path.isfile(os.path.join(root, "images", stem + s))), None)
        mask = os.path.join(root, "masks", stem + ".png")
        if image is None:
            raise FileNotFoundError(f"{listing}: no image images/{stem}"
                                    f"{{{','.join(IMAGE_SUFFIXES)}}}")
        if not os.path.isfile(mask):
            raise FileNotFoundError(f"{listing}: no mask {mask}")
        pairs.append((image, mask))
    return pairs


MASK_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")
"""PIL modes a mask may have: 8-bit grey (``L``), palette (``P``: the pixel
values are the class indices; the palette's colours are ignored), 16-bit
grey (``I;16``) and 32-bit integer (``I``)."""


def read_mask(path, num_classes=None, ignore_class=None):
    """THE mask reader (the pre-flight check and the ``tf.data`` pipelines
    both use it): one PNG of class indices -> ``(H, W)`` int32 array.

    Args:
        path: str / path-like (bytes are decoded as UTF-8, for
            ``tf.numpy_function``).
        num_classes: when given, every value must be in
            ``0..num_classes-1`` or be ``ignore_class``.

    Raises:
        FileNotFoundError: no such file.
        mobileone_tf.data.ImageDecodeError: not a decodable image (corrupt,
            truncated); the message starts with the file.
        ValueError: a mode not in :data:`MASK_MODES` (e.g. an RGB colour
            mask), or a value outside the classes; the message names the
            file and the value.
    """
    from PIL import Image

    from mobileone_tf.data import ImageDecodeError
    path = os.fsdecode(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such mask file: {path}")
    try:
        with Image.open(path) as m:
            mode = m.mode
            if mode in MASK_MODES:
                mask = np.asarray(m)  # loads: truncation is detected here
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, (PermissionError, IsADirectoryError)):
            raise
        reason = str(e).strip() or type(e).__name__
        raise ImageDecodeError(f"{path}: not a decodable mask image ({reason})", [path]) from e
    if mode not in MASK_MODES:
        raise ValueError(f"{path}: mask mode {mode}; expected a single-channel image of "
                         f"class indices (PIL modes {', '.join(MASK_MODES)})")
    mask = mask.astype(np.int32)
    if num_classes is not None:
        allowed = set(range(int(num_classes))) | ({int(ignore_class)}
                                                  if ignore_class is not None else set())
        bad = sorted(set(np.unique(mask).tolist()) - allowed)
        if bad:
            raise ValueError(
                f"{path}: mask value {bad[0]} is outside the classes 0..{num_classes - 1}"
                + (f" and ignore class {ignore_class}" if ignore_class is not None else "")
                + (f" (all bad values: {bad})" if len(bad) > 1 else ""))
    return mask


def _check_pair(pair, num_classes, ignore_class):
    from mobileone_tf.data import open_image
    image_path, mask_path = pair
    mask = read_mask(mask_path, num_classes, ignore_class)
    size = open_image(image_path).size  # decodes the whole file (names a bad one)
    if size != (mask.shape[1], mask.shape[0]):
        raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                         f"{image_path} {size[0]}x{size[1]}")
    return mask.shape


def check_masks(pairs, num_classes, ignore_class=None, workers=None):
    """The pre-flight check of a split: reads every mask (:func:`read_mask`:
    mode, values), fully decodes every image
    (:func:`mobileone_tf.data.open_image`) and checks that the two have
    the same size; returns the largest ``(height, width)``. Runs in a thread
    pool of ``workers`` (default ``min(8, cpu count)``).

    Raises:
        The first error in listing order, naming the file:
        mobileone_tf.data.ImageDecodeError (an undecodable image or mask),
        ValueError (a mask value outside ``0..num_classes-1`` and not
        ``ignore_class``, a mask that is not single-channel, a mask whose
        size differs from its image), FileNotFoundError.
    """
    import concurrent.futures
    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        shapes = list(pool.map(lambda p: _check_pair(p, num_classes, ignore_class), pairs))
    return (max((h for h, _ in shapes), default=0), max((w for _, w in shapes), default=0))


def _decoder(num_classes, ignore_class):
    """``(image path, mask path) -> (float32 (H, W, 3), int32 (H, W, 1))``:
    the image by :func:`mobileone_tf.data.decode_image`, the mask by
    :func:`read_mask` (through ``tf.numpy_function``)."""
    import tensorflow as tf

    from mobileone_tf.data import decode_image

    def read(path):
        return read_mask(path, num_classes, ignore_class)

    def decode(image_path, mask_path):
        image = decode_image(tf.io.read_file(image_path))
        mask = tf.numpy_function(read, [mask_path], tf.int32, stateful=False)
        mask = tf.ensure_shape(mask, [None, None])
        return tf.cast(image, tf.float32), mask[..., None]

    return decode


def _pad(image, mask, height, width, ignore_class):
    """Pads (bottom/right) to at least ``height`` x ``width``: image with 0,
    mask with ``ignore_class``."""
    import tensorflow as tf
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ph, pw = tf.maximum(height - h, 0), tf.maximum(width - w, 0)
    image = tf.pad(image, [[0, ph], [0, pw], [0, 0]])
    mask = tf.pad(mask - ignore_class, [[0, ph], [0, pw], [0, 0]]) + ignore_class
    return image, mask


def padded_size(height, width, multiple=32):
    return -(-int(height) // multiple) * multiple, -(-int(width) // multiple) * multiple


def train_dataset(pairs, crop_size, batch_size, ignore_class, scale_range=(0.75, 1.25),
                  seed=0, num_classes=None):
    """Shuffled, repeated-per-epoch training batches: random scale (bilinear
    image, nearest mask), pad to ``crop_size`` (mask: ignore), random crop,
    random horizontal flip. Yields ``(images (B, H, W, 3) float32 0..255,
    masks (B, H, W) int32)`` with ``drop_remainder``. Masks are read by
    :func:`read_mask` (``num_classes``: its value check)."""
    import tensorflow as tf
    ch, cw = (int(s) for s in crop_size)
    lo, hi = (float(s) for s in scale_range)

    def augment(image, mask):
        scale = tf.random.uniform([], lo, hi)
        size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
        image = tf.image.resize(image, size, method="bilinear")
        mask = tf.image.resize(mask, size, method="nearest")
        image, mask = _pad(image, mask, ch, cw, ignore_class)
        both = tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
        both = tf.image.random_crop(both, [ch, cw, 4])
        both = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.reverse(both, [1]),
                       lambda: both)
        return both[..., :3], tf.cast(both[..., 3], tf.int32)

    images, masks = zip(*pairs)
    ds = tf.data.Dataset.from_tensor_slices((list(images), list(masks)))
    ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_decoder(num_classes, ignore_class), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(int(batch_size), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(pairs, size, batch_size, ignore_class, crop_larger=False, num_classes=None):
    """Evaluation batches in listing order: each image padded (bottom/right,
    zeros; mask: ignore) to ``size`` ``(H, W)``, which must be at least the
    image size unless ``crop_larger`` (then the top-left ``size`` window is
    kept). Yields ``(images, masks)`` as :func:`train_dataset`."""
    import tensorflow as tf
    h, w = (int(s) for s in size)

    def pad(image, mask):
        if crop_larger:
            image, mask = image[:h, :w], mask[:h, :w]
        tf.debugging.assert_less_equal(tf.shape(image)[:2], [h, w],
                                       message=f"an image is larger than {h}x{w}")
        image, mask = _pad(image, mask, h, w, ignore_class)
        return tf.ensure_shape(image, [h, w, 3]), tf.ensure_shape(mask[..., 0], [h, w])

    images, masks = zip(*pairs)
    ds = tf.data.Dataset.from_tensor_slices((list(images), list(masks)))
    ds = ds.map(_decoder(num_classes, ignore_class),
                num_parallel_calls=tf.data.AUTOTUNE).map(pad)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
