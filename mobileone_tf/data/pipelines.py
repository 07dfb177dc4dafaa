"""Input pipelines: labelled eval and training ``tf.data`` datasets (image
folders or ImageNet-style TFRecords), unlabelled image folders (calibration,
distillation), and numpy batches of a folder.

Every pipeline yields images as float32 RGB ``0..255``, NHWC ``(B, S, S, 3)``,
and labels as int32 ``(B,)``. Undecodable images (see
:mod:`mobileone_tf.data.decode`): the eval pipeline raises, or skips and
records them by name (``skipped=[]``); the training and unlabelled pipelines
skip them in-graph, and :func:`find_undecodable` names the files they skip.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import tensorflow as tf

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.data.decode import ImageDecodeError, decode_image
from mobileone_tf.data.listing import (image_folders, list_examples, list_image_folders,
                                       list_images, select_paths)
from mobileone_tf.data.transforms import (eval_transform, load_images, pil_eval_transform,
                                          random_crop_flip, random_resized_crop)
from mobileone_tf.weights.presets import EVAL_CROP_PCT, EVAL_IMAGE_SIZE

logger = logging.getLogger(__name__)


def _check_sizes(image_size, batch_size=1, crop_pct=None):
    if int(image_size) != image_size or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------

def _pil_loader(image_size, crop_pct, skipped):
    """``path bytes -> (uint8 image, ok)`` for ``tf.numpy_function``; records
    undecodable files in ``skipped`` (once each) or raises when it is None."""
    blank = np.zeros((image_size, image_size, 3), np.uint8)
    lock = threading.Lock()

    def load(path):
        try:
            return pil_eval_transform(path, image_size, crop_pct), True
        except ImageDecodeError as e:
            if skipped is None:
                raise
            with lock:
                if e.paths[0] not in skipped:
                    skipped.append(e.paths[0])
            return blank, False

    return load


def _decoded(image, label, ok):
    return ok


def _without_flag(image, label, ok):
    return image, label


def _included(paths, labels, include, data_dir):
    """``(paths, labels)`` restricted to ``include``; ValueError when none is left."""
    keep = set(select_paths(paths, include=include))
    if not keep:
        raise ValueError(f"include patterns {list(include)} match none of the {len(paths)} "
                         f"images of {data_dir}")
    pairs = [(p, y) for p, y in zip(paths, labels) if p in keep]
    return [p for p, _ in pairs], [y for _, y in pairs]


@mobileone_export("mobileone_tf.data")
def eval_dataset(data_dir, batch_size=32, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT,
                 synset_to_index=None, num_classes=None,
                 num_parallel_calls=tf.data.AUTOTUNE, backend="pil",
                 drop_remainder=False, skipped=None, include=None):
    """Batched, prefetched eval dataset of ``(images, labels)``.

    Args:
        data_dir: a ``labels.csv`` folder or an ImageFolder (see
            :func:`mobileone_tf.data.list_examples`).
        batch_size: images per batch (last batch may be smaller unless
            ``drop_remainder``).
        image_size: crop size (pixels).
        crop_pct: resize short side to ``int(image_size / crop_pct)`` first.
        synset_to_index: optional ``{synset: index}`` for synset folders.
        num_classes: the model's class count: labels out of range raise
            (ValueError naming the ``labels.csv`` row or class folder).
        backend: ``"pil"`` (default, bit-exact with torchvision's PIL
            pipeline) or ``"tf"`` (in-graph
            :func:`mobileone_tf.data.eval_transform`, within 1 level per
            pixel).
        skipped: ``None`` (default): an undecodable image stops the iteration
            with a ``tf.errors.OpError`` whose message names the file (an
            evaluation must not silently drop images). A list: undecodable
            images are left out, and their paths appended to it (once each)
            as the dataset is iterated.
        include: glob patterns: only the paths matching one are kept
            (:func:`mobileone_tf.data.select_paths`; e.g. a held-out slice).

    Returns:
        ``tf.data.Dataset`` of ``images`` float32 ``(B, image_size,
        image_size, 3)`` RGB 0..255 and ``labels`` int32 ``(B,)``, in
        ``list_examples`` order (deterministic).

    Raises:
        See ``list_examples``; ValueError for bad sizes or ``backend``.
    """
    _check_sizes(image_size, batch_size, crop_pct)
    if backend not in ("pil", "tf"):
        raise ValueError(f"backend must be 'pil' or 'tf', got {backend!r}")
    paths, labels = list_examples(data_dir, synset_to_index=synset_to_index,
                                  num_classes=num_classes)
    if include:
        paths, labels = _included(paths, labels, include, data_dir)
    if backend == "tf" and skipped is not None:
        bad = set(find_undecodable(paths))
        skipped.extend(p for p in paths if p in bad and p not in skipped)
        labels = [y for p, y in zip(paths, labels) if p not in bad]
        paths = [p for p in paths if p not in bad]
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string),
                                             np.asarray(labels, np.int32)))

    if backend == "pil":
        loader = _pil_loader(image_size, crop_pct, skipped)

        def load(path, label):
            image, ok = tf.numpy_function(loader, [path], [tf.uint8, tf.bool],
                                          stateful=skipped is not None)
            image = tf.cast(tf.ensure_shape(image, [image_size, image_size, 3]), tf.float32)
            return image, label, tf.ensure_shape(ok, [])

        ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
        ds = ds.filter(_decoded).map(_without_flag)
    else:
        def load(path, label):
            image = decode_image(tf.io.read_file(path))
            return eval_transform(image, image_size, crop_pct), label

        ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# TFRecords
# --------------------------------------------------------------------------

@mobileone_export("mobileone_tf.data")
def is_tfrecord_source(source) -> bool:
    """True when ``source`` is a TFRecord file / glob pattern (or a list of
    them) rather than an image folder."""
    if isinstance(source, (list, tuple)):
        return True
    return not os.path.isdir(os.fspath(source))


@mobileone_export("mobileone_tf.data")
def tfrecord_files(source) -> list:
    """Sorted TFRecord files matching ``source`` (a file, glob pattern, or a
    list of them). Raises FileNotFoundError when nothing matches."""
    patterns = source if isinstance(source, (list, tuple)) else [os.fspath(source)]
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(os.fspath(p)))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns} (and it is not "
                                "a folder)")
    return files


@mobileone_export("mobileone_tf.data")
def count_records(source) -> int:
    """Number of records in TFRecord ``source`` (reads every shard once)."""
    return int(sum(1 for f in tfrecord_files(source) for _ in tf.data.TFRecordDataset(f)))


_TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _records(source, label_offset, shuffle_files, seed):
    """``(encoded bytes, int32 label + label_offset)`` of ImageNet-style
    ``tf.train.Example`` records."""
    files = tfrecord_files(source)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def parse(record):
        ex = tf.io.parse_single_example(record, _TFRECORD_FEATURES)
        return ex["image/encoded"], tf.cast(ex["image/class/label"] + label_offset, tf.int32)

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


@mobileone_export("mobileone_tf.data")
def tfrecord_eval_dataset(source, batch_size=32, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT,
                          label_offset=0):
    """Labelled eval batches from ImageNet-style TFRecord shards.

    Args:
        source: a TFRecord file, glob pattern or list of them; records hold
            ``image/encoded`` (JPEG/PNG bytes) and ``image/class/label``.
        label_offset: added to the labels (``-1`` for 1-based ImageNet shards).

    Returns:
        ``tf.data.Dataset`` of ``(float32 (B, S, S, 3) RGB 0..255, int32 (B,))``
        in file order, the in-graph eval transform; undecodable records are
        skipped with a logged warning.

    Raises:
        FileNotFoundError: no file matches ``source``.
    """
    _check_sizes(image_size, batch_size, crop_pct)
    ds = _records(source, label_offset, False, None)
    ds = ds.map(lambda data, y: (eval_transform(decode_image(data), image_size, crop_pct), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True).batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def _augmenter(augment, magnitude, seed):
    """Keras 3 batch augmentation layer for ``augment`` (``None``,
    ``"randaugment"`` or ``"augmix"``); input/output float 0..255."""
    if augment in (None, "none", ""):
        return None
    import keras
    if augment == "randaugment":
        return keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                        factor=magnitude, seed=seed)
    if augment == "augmix":
        return keras.layers.AugMix(value_range=(0, 255), severity=magnitude, seed=seed)
    raise ValueError(f"augment must be None, 'randaugment' or 'augmix', got {augment!r} "
                     "(Keras 3 has no AutoAugment layer)")


@mobileone_export("mobileone_tf.data")
def train_dataset(source, batch_size, image_size=224, *, synset_to_index=None,
                  label_offset=0, shuffle=True, shuffle_buffer=10_000, seed=None,
                  deterministic=False, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                  flip=True, augment=None, magnitude=0.5, repeat=False,
                  drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE):
    """Training dataset of ``(images, labels)`` with random-resized crop,
    horizontal flip and optional RandAugment / AugMix.

    Progressive resizing: call again with a new ``image_size`` per stage
    (the function is cheap; listing is repeated).

    Args:
        source: an ImageFolder / ``labels.csv`` folder, or a TFRecord file
            pattern (or list of patterns) of ImageNet-style ``tf.train.Example``
            (``image/encoded`` bytes, ``image/class/label`` int64).
        batch_size: images per batch (global batch under tf.distribute).
        image_size: output crop size (pixels).
        synset_to_index: see :func:`mobileone_tf.data.list_examples`.
        label_offset: added to TFRecord labels; use ``-1`` for the usual TF
            ImageNet TFRecords whose labels are 1..1000 (0 = background).
        shuffle, shuffle_buffer, seed: example shuffling (files too for
            TFRecords); a fixed ``seed`` with ``deterministic=True`` gives a
            reproducible stream (same images, same augmentation).
        deterministic: keep element order in parallel maps (slower).
        scale, ratio: random-resized-crop ranges (torchvision defaults).
        flip: random horizontal flip.
        augment: ``None``, ``"randaugment"`` (``keras.layers.RandAugment``,
            2 ops, ``factor=magnitude``) or ``"augmix"``
            (``keras.layers.AugMix``, ``severity=magnitude``).
        repeat: repeat indefinitely.

    Returns:
        ``tf.data.Dataset``: images float32 ``(B, image_size, image_size, 3)``
        RGB 0..255, labels int32 ``(B,)``. Undecodable images are skipped
        (``Dataset.ignore_errors``), never raising mid-epoch; name them with
        ``find_undecodable(list_examples(source)[0])``.

    Raises:
        FileNotFoundError / ValueError: bad ``source`` (see
        ``list_examples``), bad sizes, unknown ``augment``.
    """
    _check_sizes(image_size, batch_size)
    augmenter = _augmenter(augment, magnitude, seed)
    if is_tfrecord_source(source):
        ds = _records(source, label_offset, shuffle, seed)
    else:
        paths, labels = list_examples(source, synset_to_index=synset_to_index)
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda p, y: (tf.io.read_file(p), y),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        shuffle_buffer = 0  # already shuffled as a full list of paths
    if shuffle and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    base_seed = 0 if seed is None else int(seed)

    def load(index, example):
        data, label = example
        image = decode_image(data)
        if deterministic or seed is not None:
            s = tf.stack([tf.constant(base_seed, tf.int64), index])
            crop_seed = tf.random.stateless_uniform([2], s, maxval=2**31 - 1,
                                                    dtype=tf.int64)
            image = random_resized_crop(image, image_size, scale, ratio,
                                        stateless_seed=crop_seed)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, crop_seed + 1)
        else:
            image = random_resized_crop(image, image_size, scale, ratio)
            if flip:
                image = tf.image.random_flip_left_right(image)
        return image, label

    ds = ds.enumerate().map(load, num_parallel_calls=num_parallel_calls,
                            deterministic=deterministic)
    ds = ds.ignore_errors(log_warning=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y),
                    num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


@mobileone_export("mobileone_tf.data")
def find_undecodable(paths, num_parallel_calls=tf.data.AUTOTUNE) -> list:
    """The files among ``paths`` that the in-graph decoder
    (:func:`mobileone_tf.data.decode_image`) cannot read or decode -- exactly
    the files :func:`train_dataset` and :func:`image_folder_dataset` skip.

    Decodes every file once, in parallel (``tf.data``). For the end-of-run
    report of a training run (with
    :func:`mobileone_tf.data.describe_skipped`).

    Returns:
        the undecodable paths (str), in ``paths`` order; a warning naming the
        first few is logged when there are any.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return []
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda p: (p, tf.shape(decode_image(tf.io.read_file(p)))[0]),
                num_parallel_calls=num_parallel_calls, deterministic=False)
    good = {p.decode() for p, _ in ds.ignore_errors().as_numpy_iterator()}
    bad = [p for p in paths if p not in good]
    if bad:
        logger.warning("%d undecodable images, e.g. %s", len(bad), bad[:5])
    return bad


