"""Training on several workers (``tf.distribute.MultiWorkerMirroredStrategy``,
one process per host, each with its own ``TF_CONFIG``): which worker is the
chief, where each worker writes, how the input is sharded, and the Keras
``fit`` model that works around two Keras 3 defects under this strategy.

Rules (the pattern of the Keras 2 multi-worker guide):

* **One writer.** Only the chief (task ``chief``, or ``worker`` 0 when the
  cluster has no ``chief`` job) writes the run files into ``output_dir``;
  every other worker runs the same callbacks into a temporary folder of its
  own (:func:`worker_dir`), deleted at the end: every worker runs the same
  callbacks, saves included, so all take the same steps.
* **Resume reads the chief's backup.** A resumed non-chief worker starts
  from a copy of the chief's ``backup/`` (:func:`copy_resume_state`), so all
  workers restore the same epoch and state; ``output_dir`` must therefore
  be on a file system all workers see (NFS, GCS, ...).
* **Each example once per epoch.** A ``train_fn`` that accepts an
  ``input_context`` keyword gets one (``tf.distribute.InputContext``) per
  worker and returns that worker's shard in per-replica batches
  (:func:`distribute_train_data`); any other ``train_fn`` returns global
  batches, which are split by ``tf.data``'s ``DATA`` auto-shard policy: every
  worker reads the whole stream and keeps its part of each global batch, so
  the stream must be in the same order on every worker (fixed shuffle seed,
  deterministic maps). Either way global batch ``t`` holds the same
  examples as batch ``t`` of a single-process run.

Keras 3 defects worked around by :class:`MultiWorkerModel` (keras-team/keras
issue 20585; Keras 3.15, TensorFlow 2.21): ``fit`` of a model built inside a
multi-worker scope fails before the first step (``strategy.reduce`` of the
``(x, y)`` batch it draws to build the model: a nested structure), and after
it (``strategy.reduce(MEAN, axis=0)`` of the scalar logs). The model to
``fit`` is therefore the same graph of layers (same variables, same weight
file layout) wrapped *outside* the strategy scope and returning each log as a
1-element vector: the reported loss and metrics are the mean over workers of
each worker's value (exact when all workers see equally many examples).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training import rundir


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster: ``task_type``/``task_id`` as in
    ``TF_CONFIG`` (``None``/0 for a single process), ``num_workers``
    (processes with an input pipeline) and ``is_chief``."""

    task_type: str | None
    task_id: int
    num_workers: int
    is_chief: bool


@mobileone_export("mobileone_tf.training")
def worker_role(strategy) -> WorkerRole:
    """The :class:`WorkerRole` of this process under ``strategy`` (a single
    process, chief, for every strategy without a cluster resolver)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return WorkerRole(None, 0, 1, True)
    jobs = resolver.cluster_spec().as_dict()
    num = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    chief = (task_type in (None, "chief")
             or (task_type == "worker" and task_id == 0 and "chief" not in jobs))
    return WorkerRole(task_type, task_id, max(num, 1), chief)


def worker_dir(output_dir, role: WorkerRole) -> str:
    """Where this worker writes its run files: ``output_dir`` for the chief,
    a new folder in the system's temporary directory for any other worker
    (the caller deletes it: :func:`remove_worker_dir`)."""
    if role.is_chief:
        return os.fspath(output_dir)
    return tempfile.mkdtemp(prefix=f"mobileone_tf-{role.task_type}{role.task_id}-")


def remove_worker_dir(path, output_dir):
    """Deletes a non-chief worker's folder (never ``output_dir``)."""
    if os.path.abspath(path) != os.path.abspath(os.fspath(output_dir)):
        shutil.rmtree(path, ignore_errors=True)


def copy_resume_state(output_dir, write_dir):
    """Copies the chief's ``backup/`` and ``log.csv`` into a non-chief
    worker's folder, so that its ``BackupAndRestore`` restores the same state
    as the chief's and its summary counts the same epochs."""
    output_dir = os.fspath(output_dir)
    if os.path.abspath(output_dir) == os.path.abspath(write_dir):
        return
    source = os.path.join(output_dir, rundir.BACKUP)
    if os.path.isdir(source):
        shutil.copytree(source, os.path.join(write_dir, rundir.BACKUP), dirs_exist_ok=True)
    if os.path.isfile(os.path.join(output_dir, rundir.LOG)):
        shutil.copyfile(os.path.join(output_dir, rundir.LOG),
                        os.path.join(write_dir, rundir.LOG))


def accepts_input_context(fn) -> bool:
    """True when ``fn`` takes an ``input_context`` keyword argument."""
    try:
        return "input_context" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins, C callables
        return False


def data_sharded(dataset):
    """``dataset`` with the ``DATA`` auto-shard policy (its elements are
    split between workers; see the module docstring)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def distribute_train_data(strategy, train_fn, image_size, magnitude, prepare=None):
    """The training data of one resizing stage for ``fit`` under a
    multi-worker ``strategy``: ``strategy.distribute_datasets_from_function``
    when ``train_fn`` accepts ``input_context`` (it returns this worker's
    shard in per-replica batches, ``input_context.get_per_replica_batch_size(
    global batch)`` images, the same number of batches on every worker), else
    the global batches of ``train_fn(image_size, magnitude)`` with the
    ``DATA`` auto-shard policy. ``prepare``: a ``Dataset -> Dataset`` applied
    to each worker's dataset (e.g. one-hot labels)."""
    prepare = prepare or (lambda ds: ds)
    if accepts_input_context(train_fn):
        def dataset_fn(input_context):
            return prepare(train_fn(image_size, magnitude, input_context=input_context))
        return strategy.distribute_datasets_from_function(dataset_fn)
    return data_sharded(prepare(train_fn(image_size, magnitude)))


class MultiWorkerModel(keras.Model):
    """The model that ``fit`` trains under a multi-worker strategy: the
    layers (and variables) of a model built in the strategy's scope, wrapped
    outside it, whose train/test steps return each log value as a
    1-element vector (see the module docstring). Construct it outside
    ``strategy.scope()`` and call ``compile``/``fit`` inside."""

    def __init__(self, model, **kwargs):
        super().__init__(model.inputs, model.outputs, name=model.name, **kwargs)

    def train_step(self, data):
        return _as_vectors(super().train_step(data))

    def test_step(self, data):
        return _as_vectors(super().test_step(data))


def _as_vectors(logs):
    return {k: keras.ops.reshape(v, (1,)) for k, v in logs.items()}


def fit_model(model, strategy):
    """``model`` itself, or a :class:`MultiWorkerModel` over its layers under
    a multi-worker ``strategy`` (call outside ``strategy.scope()``)."""
    if worker_role(strategy).num_workers > 1:
        return MultiWorkerModel(model)
    return model
