"""Image folders -> ``tf.data``: listing, decoding, the standard evaluation
transform.

Layouts understood by :func:`list_examples`:

* a folder with ``labels.csv`` (``file,label``; ``file`` relative to that
  folder, ``label`` the ImageNet-1k index 0..999);
* an ImageFolder: one sub-folder per class. Sub-folders named by WordNet
  synset (``n01440764``) map to their ImageNet-1k index when a
  ``synset_to_index`` mapping is given (see :func:`imagenet_synset_to_index`);
  otherwise classes are the sorted folder names, indexed 0..N-1.

Evaluation transform (timm/torchvision's standard, ``crop_pct`` 0.875): RGB,
bilinear resize of the short side to ``image_size / crop_pct`` (256 for 224),
centre crop ``image_size``. :func:`eval_dataset` does it with PIL, exactly as
torchvision's ``Resize(256)`` + ``CenterCrop(224)`` on PIL images (so the
figures of PyTorch evaluations are reproduced image for image);
:func:`eval_transform` is the in-graph TensorFlow equivalent (accurate-DCT JPEG
decoding, within 1 level per pixel of PIL). Output images are NHWC float32 RGB
0..255: the models normalize inside (``include_preprocessing=True``).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def imagenet_synset_to_index() -> dict:
    """``{synset: index}`` of ImageNet-1k (from :func:`mobileone_tf.weights.imagenet_class_index`)."""
    from mobileone_tf import weights
    return {synset: i for i, (synset, _) in enumerate(weights.imagenet_class_index())}


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_examples(data_dir, synset_to_index="auto"):
    """Lists ``(paths, labels)`` of a labelled image folder.

    Args:
        data_dir: folder with ``labels.csv`` or class sub-folders.
        synset_to_index: ``{folder name: label}`` for ImageFolders;
            ``"auto"`` (default): ImageNet indices when every class folder is
            a WordNet synset id (``n01440764``), else sorted folder names
            0..N-1; ``None``: always sorted folder names.

    Returns:
        ``(list of str paths, np.ndarray int32 labels)``, sorted by path.

    Raises:
        FileNotFoundError: missing folder, or files named in labels.csv missing.
        ValueError: no images, or class folders not in ``synset_to_index``.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No such data folder: {data_dir}")
    labels_csv = os.path.join(data_dir, "labels.csv")
    paths, labels = [], []
    if os.path.isfile(labels_csv):
        with open(labels_csv, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{labels_csv} must have the columns 'file,label'")
            for row in reader:
                paths.append(os.path.join(data_dir, row["file"]))
                labels.append(int(row["label"]))
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} files listed in {labels_csv} do not "
                                    f"exist, e.g. {missing[:3]}")
    else:
        classes = sorted(d for d in os.listdir(data_dir)
                         if os.path.isdir(os.path.join(data_dir, d)))
        if synset_to_index == "auto":
            looks_like_synsets = classes and all(
                len(c) == 9 and c[0] == "n" and c[1:].isdigit() for c in classes)
            synset_to_index = imagenet_synset_to_index() if looks_like_synsets else None
        if synset_to_index is not None:
            unknown = [c for c in classes if c not in synset_to_index]
            if unknown:
                raise ValueError(f"Class folders of {data_dir} not in the class mapping: "
                                 f"{unknown[:5]}")
            mapping = {c: int(synset_to_index[c]) for c in classes}
        else:
            mapping = {c: i for i, c in enumerate(classes)}
        for c in classes:
            for root, _, files in sorted(os.walk(os.path.join(data_dir, c))):
                for name in sorted(files):
                    if _is_image(name):
                        paths.append(os.path.join(root, name))
                        labels.append(mapping[c])
    if not paths:
        raise ValueError(f"No images found in {data_dir} (expected labels.csv or class "
                         f"sub-folders with {', '.join(IMAGE_EXTENSIONS)} files)")
    order = np.argsort(paths, kind="stable")
    return [paths[i] for i in order], np.asarray(labels, np.int32)[order]