# --------------------------------------------------------------------------
# Unlabelled images (calibration, distillation)
# --------------------------------------------------------------------------

AUGMENTS = (False, True, "crop_flip", "random_resized_crop")
"""``augment`` values of :func:`image_folder_dataset` (``True`` is ``"crop_flip"``)."""

DISTILL_RRC_SCALE = (0.25, 1.0)
"""Area fraction range of ``augment="random_resized_crop"`` (torchvision's
0.08 lower bound leaves a few pixels of a 64x64 image)."""


@mobileone_export("mobileone_tf.data")
def image_folder_dataset(data_dir, batch_size=32, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT,
                         shuffle=False, seed=None, repeat=False, augment=False,
                         drop_remainder=False, num_parallel_calls=tf.data.AUTOTUNE,
                         exclude=None):
    """Unlabelled images of a folder (e.g. QAT distillation, PTQ
    representative data), as a ``tf.data.Dataset`` of image batches only.

    Lists ``data_dir`` (one folder or a list) recursively
    (:func:`mobileone_tf.data.list_image_folders`; any layout, no labels
    needed; ``exclude``: glob patterns of paths to leave out, e.g. a held-out
    slice). ``augment=False``: the in-graph eval transform (resize short side
    to ``int(image_size / crop_pct)``, centre crop). ``augment=True`` /
    ``"crop_flip"``: the same resize, then a random crop and a random flip
    (:func:`mobileone_tf.data.random_crop_flip`; milder than the training
    random-resized crop, so that distillation sees the statistics the
    deployed model sees). ``"random_resized_crop"``: Inception-style crop of
    :data:`DISTILL_RRC_SCALE` of the area
    (:func:`mobileone_tf.data.random_resized_crop`) and a random flip.
    Undecodable files are skipped with a logged warning (name them with
    ``find_undecodable(list_image_folders(data_dir, exclude))``).

    Returns:
        ``tf.data.Dataset`` of float32 ``(B, image_size, image_size, 3)`` RGB
        0..255 (``drop_remainder``: every batch full).

    Raises:
        FileNotFoundError / ValueError: missing folder, no images, bad sizes.
    """
    _check_sizes(image_size, batch_size, crop_pct)
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    paths = list_image_folders(data_dir, exclude)
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path):
        image = decode_image(tf.io.read_file(path))
        if augment == "random_resized_crop":
            image = random_resized_crop(image, image_size, DISTILL_RRC_SCALE, seed=seed)
            return tf.image.random_flip_left_right(image)
        if augment:
            return random_crop_flip(image, image_size, crop_pct)
        return eval_transform(image, image_size, crop_pct)

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


@mobileone_export("mobileone_tf.data")
def image_batches(folder, image_size, batch_size, max_batches, crop_pct=EVAL_CROP_PCT):
    """Yields up to ``max_batches`` full float32 ``(batch_size, S, S, 3)``
    numpy batches (RGB 0..255, :func:`load_image`) of images picked evenly
    over the sorted listing of ``folder`` (so that sorted class folders are
    all represented; several folders or a held-out slice left out:
    :class:`mobileone_tf.data.ImageFolders`). Yields nothing when the folder
    holds fewer than ``batch_size`` images.

    Raises:
        FileNotFoundError / ValueError: missing folder or no images (at the
        first ``next``); ImageDecodeError naming an unreadable picked file.
    """
    paths = image_folders(folder).paths()
    n = min(len(paths), batch_size * max_batches)
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]
    for start in range(0, n - batch_size + 1, batch_size):
        yield load_images(picks[start:start + batch_size], image_size, crop_pct)
