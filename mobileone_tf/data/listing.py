"""Which images a folder holds, and their labels. Imports no TensorFlow.

Layouts understood by :func:`list_examples`:

* a folder with ``labels.csv`` (header ``file,label``; ``file`` relative to
  that folder, ``label`` an integer class index, the ImageNet-1k index for
  ImageNet models);
* an ImageFolder: one subfolder per class holding images (any depth).
  Subfolders named by WordNet synset (``n01440764`` ...) are mapped to
  ImageNet-1k indices when a ``synset_to_index`` mapping is given (see
  :func:`read_class_index`, or
  ``mobileone_tf.models.imagenet_synset_to_index()``); otherwise the sorted
  folder names are indexed ``0..N-1``.

:data:`IMAGE_EXTENSIONS` is the one list of image file types of the package:
every listing (evaluation, training, calibration, distillation) uses it, and
both decoders (:func:`mobileone_tf.data.open_image` with PIL, the in-graph
:func:`mobileone_tf.data.decode_image`) read all of them.
"""

from __future__ import annotations

import csv
import fnmatch
import os
from typing import NamedTuple

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.data")("IMAGE_EXTENSIONS")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
"""Image file name endings (compared lower-case). GIF: first frame."""

LABELS_CSV = "labels.csv"


@mobileone_export("mobileone_tf.data")
def is_image_file(name) -> bool:
    """True for a visible file name (no leading ``.``) ending in one of
    :data:`IMAGE_EXTENSIONS` (any case)."""
    name = os.path.basename(os.fspath(name))
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(folder):
    """Image files under ``folder``, recursive, sorted by folder then name."""
    paths, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):  # symlinked data folders too
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or a second link to a folder already listed
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        paths.extend(os.path.join(root, n) for n in sorted(files) if is_image_file(n))
    return paths


