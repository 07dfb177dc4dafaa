"""Segmentation data: image/mask pairs of a split, mask checks, and the
``tf.data`` pipelines.

Layout (CamVid as the SegNet authors prepared it, ``../shared/data/camvid``):
``images/<stem>.jpg`` (RGB), ``masks/<stem>.png`` (8-bit class indices) and
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


def check_masks(pairs, num_classes, ignore_class=None):
    """Reads every mask (PIL) and checks its values and size; returns the
    largest ``(height, width)``.

    Raises:
        ValueError: a mask value outside ``0..num_classes-1`` (and not
            ``ignore_class``), a mask that is not single-channel, or a mask
            whose size differs from its image; the message names the file
            and the value.
    """
    from PIL import Image
    largest = (0, 0)
    allowed = set(range(int(num_classes))) | ({int(ignore_class)} if ignore_class is not None
                                              else set())
    for image_path, mask_path in pairs:
        with Image.open(mask_path) as m:
            if m.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{mask_path}: mask mode {m.mode}; expected a single-channel "
                                 "image of class indices")
            values = np.unique(np.asarray(m))
            size = m.size
        bad = sorted(set(values.tolist()) - allowed)
        if bad:
            raise ValueError(f"{mask_path}: mask value {bad[0]} is outside the classes "
                             f"0..{num_classes - 1}" + (f" and ignore class {ignore_class}"
                                                        if ignore_class is not None else "")
                             + (f" (all bad values: {bad})" if len(bad) > 1 else ""))
        with Image.open(image_path) as im:
            if im.size != size:
                raise ValueError(f"{mask_path}: mask is {size[0]}x{size[1]}, its image "
                                 f"{image_path} {im.size[0]}x{im.size[1]}")
        largest = (max(largest[0], size[1]), max(largest[1], size[0]))
    return largest


def _decode(image_path, mask_path):
    import tensorflow as tf
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
    return tf.cast(image, tf.float32), tf.cast(mask, tf.int32)


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
                  seed=0):
    """Shuffled, repeated-per-epoch training batches: random scale (bilinear
    image, nearest mask), pad to ``crop_size`` (mask: ignore), random crop,
    random horizontal flip. Yields ``(images (B, H, W, 3) float32 0..255,
    masks (B, H, W) int32)`` with ``drop_remainder``."""
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
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(int(batch_size), drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(pairs, size, batch_size, ignore_class, crop_larger=False):
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
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE).map(pad)
    return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
