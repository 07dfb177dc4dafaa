"""Image transforms: the standard ImageNet eval transform (PIL, equal to
torchvision; and its in-graph TensorFlow twin) and the training crop.

Eval transform -- torchvision's ``Resize(int(image_size / crop_pct))`` +
``CenterCrop(image_size)`` on a PIL image, as used by Apple's ml-mobileone and
timm: RGB, bilinear resize of the short side to ``int(image_size /
crop_pct)`` (the long side to ``int(size * long / short)``), centre crop with
offsets ``int(round((dim - image_size) / 2))``.

* :func:`pil_eval_transform` runs it with PIL and is bit-exact with
  torchvision (it reproduces the PyTorch reference figures image by image);
  :func:`load_image` / :func:`load_images` apply it to files (float32).
* :func:`eval_transform` is the in-graph equivalent (``tf.image.resize``
  bilinear with antialiasing), within 1 level of PIL's fixed-point two-pass
  resize on real photos (measurements: ``docs/data.md``).

Images leave every transform as RGB in ``0..255`` (NHWC when batched): the
MobileOne models normalize inside (``include_preprocessing=True``).
The defaults (224, crop 0.875: resize 256, crop 224) are the preset table's
(:data:`mobileone_tf.weights.presets.EVAL_IMAGE_SIZE`, ``EVAL_CROP_PCT``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.data.decode import open_image
from mobileone_tf.weights.presets import EVAL_CROP_PCT, EVAL_IMAGE_SIZE


@mobileone_export("mobileone_tf.data")
def pil_eval_transform(image, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT):
    """torchvision-equal eval transform with PIL.

    Args:
        image: an image file (str / path-like / bytes; read with
            :func:`mobileone_tf.data.open_image`) or a ``PIL.Image.Image``
            (converted to RGB).
        image_size: crop size (pixels).
        crop_pct: the short side is resized to ``int(image_size / crop_pct)``.

    Returns:
        ``uint8 (image_size, image_size, 3)`` RGB array.

    Raises:
        FileNotFoundError / ImageDecodeError: see ``open_image``.
    """
    from PIL import Image
    im = image.convert("RGB") if isinstance(image, Image.Image) else open_image(image)
    w, h = im.size
    size = int(image_size / crop_pct)
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.BILINEAR)
    left = int(round((nw - image_size) / 2.0))
    top = int(round((nh - image_size) / 2.0))
    return np.asarray(im.crop((left, top, left + image_size, top + image_size)), np.uint8)


def _square_size(image_size) -> int:
    if not np.isscalar(image_size):
        if len(image_size) != 2 or image_size[0] != image_size[1]:
            raise ValueError(f"only square image sizes are supported, got {image_size}")
        image_size = image_size[0]
    return int(image_size)


@mobileone_export("mobileone_tf.data")
def load_image(path, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT):
    """One image file through the torchvision-equal eval transform
    (:func:`mobileone_tf.data.pil_eval_transform`).

    Args:
        image_size: an int, or a square ``(size, size)`` pair.

    Returns:
        float32 ``(image_size, image_size, 3)`` RGB 0..255.

    Raises:
        FileNotFoundError / ImageDecodeError naming the file; ValueError for a
        non-square size.
    """
    size = _square_size(image_size)
    return np.asarray(pil_eval_transform(path, size, crop_pct), np.float32)


@mobileone_export("mobileone_tf.data")
def load_images(paths, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT):
    """:func:`load_image` of every path, stacked: float32 ``(N, image_size,
    image_size, 3)`` RGB 0..255. Raises on the first unreadable file (named)."""
    return np.stack([load_image(p, image_size, crop_pct) for p in paths])


def resize_shorter_side(image, size, antialias=True):
    """Bilinear resize of an ``(H, W, C)`` tensor so that the short side is
    ``size``; the long side becomes ``int(size * long / short)``
    (torchvision's rule). Returns ``float32`` rounded to integers in
    ``0..255`` (as PIL's uint8 output)."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    long = tf.maximum(h, w)
    new_long = tf.cast(tf.math.floordiv(size * long, short), tf.int32)
    new_h = tf.where(h <= w, size, new_long)
    new_w = tf.where(h <= w, new_long, size)
    out = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear",
                          antialias=antialias)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def center_crop(image, size):
    """Centre crop ``(size, size)`` of an ``(H, W, C)`` tensor; offsets
    ``int(round((dim - size) / 2))`` with round-half-to-even, as
    torchvision's ``CenterCrop``."""
    shape = tf.shape(image)
    top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float64) / 2.0), tf.int32)
    return image[top:top + size, left:left + size, :]


@mobileone_export("mobileone_tf.data")
def eval_transform(image, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT, antialias=True):
    """In-graph eval transform of one ``(H, W, 3)`` image tensor (any
    numeric dtype, 0..255).

    Returns:
        ``float32 (image_size, image_size, 3)`` RGB in ``0..255``: resize of
        the short side to ``int(image_size / crop_pct)``, centre crop (see
        the module docstring).
    """
    resize = int(image_size / crop_pct)
    image = resize_shorter_side(image, resize, antialias=antialias)
    image = center_crop(image, image_size)
    image.set_shape([image_size, image_size, 3])
    return image


@mobileone_export("mobileone_tf.data")
def random_resized_crop(image, image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        seed=None, stateless_seed=None):
    """Inception-style random-resized crop of one ``(H, W, 3)`` tensor.

    torchvision ``RandomResizedCrop`` semantics (area fraction in ``scale``,
    aspect ``ratio``, whole-image fallback after 10 attempts) with
    ``tf.image.sample_distorted_bounding_box``, then bilinear (antialiased)
    resize to ``(image_size, image_size)``.

    Args:
        seed: int op seed of the stateful sampler (``None``: 0).
        stateless_seed: an int ``(2,)`` tensor: use the stateless sampler
            instead (reproducible per element).

    Returns:
        ``float32 (image_size, image_size, 3)`` in ``0..255``.
    """
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    kw = dict(bounding_boxes=bbox, min_object_covered=0.0, aspect_ratio_range=ratio,
              area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
    if stateless_seed is not None:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), seed=stateless_seed, **kw)
    else:
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image), seed=seed or 0, **kw)
    crop = tf.slice(image, begin, size)
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear",
                          antialias=True)
    out = tf.ensure_shape(out, [image_size, image_size, 3])
    return tf.clip_by_value(out, 0.0, 255.0)


@mobileone_export("mobileone_tf.data")
def random_crop_flip(image, image_size, crop_pct=0.875):
    """Mild augmentation for distillation / calibration on unlabelled images:
    bilinear resize (no antialiasing) of the short side to
    ``round(image_size / crop_pct)``, then a random ``image_size`` crop and a
    random horizontal flip (independent random draws).

    Returns:
        ``float32 (image_size, image_size, 3)`` in ``0..255``.
    """
    resize = int(round(image_size / crop_pct))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(tf.round(shape * (resize / tf.reduce_min(shape))), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")
    image = tf.image.random_crop(image, (image_size, image_size, 3))
    return tf.clip_by_value(tf.image.random_flip_left_right(image), 0.0, 255.0)
