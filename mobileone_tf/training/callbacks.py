"""The Keras callbacks of a run: throughput, divergence guard, the report of
skipped (unreadable) training images, a simulated crash for tests, and
:func:`make_callbacks`, which assembles the list in its working order."""

import logging
import os
import time

import keras
import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training import rundir

logger = logging.getLogger("mobileone_tf.training")


class Throughput(keras.callbacks.Callback):
    """Training images/s per epoch, logged as ``images_per_sec``: wall clock
    of the train batches after the first one of each epoch (which includes
    tracing the train step), so steady-state speed. ``history``: one value
    per epoch."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._n = None, 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        else:
            self._n += 1
            self._t1 = now

    def on_epoch_end(self, epoch, logs=None):
        if self._n:
            ips = self._n * self.batch_size / max(self._t1 - self._t0, 1e-9)
            self.history.append(ips)
            if logs is not None:
                logs["images_per_sec"] = ips


class FailAt(keras.callbacks.Callback):
    """Raises RuntimeError at a given (epoch, batch): simulates a killed run
    (tests)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self._epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.epoch and batch == self.batch:
            raise RuntimeError(f"FailAt: simulated crash at epoch {self.epoch}, "
                               f"batch {self.batch}")


class StopOnNaN(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that remembers where it stopped (``diverged_at`` =
    ``(epoch, batch)``), so the run can fail instead of fusing and writing a
    broken model."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and self.diverged_at is None:
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                self.diverged_at = (self._epoch, batch)


class SkippedImages(keras.callbacks.Callback):
    """Names, at the end of every epoch, the training images the input
    pipeline skips because they cannot be decoded (found before training by
    :func:`mobileone_tf.data.find_undecodable`), with their count (of
    ``total``); a warning on the ``mobileone_tf.training`` logger."""

    def __init__(self, paths, total=None):
        super().__init__()
        self.paths, self.total = list(paths), total

    def on_epoch_end(self, epoch, logs=None):
        if self.paths:
            from mobileone_tf import data as mo_data
            logger.warning("epoch %d: training %s", epoch + 1,
                           mo_data.describe_skipped(self.paths, self.total))


def has_tensorboard() -> bool:
    """True when the optional ``tensorboard`` package is installed."""
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:  # optional dependency: logs go to log.csv only
        return False


@mobileone_export("mobileone_tf.training")
def make_callbacks(output_dir, *, batch_size, ema, monitor, best_so_far=None,
                   skipped=(), total_images=None, extra=()):
    """The callbacks of :func:`mobileone_tf.training.train`, in working order.

    ``CSVLogger`` comes first, before ``BackupAndRestore``: a crash between
    the two leaves a log row for an epoch the backup lacks, which the resumed
    run drops (:func:`rundir.truncate_log`) and re-runs. ``SwapEMAWeights``
    follows the backup (which keeps the raw weights) and precedes the
    checkpoints (which save the EMA weights). ``best_so_far``: the best
    ``monitor`` value of the epochs before a resume, so that
    ``best.weights.h5`` is replaced only by a better epoch.

    Returns:
        ``(callbacks, throughput, nan_guard)``.
    """
    thr, guard = Throughput(batch_size), StopOnNaN()
    callbacks = [keras.callbacks.CSVLogger(os.path.join(output_dir, rundir.LOG), append=True),
                 keras.callbacks.BackupAndRestore(os.path.join(output_dir, rundir.BACKUP),
                                                  delete_checkpoint=False),
                 guard]
    if ema:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks += [
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "best.weights.h5"),
                                        monitor=monitor, mode="max", save_best_only=True,
                                        save_weights_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "last.weights.h5"),
                                        save_weights_only=True),
        thr]
    if skipped:
        callbacks.append(SkippedImages(skipped, total_images))
    if has_tensorboard():
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(output_dir, "logs"), write_graph=False, profile_batch=0))
    return callbacks + list(extra), thr, guard
