"""The training loop: Keras ``fit`` per resizing stage, then fusing and the
run's final files.

Model input: NHWC float32 RGB 0..255, labels int class indices (one-hot
inside, for label smoothing); output: softmax probabilities
``(batch, classes)``.
"""

import contextlib
import dataclasses
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
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training import callbacks as cb
from mobileone_tf.training import multiworker, rundir
from mobileone_tf.training.config import TrainConfig
from mobileone_tf.training.distribute import make_strategy
from mobileone_tf.training.model import build_model, synchronize_batchnorm
from mobileone_tf.training.optim import make_optimizer

logger = logging.getLogger("mobileone_tf.training")


def one_hot(classes):
    """``(x, y) -> (x, one_hot(y, classes))`` for ``Dataset.map``."""
    import tensorflow as tf
    return lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), classes))


@mobileone_export("mobileone_tf.training")
def train(config: TrainConfig, train_fn: Callable, val_ds, classes: int,
          output_dir, steps_per_epoch: int, extra_callbacks=(), strategy=None, *,
          overwrite=False, resume=False, skipped=(), total_images=None, build_fn=None):
    """Trains per ``config``; returns the summary dict (also ``summary.json``).

    Args:
        train_fn: ``(image_size, magnitude) -> tf.data.Dataset`` of
            ``(float32 (B, S, S, 3) RGB 0..255, int32 (B,))`` global batches.
            Under a multi-worker strategy it may also take an
            ``input_context`` keyword and return this worker's shard in
            per-replica batches (see
            :mod:`mobileone_tf.training.multiworker`).
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
        build_fn: ``(config, classes) -> keras.Model``, called in the
            strategy's scope: the model to train (default:
            :func:`~mobileone_tf.training.build_model`; e.g. a small network of
            MobileOneBlocks). With ``config.sync_batchnorm`` its blocks get
            synchronized BatchNorm.

    Multi-worker (``MultiWorkerMirroredStrategy``): only the chief writes
    into ``output_dir``; the other workers write into temporary folders they
    delete, and resume from the chief's backup (see
    :mod:`mobileone_tf.training.multiworker`).

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
    role = multiworker.worker_role(strategy)
    stages = config.stages()
    with strategy.scope():
        model = (build_fn or build_model)(config, classes)
        if config.sync_batchnorm and build_fn is not None:
            model = synchronize_batchnorm(model)
        optimizer = make_optimizer(config, steps_per_epoch, model)
        optimizer.build(model.trainable_variables)
    fit_model = multiworker.fit_model(model, strategy)
    # the model is built (weights fit): only now may an old run go
    if action == "overwrite" and role.is_chief:
        rundir.clear_run(output_dir)
    if role.is_chief:
        os.makedirs(output_dir, exist_ok=True)
    write_dir = multiworker.worker_dir(output_dir, role)
    try:
        return _fit_and_finish(_Run(
            config=config, train_fn=train_fn, val_ds=val_ds, classes=classes,
            extra_callbacks=extra_callbacks, skipped=skipped, total_images=total_images,
            output_dir=output_dir, write_dir=write_dir, strategy=strategy, role=role,
            model=model, fit_model=fit_model, optimizer=optimizer, stages=stages,
            action=action, done=done))
    finally:
        multiworker.remove_worker_dir(write_dir, output_dir)


@dataclasses.dataclass
class _Run:
    """One call of :func:`train` once its model is built: the caller's
    arguments, and where it stands (``action``: ``"new"``, ``"overwrite"``
    or ``"resume"``; ``done``: epochs completed before; ``write_dir``: where
    this worker writes, ``output_dir`` for the chief)."""

    config: TrainConfig
    train_fn: Callable
    val_ds: object
    classes: int
    extra_callbacks: tuple
    skipped: tuple
    total_images: object
    output_dir: str
    write_dir: str
    strategy: object
    role: object
    model: keras.Model
    fit_model: keras.Model
    optimizer: object
    stages: list
    action: str
    done: int


def _fit_and_finish(run: _Run):
    """The body of :func:`train` once the model is built: callbacks write
    into ``run.write_dir`` (``output_dir`` for the chief)."""
    config, val_ds, classes, role = run.config, run.val_ds, run.classes, run.role
    strategy, model, fit_model, done = run.strategy, run.model, run.fit_model, run.done
    write_dir, action, skipped, total_images = (run.write_dir, run.action, run.skipped,
                                                run.total_images)
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    if action == "resume" and not role.is_chief:
        multiworker.copy_resume_state(run.output_dir, write_dir)  # as the chief restores
    rows = rundir.truncate_log(write_dir, done) if action == "resume" else []
    best = max((v for v in (_number(r.get(monitor)) for r in rows) if v is not None),
               default=None)
    metrics = ["accuracy"] if classes <= 5 else [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(5, name="top5")]
    prepare = one_hot(classes)
    if val_ds is not None:
        val_ds = val_ds.map(prepare)
        if role.num_workers > 1:
            val_ds = multiworker.data_sharded(val_ds)
    callbacks, thr, nan_guard = cb.make_callbacks(
        write_dir, batch_size=config.batch_size, ema=config.ema_decay > 0,
        monitor=monitor, best_so_far=best, skipped=skipped, total_images=total_images,
        extra=run.extra_callbacks)

    def compile_model():
        with strategy.scope():
            fit_model.compile(optimizer=run.optimizer,
                              loss=keras.losses.CategoricalCrossentropy(
                                  label_smoothing=config.label_smoothing),
                              metrics=metrics, jit_compile=config.jit_compile,
                              run_eagerly=config.run_eagerly)

    # Segments: resizing stages split further at the backbone unfreeze epoch.
    bounds = sorted({0, config.epochs, *[s for s, *_ in run.stages],
                     *([config.freeze_backbone_epochs]
                       if 0 < config.freeze_backbone_epochs < config.epochs else [])})
    t_start = time.perf_counter()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= done:
            continue
        size, mag = next((s, m) for (s0, e0, s, m) in run.stages if s0 <= a < e0)
        frozen = a < config.freeze_backbone_epochs
        for layer in model.layers:
            if layer.name not in (mo_models.HEAD_NAME, "avg_pool") and layer.weights:
                layer.trainable = not frozen
        compile_model()
        if role.num_workers > 1:
            ds = multiworker.distribute_train_data(strategy, run.train_fn, size, mag,
                                                   prepare=lambda d: d.map(prepare))
        else:
            ds = run.train_fn(size, mag).map(prepare)
        # several workers: fit inside the scope (the wrapper was built outside it)
        with strategy.scope() if role.num_workers > 1 else contextlib.nullcontext():
            fit_model.fit(ds, validation_data=val_ds, epochs=b, initial_epoch=max(a, done),
                          shuffle=False,  # the datasets shuffle themselves
                          steps_per_epoch=config.steps_per_epoch,
                          validation_steps=config.validation_steps,
                          callbacks=callbacks, verbose=config.verbose if role.is_chief else 0)
        if nan_guard.diverged_at is not None:
            epoch, batch = nan_guard.diverged_at
            raise FloatingPointError(
                f"Training diverged (loss NaN/inf) at epoch {epoch}, batch {batch}; "
                "nothing was fused or written beyond the checkpoints of completed epochs. "
                "Lower --base_lr, lengthen --warmup_epochs or set --clip_grad_norm "
                "(fine-tuning the BatchNorm-free fused model needs all three smaller/longer "
                "than the from-scratch recipe).")
        if fit_model.stop_training:
            break
    else:
        if done >= config.epochs:  # every epoch was done before a crash in finish()
            compile_model()
            _restore_backup(fit_model, run.optimizer, write_dir)
    for layer in model.layers:
        layer.trainable = True
    # fit() leaves the EMA weights in the model (optimizer.finalize_variable_values).
    elapsed = time.perf_counter() - t_start
    return finish(model, config, write_dir, val_ds, thr.history, elapsed,
                  resumed_at=done if action == "resume" else None, skipped=skipped,
                  total_images=total_images, fit_model=fit_model, write=role.is_chief)


def _restore_backup(model, optimizer, output_dir):
    """Loads the last backup (weights and optimizer state) and, as ``fit``
    does at its end, moves the EMA weights into the model."""
    model.load_weights(os.path.join(output_dir, rundir.BACKUP, "latest.weights.h5"))
    if optimizer.use_ema:
        optimizer.finalize_variable_values(model.trainable_variables)


@mobileone_export("mobileone_tf.training")
def finish(model, config, output_dir, val_ds, ips, elapsed, resumed_at=None, skipped=(),
           total_images=None, *, fit_model=None, write=True):
    """Fuses the trained (EMA) model and writes ``fused.keras``,
    ``fused.weights.h5`` (MobileOne models only: it records the variant) and,
    last, ``summary.json`` (each atomically); then removes ``backup/``.

    ``fit_model``: the model that ``fit`` trained, if not ``model`` (a
    :class:`~mobileone_tf.training.multiworker.MultiWorkerModel`): it runs
    the final evaluation. ``write=False`` (a non-chief worker): nothing is
    written or removed; the summary is only returned.

    Returns:
        the summary: ``variant``, ``epochs`` (rows of this run's
        ``log.csv``), ``best_val_top1`` (best epoch; train accuracy without
        validation data), ``final_val_top1``, ``train_images_per_sec`` (mean
        over this session's epochs), ``wall_time_s`` (this session),
        ``resumed_at_epoch`` (None for an uninterrupted run),
        ``skipped_images`` (``{"count", "files"}``), ``config``; plus
        ``model`` and ``fused_model`` (not written to the JSON).
    """
    fit_model = model if fit_model is None else fit_model
    rows = rundir.read_log(output_dir)
    # CSVLogger writes "NA" in the val_ columns of a run without validation data
    key = "val_accuracy" if any(_number(r.get("val_accuracy")) is not None
                                for r in rows) else "accuracy"
    vals = [v for v in (_number(r.get(key)) for r in rows) if v is not None]
    final_top1 = None
    if val_ds is not None:  # under a multi-worker strategy: on every worker
        res = fit_model.evaluate(val_ds, steps=config.validation_steps, verbose=0,
                                 return_dict=True)
        final_top1 = float(res["accuracy"])
    fused = mo_models.fuse(model) if mo_models.model_form(model) == "branched" else model
    skipped = sorted(os.fspath(p) for p in skipped)
    summary = {"variant": config.variant, "epochs": len(rows),
               "best_val_top1": max(vals) if vals else None, "final_val_top1": final_top1,
               "train_images_per_sec": float(np.mean(ips)) if ips else None,
               "wall_time_s": elapsed, "resumed_at_epoch": resumed_at,
               "skipped_images": {"count": len(skipped), "files": skipped},
               "config": config.to_json()}
    if write:
        _write_outputs(fused, config, output_dir, summary)
        if skipped:
            from mobileone_tf import data as mo_data
            logger.warning("training run: %s",
                           mo_data.describe_skipped(skipped, total_images))
        backup_dir = os.path.join(output_dir, rundir.BACKUP)
        if os.path.isdir(backup_dir) and not fit_model.stop_training:
            shutil.rmtree(backup_dir)
    summary["model"], summary["fused_model"] = model, fused
    return summary


def _write_outputs(fused, config, output_dir, summary):
    """``fused.keras``, ``fused.weights.h5`` and, last, ``summary.json``."""
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".partial-") as tmp:
        fused.save(os.path.join(tmp, "fused.keras"))
        with open(os.path.join(tmp, "fused.keras"), "rb") as f:
            fileio.atomic_write(os.path.join(output_dir, "fused.keras"), f.read())
    if mo_models.find_mobileone(fused) is not None:
        # MobileOne state file (records variant and form): loads into either
        # form, e.g. ``scripts/convert.py --weights fused.weights.h5 --classes N``.
        from mobileone_tf import weights as mo_weights
        mo_weights.write_weights_h5(mo_models.get_state(fused),
                                    os.path.join(output_dir, "fused.weights.h5"),
                                    config.variant, "fused", source="mobileone_tf.training",
                                    overwrite=True)
    fileio.write_json(summary, os.path.join(output_dir, rundir.SUMMARY))


def _number(text):
    """A ``log.csv`` cell as a float, or None (empty, ``NA``)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
