"""``tf.data`` input pipelines: listing, the standard ImageNet eval transform,
training augmentation, and unlabelled image folders.

Layouts understood by :func:`list_examples`:

* a folder with ``labels.csv`` (header ``file,label``; ``file`` relative to
  that folder, ``label`` an integer class index, ImageNet-1k index for
  ImageNet models);
* an ImageFolder: one subfolder per class holding images. Subfolders named by
  WordNet synset (``n01440764`` ...) are mapped to ImageNet-1k indices when a
  ``synset_to_index`` mapping is given (see :func:`read_class_index`);
  otherwise the sorted folder names are indexed ``0..N-1``.

Images leave every pipeline as NHWC ``float32`` RGB in ``0..255``: the
MobileOne models normalize inside (``include_preprocessing=True``).

Eval transform (torchvision's ``Resize(int(224 / 0.875))`` +
``CenterCrop(224)`` on a PIL image, as used by Apple's ml-mobileone and
timm): RGB, bilinear resize of the short side to ``int(image_size /
crop_pct)`` (the long side to ``int(size * long / short)``), centre crop with
offsets ``int(round((dim - image_size) / 2))``. :func:`eval_dataset` runs it
with PIL by default (``backend="pil"``, via ``tf.numpy_function``): this is
bit-exact with torchvision and reproduces the PyTorch reference figures image
by image. :func:`eval_transform` is the in-graph TensorFlow equivalent
(accurate-IDCT JPEG decoding, bit-exact with PIL; ``tf.image.resize`` bilinear
within 1 level of PIL's fixed-point two-pass resize, mean abs diff ~0.17
levels), usable inside a graph / ``backend="tf"``; on imagenet-val-1300 it
changes the top-1 class of ~1 % of the images of S0 (top-1 0.806 vs 0.808).
"""

from __future__ import annotations

import csv
import logging
import os
import re

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LABELS_CSV = "labels.csv"
_SYNSET = re.compile(r"^n\d{8}$")

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------

