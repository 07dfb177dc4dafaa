"""The training loop: Keras ``fit`` per resizing stage, then fusing and the
run's final files.

Model input: NHWC float32 RGB 0..255, labels int class indices (one-hot
inside, for label smoothing); output: softmax probabilities
``(batch, classes)``.
"""

import logging
import os
import shutil
import tempfile
import time
from typing import Callable

import keras
import numpy as np

from mobileone_tf import fileio
from mobileone_tf import models as mo_models
from mobileone_tf.training import callbacks as cb
from mobileone_tf.training import rundir
from mobileone_tf.training.config import TrainConfig
from mobileone_tf.training.distribute import make_strategy
from mobileone_tf.training.model import build_model
from mobileone_tf.training.optim import make_optimizer

logger = logging.getLogger("mobileone_tf.training")


def one_hot(classes):
    """``(x, y) -> (x, one_hot(y, classes))`` for ``Dataset.map``."""
    import tensorflow as tf
    return lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), classes))


def train(config: TrainConfig, train_fn: Callable, val_ds, classes: int,
          output_dir, steps_per_epoch: int, extra_callbacks=(), strategy=None, *,
          overwrite=False, resume=False, skipped=(), total_images=None):
    """Trains per ``config``; returns the summary dict (also ``summary.json``).

    Args:
        train_fn: ``(image_size, magnitude) -> tf.data.Dataset`` of
            ``(float32 (B, S, S, 3) RGB 0..255, int32 (B,))`` global batches.
        val_ds: evaluation dataset, same element format (or None).
        classes: number of classes.
        output_dir: gets the run files (see :mod:`mobileone_tf.training.rundir`):
            ``backup/`` (BackupAndRestore), ``best.weights.h5``,
            ``last.weights.h5``, ``logs/`` (TensorBoard), ``log.csv``,
            ``fused.keras``, ``fused.weights.h5``, ``summary.json``.
        steps_per_epoch: optimizer steps per epoch (for the schedules).
        overwrite: start over in an ``output_dir`` that holds a run (its run
            files are removed first).
        resume: continue the unfinished run in ``output_dir`` from its last
            completed epoch (``keras.callbacks.BackupAndRestore``: weights,
            optimizer state, EMA and the step counter); its ``log.csv`` keeps
            the rows of the completed epochs only. Starts a new run when
            there is none.
        skipped: training images the input pipeline skips (unreadable),
            named at the end of every epoch and in the summary.
        total_images: number of training images (for those reports).

    Returns:
        the summary dict of :func:`finish`, plus ``model`` (trained, EMA
        weights) and ``fused_model``.

    Raises:
        FileExistsError: ``output_dir`` holds a finished run and not
            ``overwrite``, or an unfinished one without ``resume`` /
            ``overwrite`` (see :func:`rundir.check_output_dir`).
        FloatingPointError: the loss became NaN/inf (nothing fused or written
            beyond the checkpoints of completed epochs).
    """
    config.validate()
    output_dir = os.fspath(output_dir)
    action = rundir.check_output_dir(output_dir, overwrite, resume)
    done = rundir.backup_epoch(output_dir) if action == "resume" else 0
    strategy = strategy or make_strategy(config.strategy)
    stages = config.stages()
    with strategy.scope():
        model = build_model(config, classes)
        optimizer = make_optimizer(config, steps_per_epoch, model)
        optimizer.build(model.trainable_variables)
    # the model is built (weights fit): only now may an old run go
    if action == "overwrite":
        rundir.clear_run(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    rows = rundir.truncate_log(output_dir, done) if action == "resume" else []
    best = max((float(r[monitor]) for r in rows if r.get(monitor)), default=None)
    metrics = ["accuracy"] if classes <= 5 else [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(5, name="top5")]
    if val_ds is not None:
        val_ds = val_ds.map(one_hot(classes))
    callbacks, thr, nan_guard = cb.make_callbacks(
        output_dir, batch_size=config.batch_size, ema=config.ema_decay > 0,
        monitor=monitor, best_so_far=best, skipped=skipped, total_images=total_images,
        extra=extra_callbacks)

    def compile_model():
        with strategy.scope():
            model.compile(optimizer=optimizer,
                          loss=keras.losses.CategoricalCrossentropy(
                              label_smoothing=config.label_smoothing),
                          metrics=metrics, jit_compile=config.jit_compile,
                          run_eagerly=config.run_eagerly)

    # Segments: resizing stages split further at the backbone unfreeze epoch.
    bounds = sorted({0, config.epochs, *[s for s, *_ in stages],
                     *([config.freeze_backbone_epochs]
                       if 0 < config.freeze_backbone_epochs < config.epochs else [])})
    t_start = time.perf_counter()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= done:
            continue
        size, mag = next((s, m) for (s0, e0, s, m) in stages if s0 <= a < e0)
        frozen = a < config.freeze_backbone_epochs
        for layer in model.layers:
            if layer.name not in (mo_models.HEAD_NAME, "avg_pool") and layer.weights:
                layer.trainable = not frozen
        compile_model()
        ds = train_fn(size, mag).map(one_hot(classes))
        model.fit(ds, validation_data=val_ds, epochs=b, initial_epoch=max(a, done),
                  shuffle=False,  # the datasets shuffle themselves
                  steps_per_epoch=config.steps_per_epoch,
                  validation_steps=config.validation_steps,
                  callbacks=callbacks, verbose=config.verbose)
        if nan_guard.diverged_at is not None:
            epoch, batch = nan_guard.diverged_at
            raise FloatingPointError(
                f"Training diverged (loss NaN/inf) at epoch {epoch}, batch {batch}; "
                "nothing was fused or written beyond the checkpoints of completed epochs. "
                "Lower --base_lr, lengthen --warmup_epochs or set --clip_grad_norm "
                "(fine-tuning the BatchNorm-free fused model needs all three smaller/longer "
                "than the from-scratch recipe).")
        if model.stop_training:
            break
    else:
        if done >= config.epochs:  # every epoch was done before a crash in finish()
            compile_model()
            _restore_backup(model, optimizer, output_dir)
    for layer in model.layers:
        layer.trainable = True
    # fit() leaves the EMA weights in the model (optimizer.finalize_variable_values).
    elapsed = time.perf_counter() - t_start
    return finish(model, config, output_dir, val_ds, thr.history, elapsed,
                  resumed_at=done if action == "resume" else None, skipped=skipped,
                  total_images=total_images)


def _restore_backup(model, optimizer, output_dir):
    """Loads the last backup (weights and optimizer state) and, as ``fit``
    does at its end, moves the EMA weights into the model."""
    model.load_weights(os.path.join(output_dir, rundir.BACKUP, "latest.weights.h5"))
    if optimizer.use_ema:
        optimizer.finalize_variable_values(model.trainable_variables)


def finish(model, config, output_dir, val_ds, ips, elapsed, resumed_at=None, skipped=(),
           total_images=None):
    """Fuses the trained (EMA) model and writes ``fused.keras``,
    ``fused.weights.h5`` and, last, ``summary.json`` (each atomically); then
    removes ``backup/``.

    Returns:
        the summary: ``variant``, ``epochs`` (rows of this run's
        ``log.csv``), ``best_val_top1`` (best epoch; train accuracy without
        validation data), ``final_val_top1``, ``train_images_per_sec`` (mean
        over this session's epochs), ``wall_time_s`` (this session),
        ``resumed_at_epoch`` (None for an uninterrupted run),
        ``skipped_images`` (``{"count", "files"}``), ``config``; plus
        ``model`` and ``fused_model`` (not written to the JSON).
    """
    rows = rundir.read_log(output_dir)
    key = "val_accuracy" if rows and "val_accuracy" in rows[0] else "accuracy"
    vals = [float(r[key]) for r in rows if r.get(key)]
    final_top1 = None
    if val_ds is not None:
        res = model.evaluate(val_ds, steps=config.validation_steps, verbose=0,
                             return_dict=True)
        final_top1 = float(res["accuracy"])
    fused = mo_models.fuse(model) if mo_models.model_form(model) == "branched" else model
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".partial-") as tmp:
        fused.save(os.path.join(tmp, "fused.keras"))
        with open(os.path.join(tmp, "fused.keras"), "rb") as f:
            fileio.atomic_write(os.path.join(output_dir, "fused.keras"), f.read())
    # MobileOne state file (records variant and form): loads into either form,
    # e.g. ``scripts/convert.py --weights fused.weights.h5 --classes N``.
    from mobileone_tf import weights as mo_weights
    mo_weights.write_weights_h5(mo_models.get_state(fused),
                                os.path.join(output_dir, "fused.weights.h5"),
                                config.variant, "fused", source="mobileone_tf.training",
                                overwrite=True)
    skipped = sorted(os.fspath(p) for p in skipped)
    if skipped:
        from mobileone_tf import data as mo_data
        logger.warning("training run: %s", mo_data.describe_skipped(skipped, total_images))
    summary = {"variant": config.variant, "epochs": len(rows),
               "best_val_top1": max(vals) if vals else None, "final_val_top1": final_top1,
               "train_images_per_sec": float(np.mean(ips)) if ips else None,
               "wall_time_s": elapsed, "resumed_at_epoch": resumed_at,
               "skipped_images": {"count": len(skipped), "files": skipped},
               "config": config.to_json()}
    fileio.write_json(summary, os.path.join(output_dir, rundir.SUMMARY))
    backup_dir = os.path.join(output_dir, rundir.BACKUP)
    if os.path.isdir(backup_dir) and not model.stop_training:
        shutil.rmtree(backup_dir)
    summary["model"], summary["fused_model"] = model, fused
    return summary