def list_images(data_dir):
    """All image files under a folder (recursive, sorted), labelled or not.

    Raises:
        FileNotFoundError / ValueError: missing folder / no images.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No such image folder: {data_dir}")
    paths = sorted(os.path.join(root, name) for root, _, files in os.walk(data_dir)
                   for name in files if _is_image(name))
    if not paths:
        raise ValueError(f"No images found in {data_dir} ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def decode_image(contents):
    """Encoded bytes -> ``(H, W, 3)`` uint8 RGB (greyscale and RGBA converted).

    JPEGs are decoded with the accurate integer DCT, as PIL/libjpeg do
    (TensorFlow's default fast DCT differs by up to 16 levels per pixel).
    """
    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def resize_short_side(image, size):
    """Bilinear resize so that the short side is ``size`` (the long side is
    ``int(size * long / short)``, as torchvision's ``Resize(int)``)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, tf.cast(size, tf.float64), tf.floor(size * h / short))
    new_w = tf.where(w <= h, tf.cast(size, tf.float64), tf.floor(size * w / short))
    return tf.image.resize(image, tf.cast(tf.stack([new_h, new_w]), tf.int32),
                           method="bilinear", antialias=True)


def eval_transform(image, image_size=224, crop_pct=0.875):
    """Resize short side to ``image_size / crop_pct``, centre crop ``image_size``.

    Args:
        image: ``(H, W, 3)`` uint8 or float RGB.

    Returns:
        ``(image_size, image_size, 3)`` float32 RGB 0..255 (integer-valued,
        as PIL's uint8 resize; within 1 level of torchvision's PIL pipeline).
    """
    resize = int(math.floor(image_size / crop_pct))
    image = resize_short_side(tf.cast(image, tf.float32), resize)
    # PIL (torchvision's eval path) resizes uint8 images to uint8: round alike
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    shape = tf.shape(image)
    top = (shape[0] - image_size) // 2
    left = (shape[1] - image_size) // 2
    image = image[top:top + image_size, left:left + image_size]
    image.set_shape([image_size, image_size, 3])
    return image


def pil_eval_transform(path, image_size=224, crop_pct=0.875):
    """torchvision's eval transform on a PIL image: ``Resize(int(size /
    crop_pct))`` (bilinear, short side; long side ``int(size * long /
    short)``) then ``CenterCrop(size)`` (offsets ``round((n - size) / 2)``).

    Returns:
        ``(image_size, image_size, 3)`` float32 RGB 0..255.
    """
    from PIL import Image
    if isinstance(path, bytes):
        path = path.decode()
    with Image.open(path) as img:
        img = img.convert("RGB")
    resize = int(math.floor(image_size / crop_pct))
    w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - image_size) / 2.0))
    top = int(round((new_h - image_size) / 2.0))
    return np.asarray(img.crop((left, top, left + image_size, top + image_size)), np.float32)


def _pil_map(image_size, crop_pct):
    def load(path):
        image = tf.numpy_function(lambda p: pil_eval_transform(p, image_size, crop_pct),
                                  [path], tf.float32, stateful=False)
        image.set_shape([image_size, image_size, 3])
        return image
    return load


def eval_dataset(data_dir, batch_size=32, image_size=224, crop_pct=0.875,
                 synset_to_index="auto"):
    """Batched, prefetched evaluation dataset.

    Returns:
        ``(dataset, n)``: dataset of ``(images (B, S, S, 3) float32 0..255,
        labels (B,) int32)`` in :func:`list_examples` order, and its size.
    """
    paths, labels = list_examples(data_dir, synset_to_index)
    load = _pil_map(image_size, crop_pct)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(lambda p, y: (load(p), y), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(paths)


def image_folder_dataset(data_dir, batch_size=32, image_size=224, crop_pct=0.875,
                         limit=None):
    """Unlabelled images (e.g. a calibration / representative dataset),
    eval-transformed, batched.

    Returns:
        ``(dataset of (B, S, S, 3) float32 0..255, n)``.
    """
    paths = list_images(data_dir)
    if limit:
        paths = paths[:limit]
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(_pil_map(image_size, crop_pct), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE), len(paths)


def load_images(paths, image_size=224, crop_pct=0.875):
    """Eval-transformed (PIL) images as one ``(N, S, S, 3)`` float32 array."""
    return np.stack([pil_eval_transform(os.fspath(p), image_size, crop_pct) for p in paths])