def read_class_index(path) -> dict:
    """Reads a synset -> ImageNet-1k index mapping from a CSV file.

    Accepts ``index,synset,name`` (``imagenet_classes.csv``) or
    ``synset,imagenet_index,name`` (Imagenette's ``classes.csv``).

    Returns:
        ``{synset: int index}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the header has no ``synset`` and index column.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class index file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        index_col = next((c for c in ("index", "imagenet_index", "label") if c in cols), None)
        if "synset" not in cols or index_col is None:
            raise ValueError(f"{path}: expected columns 'synset' and 'index' (or "
                             f"'imagenet_index'), found {cols}")
        return {row["synset"]: int(row[index_col]) for row in reader}


def is_image_file(name) -> bool:
    """True for a visible file name with an image extension (IMAGE_EXTENSIONS)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def list_examples(data_dir, synset_to_index=None):
    """Lists the labelled images of a ``labels.csv`` folder or an ImageFolder.

    Args:
        data_dir: folder holding ``labels.csv`` or class subfolders.
        synset_to_index: optional ``{synset: class index}`` for ImageFolders
            with synset-named subfolders (e.g. :func:`read_class_index` of
            ``imagenet_classes.csv``, or built from
            ``mobileone_tf.weights.imagenet_class_index()``). Ignored for
            ``labels.csv`` folders.

    Returns:
        ``(paths, labels)``: a list of absolute file paths (str) and a list of
        int labels, in a deterministic order (``labels.csv`` order, or sorted
        class folder then sorted file name).

    Raises:
        FileNotFoundError: ``data_dir`` missing, or ``labels.csv`` rows that
            point at missing files (the first few are named).
        ValueError: empty folder / no images, a malformed ``labels.csv``, or
            class folders not in ``synset_to_index``.
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    csv_path = os.path.join(data_dir, LABELS_CSV)
    if os.path.isfile(csv_path):
        return _list_labels_csv(data_dir, csv_path)
    classes = sorted(d for d in os.listdir(data_dir)
                     if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith("."))
    if not classes:
        raise ValueError(f"{data_dir} holds neither {LABELS_CSV} nor class subfolders "
                         "(expected an ImageFolder: one subfolder of images per class)")
    if synset_to_index is not None:
        unknown = [c for c in classes if c not in synset_to_index]
        if unknown:
            raise ValueError(f"{data_dir}: class folders not in the class index: "
                             f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
                             f"({len(unknown)} of {len(classes)})")
        class_ids = {c: int(synset_to_index[c]) for c in classes}
    else:
        class_ids = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in classes:
        folder = os.path.join(data_dir, c)
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                if is_image_file(name):
                    paths.append(os.path.join(root, name))
                    labels.append(class_ids[c])
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the class "
                         f"folders of {data_dir}")
    return paths, labels


def class_names(data_dir):
    """Sorted class subfolder names of an ImageFolder (index order when no
    ``synset_to_index`` is used)."""
    data_dir = os.fspath(data_dir)
    return sorted(d for d in os.listdir(data_dir)
                  if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith("."))


def _list_labels_csv(data_dir, csv_path):
    paths, labels, missing = [], [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames \
                or "label" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: expected a header 'file,label', found "
                             f"{reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path}:{line}: label {row['label']!r} is not an "
                                 "integer") from None
            if label < 0:
                raise ValueError(f"{csv_path}:{line}: negative label {label}")
            path = os.path.join(data_dir, row["file"])
            if not os.path.isfile(path):
                missing.append(row["file"])
            paths.append(path)
            labels.append(label)
    if missing:
        raise FileNotFoundError(f"{csv_path}: {len(missing)} listed files do not exist, "
                                f"e.g. {missing[:5]}")
    if not paths:
        raise ValueError(f"{csv_path} lists no images")
    return paths, labels


def list_images(data_dir):
    """All images under ``data_dir`` (recursive; .jpg/.jpeg/.png/.bmp, any
    case), sorted. Raises FileNotFoundError / ValueError when the folder is
    missing or holds no image."""
    data_dir = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"image folder not found: {data_dir}")
    paths = []
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        paths.extend(os.path.join(root, n) for n in sorted(files) if is_image_file(n))
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {data_dir}")
    return paths


# --------------------------------------------------------------------------
# Decoding and transforms
# --------------------------------------------------------------------------

def decode_image(data):
    """Decodes JPEG / PNG / BMP / GIF (first frame) bytes to ``uint8``
    ``(H, W, 3)`` RGB. Greyscale is replicated to 3 channels, RGBA drops
    alpha, CMYK JPEGs are converted by libjpeg. JPEGs use the accurate
    integer IDCT (``dct_method="INTEGER_ACCURATE"``), bit-exact with PIL; TF's
    default fast IDCT differs from PIL by up to 20 levels per pixel. Raises
    ``tf.errors.InvalidArgumentError`` on undecodable data."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def resize_shorter_side(image, size, antialias=True):
    """Bilinear resize so that the short side is ``size``; the long side
    becomes ``int(size * long / short)`` (torchvision's rule). Returns
    ``float32`` rounded to integers in ``0..255`` (as PIL's uint8 output)."""
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
    """Centre crop ``(size, size)``; offsets ``int(round((dim - size) / 2))``
    with round-half-to-even, as torchvision's ``CenterCrop``."""
    shape = tf.shape(image)
    top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float64) / 2.0), tf.int32)
    return image[top:top + size, left:left + size, :]


def eval_transform(image, image_size=224, crop_pct=0.875, antialias=True):
    """Standard ImageNet eval transform on one ``(H, W, 3)`` image.

    Returns ``float32 (image_size, image_size, 3)`` RGB in ``0..255``. See
    the module docstring for the reference (torchvision Resize+CenterCrop).
    """
    resize = int(image_size / crop_pct)
    image = resize_shorter_side(image, resize, antialias=antialias)
    image = center_crop(image, image_size)
    image.set_shape([image_size, image_size, 3])
    return image


def pil_eval_transform(path, image_size=224, crop_pct=0.875):
    """torchvision-equivalent eval transform with PIL: ``Image.open(path)
    .convert("RGB")``, ``Resize(int(image_size / crop_pct))`` (bilinear,
    PIL), ``CenterCrop(image_size)``. Returns ``uint8 (image_size,
    image_size, 3)``. Raises ``PIL.UnidentifiedImageError`` / ``OSError`` on
    undecodable files."""
    from PIL import Image
    if isinstance(path, bytes):
        path = path.decode()
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        size = int(image_size / crop_pct)
        if w <= h:
            nw, nh = size, int(size * h / w)
        else:
            nw, nh = int(size * w / h), size
        im = im.resize((nw, nh), Image.BILINEAR)
        left = int(round((nw - image_size) / 2.0))
        top = int(round((nh - image_size) / 2.0))
        return np.asarray(im.crop((left, top, left + image_size, top + image_size)),
                          np.uint8)


