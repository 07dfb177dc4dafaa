"""The command-line entry (``scripts/train.py``): data folders or TFRecord
shards in, checks before anything is built or removed, then
:func:`mobileone_tf.training.train`.

Images leave the pipelines as NHWC float32 RGB 0..255 with int32 labels.
"""

import dataclasses
import os

import tensorflow as tf

from mobileone_tf import data as mo_data
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training import multiworker, rundir
from mobileone_tf.training.config import TrainConfig
from mobileone_tf.training.distribute import make_strategy, set_precision
from mobileone_tf.training.loop import train
from mobileone_tf.training.model import check_weights


def folder_classes(data_dir):
    """Sorted class sub-folder names of an ImageFolder directory (index order).

    Raises:
        FileNotFoundError: no such directory.
        ValueError: no class folders, or a class folder with no images.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No such data directory: {data_dir}")
    classes = mo_data.class_names(data_dir)
    if not classes:
        raise ValueError(f"{data_dir} has no class sub-folders (ImageFolder "
                         "layout: DIR/<class>/<image>).")
    empty = [c for c in classes if not any(
        mo_data.is_image_file(f) for _, _, files in os.walk(os.path.join(data_dir, c))
        for f in files)]
    if empty:
        raise ValueError(f"{data_dir}: class folders without images: {empty[:10]}")
    return classes


def check_data(train_dir, val_dir=None, classes=None):
    """Validates an ImageFolder train/val pair before anything is built.

    Returns the class names. Raises ValueError / FileNotFoundError for an
    empty folder, different class sets in train and val, or ``classes`` that
    does not match the number of class folders.
    """
    names = folder_classes(train_dir)
    if val_dir is not None:
        val = folder_classes(val_dir)
        if val != names:
            raise ValueError(
                f"Train and val class folders differ: only in train "
                f"{sorted(set(names) - set(val))[:10]}, only in val "
                f"{sorted(set(val) - set(names))[:10]}")
    if classes is not None and classes != len(names):
        raise ValueError(f"--classes={classes} but {train_dir} has {len(names)} "
                         "class folders.")
    return names


def folder_dataset(data_dir, batch_size, image_size, training, magnitude=0.0,
                   seed=0, crop_pct=0.875, crop_scale_min=0.08, label_offset=0,
                   deterministic=False):
    """(images float32 NHWC RGB 0..255, int32 labels) from an ImageFolder dir
    (labels = sorted class-folder index) or TFRecord shards (file / glob;
    labels + ``label_offset``).

    Training: :func:`mobileone_tf.data.train_dataset` (random-resized crop
    of ``crop_scale_min``..1 of the area, flip, ``keras.layers.RandAugment(
    factor=magnitude)`` when ``magnitude > 0``, undecodable images skipped).
    ``deterministic``: the same order of examples on every call (slower
    parallel maps; needed when workers split the stream).
    Evaluation: :func:`mobileone_tf.data.eval_dataset` (resize short side to
    ``image_size / crop_pct``, centre crop; torchvision-exact).
    """
    if training:
        return mo_data.train_dataset(
            data_dir, batch_size, image_size, seed=seed, scale=(crop_scale_min, 1.0),
            label_offset=label_offset, deterministic=deterministic,
            augment="randaugment" if magnitude > 0 else None, magnitude=magnitude)
    if mo_data.is_tfrecord_source(data_dir):
        return mo_data.tfrecord_eval_dataset(data_dir, batch_size, image_size, crop_pct,
                                             label_offset=label_offset)
    return mo_data.eval_dataset(data_dir, batch_size=batch_size, image_size=image_size,
                                crop_pct=crop_pct)


@mobileone_export("mobileone_tf.training")
def run(config: TrainConfig, train_dir, val_dir, output_dir, extra_callbacks=(),
        label_offset=0, *, overwrite=False, resume=False):
    """Command-line entry: ImageFolder dirs or TFRecord shards -> :func:`train`.

    ``train_dir``/``val_dir``: an ImageFolder directory (class sub-folders),
    or a TFRecord file / glob pattern (ImageNet-style ``image/encoded``,
    ``image/class/label`` records, labels shifted by ``label_offset``; then
    ``config.classes`` is required, and without ``config.steps_per_epoch``
    the records are counted once). ``overwrite`` / ``resume``: see
    :func:`train`.

    Everything is checked before a model is built or an old run's files are
    removed: the output folder, the class folders, the source weights, and
    (``config.check_images``) every image: an unreadable validation image
    is an error naming it; unreadable training images are skipped by the
    pipeline and named at the end of every epoch and in the summary
    (``skipped_images``). The fit and validation datasets have their real
    length (batches), so Keras' progress bar shows the total.

    Raises:
        FileExistsError: see :func:`mobileone_tf.training.rundir.check_output_dir`.
        FileNotFoundError / ValueError: missing data, class folders that
            differ, weights that do not fit, ``--classes`` missing for
            TFRecords.
        mobileone_tf.data.ImageDecodeError: an unreadable validation image.
    """
    config.validate()
    rundir.check_output_dir(output_dir, overwrite, resume)
    tfrecord = mo_data.is_tfrecord_source(train_dir)
    if val_dir and mo_data.is_tfrecord_source(val_dir):
        mo_data.tfrecord_files(val_dir)  # FileNotFoundError before building
    if tfrecord:
        if not config.classes:
            raise ValueError("--classes is required with TFRecord training data.")
        files = mo_data.tfrecord_files(train_dir)  # FileNotFoundError before building
        names = [str(i) for i in range(config.classes)]
    else:
        names = check_data(train_dir, val_dir if val_dir and os.path.isdir(val_dir) else None,
                           config.classes)
    classes = len(names)
    state = check_weights(config, classes)
    if state is not None:
        config = dataclasses.replace(config, weights=state)
    # before any TensorFlow op (a multi-worker strategy must come first); the
    # checks above are plain Python, so a user error stops before the cluster
    strategy = make_strategy(config.strategy)
    set_precision(config.mixed_precision, config.strategy)
    # several workers split one stream of global batches (DATA auto-shard):
    # it must come in the same order on each of them
    deterministic = multiworker.worker_role(strategy).num_workers > 1
    skipped, n_train, n_val = (), None, None
    if not tfrecord:
        paths, _ = mo_data.list_examples(train_dir)
        n_train = len(paths)
        if config.check_images:
            if val_dir and os.path.isdir(val_dir):  # names an unreadable file
                n_val = len(mo_data.check_image_folder(val_dir)[0])
            skipped = mo_data.find_undecodable(paths)
    elif not config.steps_per_epoch:
        n_train = mo_data.count_records(files)
    # batches per pass (drop_remainder); None when unknown (TFRecords, steps given)
    batches = None if n_train is None else max((n_train - len(skipped)) // config.batch_size, 1)
    steps = config.steps_per_epoch or batches

    def train_fn(size, mag):
        ds = folder_dataset(train_dir, config.batch_size, size, True, mag, config.seed,
                            crop_scale_min=config.crop_scale_min, label_offset=label_offset,
                            deterministic=deterministic)
        # a known length: the progress bar shows the total; repeat() refills
        # the last batches should the count be off (e.g. unchecked bad images)
        return ds if batches is None else ds.repeat().take(batches)

    val_ds = folder_dataset(val_dir, config.batch_size, config.eval_image_size, False,
                            label_offset=label_offset) if val_dir else None
    if n_val:  # every image decodes: the batch count is exact
        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(
            -(-n_val // config.batch_size)))
    summary = train(config, train_fn, val_ds, classes, output_dir, steps, extra_callbacks,
                    strategy, overwrite=overwrite, resume=resume, skipped=skipped,
                    total_images=n_train)
    summary["class_names"] = names
    return summary


@mobileone_export("mobileone_tf.training")
def report(summary) -> dict:
    """The JSON-ready part of a summary (without the models and the config)."""
    return {k: v for k, v in summary.items() if k not in ("model", "fused_model", "config")}