@mobileone_export("mobileone_tf.data")
def list_images(folder) -> list:
    """All image files under ``folder`` (recursive, any case of
    :data:`IMAGE_EXTENSIONS`), as sorted absolute paths (str).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: the folder holds no image.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = _walk_images(folder)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return paths


@mobileone_export("mobileone_tf.data")
def select_paths(paths, include=None, exclude=None) -> list:
    """The ``paths`` that match an ``include`` pattern (all when ``None``) and
    no ``exclude`` pattern, in their order.

    Patterns are shell globs (:mod:`fnmatch`, case-sensitive) matched against
    the whole absolute path, e.g. ``"*/tiny-imagenet-202/images/*_2[0-4].JPEG"``
    (a held-out slice: 5 images per class).
    """
    def hit(path, patterns):
        return any(fnmatch.fnmatchcase(path, pat) for pat in patterns)

    include, exclude = list(include or ()), list(exclude or ())
    return [p for p in paths
            if (not include or hit(p, include)) and not hit(p, exclude)]


@mobileone_export("mobileone_tf.data")
def list_image_folders(folders, exclude=None) -> list:
    """:func:`list_images` of one folder or several (concatenated in the given
    order), without the paths matching an ``exclude`` pattern
    (:func:`select_paths`).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no folder given, a folder holds no image, or the
            ``exclude`` patterns leave none (naming the patterns).
    """
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    if not folders:
        raise ValueError("no image folder given")
    paths = [p for folder in folders for p in list_images(folder)]
    kept = select_paths(paths, exclude=exclude)
    if not kept:
        raise ValueError(f"exclude patterns {list(exclude)} leave none of the {len(paths)} "
                         f"images of {', '.join(os.fspath(f) for f in folders)}")
    return kept


@mobileone_export("mobileone_tf.data")
class ImageFolders(NamedTuple):
    """One or several image folders read as one listing
    (:func:`list_image_folders`), without the paths matching ``exclude``
    (e.g. a held-out slice kept out of calibration)."""

    folders: tuple
    exclude: tuple = ()

    def paths(self) -> list:
        """The sorted image paths of each folder, concatenated, minus ``exclude``."""
        return list_image_folders(self.folders, self.exclude)

    def __str__(self):
        text = ", ".join(self.folders)
        return f"{text} without {', '.join(self.exclude)}" if self.exclude else text


@mobileone_export("mobileone_tf.data")
def image_folders(source, exclude=None):
    """``source`` -- a folder, a list/tuple of folders, or :class:`ImageFolders`
    -- as :class:`ImageFolders` (with ``exclude`` added); ``None`` for anything
    else (e.g. an image array)."""
    exclude = tuple(exclude or ())
    if isinstance(source, ImageFolders):
        return source._replace(exclude=source.exclude + exclude)
    if isinstance(source, (str, os.PathLike)):
        return ImageFolders((os.fspath(source),), exclude)
    if isinstance(source, (list, tuple)) and source \
            and all(isinstance(f, (str, os.PathLike)) for f in source):
        return ImageFolders(tuple(os.fspath(f) for f in source), exclude)
    return None


@mobileone_export("mobileone_tf.data")
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


@mobileone_export("mobileone_tf.data")
def class_names(data_dir) -> list:
    """Sorted visible subfolder names of an ImageFolder (the class index
    order when no ``synset_to_index`` is used)."""
    data_dir = os.fspath(data_dir)
    return sorted(d for d in os.listdir(data_dir)
                  if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith("."))


def _is_synset(name) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


@mobileone_export("mobileone_tf.data")
def is_synset_folder(data_dir) -> bool:
    """True for an ImageFolder (no ``labels.csv``) whose class folders are all
    WordNet synset ids such as ``n01440764``."""
    data_dir = os.fspath(data_dir)
    if os.path.isfile(os.path.join(data_dir, LABELS_CSV)) or not os.path.isdir(data_dir):
        return False
    classes = class_names(data_dir)
    return bool(classes) and all(_is_synset(c) for c in classes)


def _check_num_classes(num_classes):
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


@mobileone_export("mobileone_tf.data")
def list_examples(data_dir, synset_to_index=None, num_classes=None):
    """Lists the labelled images of a ``labels.csv`` folder or an ImageFolder.

    Args:
        data_dir: folder holding ``labels.csv`` or class subfolders.
        synset_to_index: optional ``{synset: class index}`` for ImageFolders
            with synset-named subfolders. Ignored for ``labels.csv`` folders.
        num_classes: the model's class count; when given, every label must
            lie in ``0..num_classes-1`` (otherwise an out-of-range label would
            silently be scored as a miss).

    Returns:
        ``(paths, labels)``: a list of absolute file paths (str) and a list of
        int labels, in a deterministic order (``labels.csv`` order, or sorted
        class folder then sorted file name).

    Raises:
        FileNotFoundError: ``data_dir`` missing, or ``labels.csv`` rows that
            point at missing files (the first few are named).
        ValueError: empty folder / no images; a malformed ``labels.csv``
            (named as ``labels.csv:LINE``: a label that is not an integer,
            negative, or ``>= num_classes``); class folders not in
            ``synset_to_index``, mapped to an index ``>= num_classes``, or
            more class folders than ``num_classes``.
    """
    _check_num_classes(num_classes)
    data_dir = os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    csv_path = os.path.join(data_dir, LABELS_CSV)
    if os.path.isfile(csv_path):
        return _list_labels_csv(data_dir, csv_path, num_classes)
    classes = class_names(data_dir)
    if not classes:
        raise ValueError(f"{data_dir} holds neither {LABELS_CSV} nor class subfolders "
                         "(expected an ImageFolder: one subfolder of images per class)")
    class_ids = _class_ids(data_dir, classes, synset_to_index, num_classes)
    paths, labels = [], []
    for c in classes:
        found = _walk_images(os.path.join(data_dir, c))
        paths.extend(found)
        labels.extend([class_ids[c]] * len(found))
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in the class "
                         f"folders of {data_dir}")
    return paths, labels


def _class_ids(data_dir, classes, synset_to_index, num_classes):
    if synset_to_index is None:
        if num_classes is not None and len(classes) > num_classes:
            raise ValueError(f"{data_dir}: {len(classes)} class folders, but the model has "
                             f"{num_classes} classes")
        return {c: i for i, c in enumerate(classes)}
    unknown = [c for c in classes if c not in synset_to_index]
    if unknown:
        raise ValueError(f"{data_dir}: class folders not in the class index: "
                         f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
                         f"({len(unknown)} of {len(classes)})")
    class_ids = {c: int(synset_to_index[c]) for c in classes}
    for c, i in class_ids.items():
        if i < 0 or (num_classes is not None and i >= num_classes):
            raise ValueError(f"{os.path.join(data_dir, c)}: class index {i} out of range "
                             f"for {num_classes} classes (0..{(num_classes or 1) - 1})")
    return class_ids


def _list_labels_csv(data_dir, csv_path, num_classes):
    paths, labels, missing = [], [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames \
                or "label" not in reader.fieldnames:
            raise ValueError(f"{csv_path}: expected a header 'file,label', found "
                             f"{reader.fieldnames}")
        for row in reader:
            labels.append(_csv_label(csv_path, reader.line_num, row, num_classes))
            path = os.path.join(data_dir, row["file"] or "")
            if not os.path.isfile(path):
                missing.append(row["file"])
            paths.append(path)
    if missing:
        raise FileNotFoundError(f"{csv_path}: {len(missing)} listed files do not exist, "
                                f"e.g. {missing[:5]}")
    if not paths:
        raise ValueError(f"{csv_path} lists no images")
    return paths, labels


def _csv_label(csv_path, line, row, num_classes) -> int:
    """The label of one ``labels.csv`` row; ValueError naming ``csv:line``,
    the file and the value when it is not an integer in range."""
    value = row["label"]
    where = f"{csv_path}:{line} ({row['file']})"
    try:
        label = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {value!r} is not an integer") from None
    if label < 0:
        raise ValueError(f"{where}: negative label {label}")
    if num_classes is not None and label >= num_classes:
        raise ValueError(f"{where}: label {label} out of range for the model's "
                         f"{num_classes} classes (0..{num_classes - 1})")
    return label