def _check_size(image_size, crop_pct=None):
    if int(image_size) != image_size or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")


def eval_dataset(data_dir, batch_size=32, image_size=224, crop_pct=0.875,
                 synset_to_index=None, num_parallel_calls=tf.data.AUTOTUNE,
                 backend="pil", drop_remainder=False):
    """Batched, prefetched eval dataset of ``(images, labels)``.

    Args:
        data_dir: a ``labels.csv`` folder or an ImageFolder (see
            :func:`list_examples`).
        batch_size: images per batch (last batch may be smaller unless
            ``drop_remainder``).
        image_size: crop size (pixels).
        crop_pct: resize short side to ``int(image_size / crop_pct)`` first.
        synset_to_index: optional ``{synset: index}`` for synset folders.
        backend: ``"pil"`` (default, bit-exact with torchvision's PIL
            pipeline) or ``"tf"`` (in-graph :func:`eval_transform`, within 1
            level per pixel).

    Returns:
        ``tf.data.Dataset`` of ``images`` float32 ``(B, image_size,
        image_size, 3)`` RGB 0..255 and ``labels`` int32 ``(B,)``, in
        :func:`list_examples` order (deterministic). Undecodable images raise
        (an evaluation must not silently drop images).

    Raises:
        See :func:`list_examples`; ValueError for bad sizes.
    """
    _check_size(image_size, crop_pct)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if backend not in ("pil", "tf"):
        raise ValueError(f"backend must be 'pil' or 'tf', got {backend!r}")
    paths, labels = list_examples(data_dir, synset_to_index=synset_to_index)
    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))

    if backend == "pil":
        def load(path, label):
            image = tf.numpy_function(
                lambda p: pil_eval_transform(p, image_size, crop_pct), [path], tf.uint8,
                stateful=False)
            image = tf.cast(tf.ensure_shape(image, [image_size, image_size, 3]), tf.float32)
            return image, label
    elif backend == "tf":
        def load(path, label):
            image = decode_image(tf.io.read_file(path))
            return eval_transform(image, image_size, crop_pct), label
    else:
        raise ValueError(f"backend must be 'pil' or 'tf', got {backend!r}")

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

def random_resized_crop(image, image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        seed=None):
    """Inception-style random-resized crop (torchvision ``RandomResizedCrop``
    semantics: area fraction in ``scale``, log-uniform aspect ``ratio``,
    centre crop fallback) with ``tf.image.sample_distorted_bounding_box``,
    then bilinear resize to ``(image_size, image_size)``. Returns float32."""
    shape = tf.shape(image)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=bbox, min_object_covered=0.0,
        aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
        use_image_if_no_bounding_boxes=True, seed=seed or 0)
    crop = tf.slice(image, begin, size)
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear",
                          antialias=True)
    out = tf.ensure_shape(out, [image_size, image_size, 3])
    return tf.clip_by_value(out, 0.0, 255.0)


def _augmenter(augment, magnitude, seed):
    """Keras 3 preprocessing layer for ``augment`` (``None``, ``"randaugment"``
    or ``"augmix"``); input/output float 0..255."""
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


def _is_tfrecord_source(source):
    if isinstance(source, (list, tuple)):
        return True
    source = os.fspath(source)
    return not os.path.isdir(source)


def _tfrecord_files(source):
    patterns = source if isinstance(source, (list, tuple)) else [os.fspath(source)]
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns} (and it is not "
                                "a folder)")
    return files


_TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _records(source, label_offset, shuffle_files, seed):
    files = _tfrecord_files(source)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def parse(record):
        ex = tf.io.parse_single_example(record, _TFRECORD_FEATURES)
        return ex["image/encoded"], tf.cast(ex["image/class/label"] + label_offset, tf.int32)

    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


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
        synset_to_index: see :func:`list_examples`.
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
        with a logged warning (``Dataset.ignore_errors``), never raising
        mid-epoch.

    Raises:
        FileNotFoundError / ValueError: bad ``source`` (see
        :func:`list_examples`), bad sizes, unknown ``augment``.
    """
    _check_size(image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    augmenter = _augmenter(augment, magnitude, seed)
    if _is_tfrecord_source(source):
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
            begin_size = _stateless_crop(image, scale, ratio, crop_seed)
            image = _resize_crop(image, begin_size, image_size)
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


def tfrecord_eval_dataset(source, batch_size=32, image_size=224, crop_pct=0.875,
                          label_offset=0):
    """Labelled eval batches from ImageNet-style TFRecord shards.

    Args:
        source: a TFRecord file, glob pattern or list of them; records hold
            ``image/encoded`` (JPEG/PNG bytes) and ``image/class/label``.
        label_offset: added to the labels (``-1`` for 1-based ImageNet shards).

    Returns:
        ``tf.data.Dataset`` of ``(float32 (B, S, S, 3) RGB 0..255, int32 (B,))``
        in file order, the in-graph :func:`eval_transform` (resize short side
        to ``image_size / crop_pct``, centre crop); undecodable records are
        skipped with a warning.

    Raises:
        FileNotFoundError: no file matches ``source``.
    """
    _check_size(image_size, crop_pct)
    ds = _records(source, label_offset, False, None)
    ds = ds.map(lambda data, y: (eval_transform(decode_image(data), image_size, crop_pct), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def count_records(source) -> int:
    """Number of records in TFRecord ``source`` (reads every shard once)."""
    return int(sum(1 for f in _tfrecord_files(source) for _ in tf.data.TFRecordDataset(f)))


def _stateless_crop(image, scale, ratio, seed):
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=bbox, seed=seed, min_object_covered=0.0,
        aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin, size


def _resize_crop(image, begin_size, image_size):
    begin, size = begin_size
    crop = tf.slice(image, begin, size)
    out = tf.image.resize(crop, [image_size, image_size], method="bilinear",
                          antialias=True)
    out = tf.ensure_shape(out, [image_size, image_size, 3])
    return tf.clip_by_value(out, 0.0, 255.0)


def image_folder_dataset(data_dir, batch_size=32, image_size=224, crop_pct=0.875,
                         shuffle=False, seed=None, repeat=False,
                         num_parallel_calls=tf.data.AUTOTUNE):
    """Unlabelled images (e.g. QAT distillation, PTQ representative dataset).

    Recursively lists ``data_dir`` (see :func:`list_images`), applies the
    eval transform, and yields batches of images only: float32 ``(B,
    image_size, image_size, 3)`` RGB 0..255. Undecodable files are skipped
    with a logged warning.

    Raises:
        FileNotFoundError / ValueError: missing folder or no images.
    """
    _check_size(image_size, crop_pct)
    paths = list_images(data_dir)
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def load(path):
        return eval_transform(decode_image(tf.io.read_file(path)), image_size, crop_pct)

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def find_undecodable(paths):
    """Validity pre-pass: returns the paths among ``paths`` that
    ``tf.io.decode_image`` cannot decode (eager; for reporting before a run)."""
    bad = []
    for p in paths:
        try:
            decode_image(tf.io.read_file(p))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
            bad.append(p)
    if bad:
        logger.warning("%d undecodable images, e.g. %s", len(bad), bad[:5])
    return bad


def imagenet_synset_to_index() -> dict:
    """``{synset: ImageNet-1k index}`` from
    :func:`mobileone_tf.weights.imagenet_class_index`."""
    from mobileone_tf import weights
    return {synset: i for i, (synset, _) in enumerate(weights.imagenet_class_index())}


def is_synset_folder(data_dir) -> bool:
    """True for an ImageFolder (no labels.csv) whose class folders are all
    WordNet synset ids such as ``n01440764``."""
    data_dir = os.fspath(data_dir)
    if os.path.isfile(os.path.join(data_dir, "labels.csv")) or not os.path.isdir(data_dir):
        return False
    classes = [d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d))]
    return bool(classes) and all(len(c) == 9 and c[0] == "n" and c[1:].isdigit()
                                 for c in classes)


def load_images(paths, image_size=224, crop_pct=0.875):
    """Eval-transformed (PIL, torchvision-exact) images as one
    ``(N, image_size, image_size, 3)`` float32 array, RGB 0..255."""
    return np.stack([np.asarray(pil_eval_transform(os.fspath(p), image_size, crop_pct),
                                np.float32) for p in paths])
