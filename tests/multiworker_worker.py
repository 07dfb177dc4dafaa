"""One worker process of tests/test_multiworker.py:
``python -m tests.multiworker_worker SPEC.json`` (``TF_CONFIG`` in the
environment for a multi-worker run, none for the single-process reference).

Trains a small network of MobileOneBlocks with
:func:`mobileone_tf.training.train` on generated images whose first pixel
holds the example's index; a pass-through layer at the input records, in
every training step, the indices this worker's replica received, so the
test counts what the model consumed (not what a pipeline produced).
Writes ``SPEC["result"] + ".records"`` as it goes (one JSON line
``[epoch, [indices]]`` per replica batch; kept when the process is killed),
and at the end ``SPEC["result"]`` (JSON: summary, role, the worker folders
this process saw in its ``TMPDIR`` at the end of training) and
``SPEC["result"] + ".npz"`` (every model variable, BatchNorm statistics
included). ``SPEC["kill_at"] = [epoch, batch]`` SIGKILLs this process after
that batch (a worker lost mid-epoch). With ``SPEC["snapshots"]``, every
model variable is also saved when the process's first training step starts
(``.start.npz``) and at the end of each epoch (``.epoch<N>.npz``).
"""

import json
import os
import signal
import sys
import tempfile

SPEC = json.load(open(sys.argv[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)

import keras  # noqa: E402

from mobileone_tf import layers as mo_layers  # noqa: E402
from mobileone_tf import models as mo_models  # noqa: E402
from mobileone_tf import training  # noqa: E402

SIZE, CLASSES = 16, 3
RECORDS = open(SPEC["result"] + ".records", "w")  # [epoch, [indices]] per line
EPOCH = {"now": -1}
SEEN_DIRS = {}        # worker folders in TMPDIR at the end of training


@keras.saving.register_keras_serializable(package="mobileone_tf_tests")
class RecordIndices(keras.layers.Layer):
    """Identity; in training, appends the indices of the batch (pixel
    [0, 0, 0] of every image) to RECORDS."""

    def call(self, x, training=None):
        if not training:
            return x

        def record(indices):
            batch = [int(round(float(i))) for i in indices.numpy()]
            RECORDS.write(json.dumps([EPOCH["now"], batch]) + "\n")
            RECORDS.flush()
            return np.int32(0)

        done = tf.py_function(record, [x[:, 0, 0, 0]], tf.int32)
        with tf.control_dependencies([done]):
            return tf.identity(x)


def build(config, classes):
    """3 branched blocks (dense 3x3 stride 2, depthwise 3x3 with identity,
    pointwise 1x1 with identity), k=2 branches each, softmax head."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = RecordIndices(name="record")(inputs)
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(x)
    x = mo_layers.MobileOneBlock(8, 3, 2, num_conv_branches=2, name="b0")(x)
    x = mo_layers.MobileOneBlock(8, 3, 1, depthwise=True, num_conv_branches=2, name="b1")(x)
    x = mo_layers.MobileOneBlock(8, 1, 1, num_conv_branches=2, name="b2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name=mo_models.HEAD_NAME)(x)
    return keras.Model(inputs, outputs, name="tiny_mobileone")


def examples(n):
    """Images float32 (n, 16, 16, 3) 0..255 whose pixel [0, 0, 0] is the
    index; labels int32 = the brightest channel."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = rng.uniform(0, 120, (n, SIZE, SIZE, 3)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, ..., c] += 120
    x[:, 0, 0, 0] = np.arange(n)
    return x, y


def train_fn(n, batch, seed):
    """Global batches (reshuffled every epoch, same order in every process)."""
    x, y = examples(n)

    def stream():
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            n, seed=seed, reshuffle_each_iteration=True)

    def global_batches(size, magnitude):
        return stream().batch(batch, drop_remainder=True)

    def worker_shard(size, magnitude, input_context=None):
        if input_context is None:
            return global_batches(size, magnitude)
        per_replica = input_context.get_per_replica_batch_size(batch)
        return stream().shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id).batch(
            per_replica, drop_remainder=True).take(n // batch)

    return worker_shard if SPEC.get("input_context") else global_batches


def _save_weights(model, suffix):
    np.savez(SPEC["result"] + suffix, **{v.path: v.numpy() for v in model.weights})


class Epochs(keras.callbacks.Callback):
    started = False

    def on_epoch_begin(self, epoch, logs=None):
        EPOCH["now"] = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if SPEC.get("snapshots") and not self.started:   # what the first step starts from
            self.started = True
            _save_weights(self.model, ".start.npz")

    def on_epoch_end(self, epoch, logs=None):
        if SPEC.get("snapshots"):
            _save_weights(self.model, f".epoch{epoch}.npz")

    def on_train_batch_end(self, batch, logs=None):
        if SPEC.get("kill_at") == [EPOCH["now"], batch]:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, logs=None):
        tmp = tempfile.gettempdir()
        SEEN_DIRS.update({d: sorted(os.listdir(os.path.join(tmp, d)))
                          for d in os.listdir(tmp) if d.startswith("mobileone_tf-")})


def main():
    keras.utils.set_random_seed(0)
    strategy = training.make_strategy(SPEC["strategy"])
    role = training.worker_role(strategy)
    config = training.TrainConfig(
        variant="s0", epochs=SPEC["epochs"], batch_size=SPEC["batch"], base_lr=0.2,
        warmup_epochs=0.0, image_sizes=(SIZE,), resize_epochs=(0,), resize_reference_epochs=1,
        eval_image_size=SIZE, ema_decay=SPEC.get("ema", 0.0), verbose=0, weight_decay=1e-4,
        label_smoothing=0.1, sync_batchnorm=SPEC["sync_bn"], check_images=False)
    n = SPEC["n"]
    summary = training.train(config, train_fn(n, SPEC["batch"], seed=1), None, CLASSES,
                             SPEC["output_dir"], n // SPEC["batch"], [Epochs()], strategy,
                             resume=SPEC.get("resume", False), build_fn=build)
    model = summary["model"]
    np.savez(SPEC["result"] + ".npz", **{v.path: v.numpy() for v in model.weights})
    result = {"summary": training.report(summary), "worker_dirs": SEEN_DIRS,
              "role": [role.task_type, role.task_id, role.num_workers, role.is_chief],
              "synchronized": [bool(getattr(layer, "synchronized_bn", False))
                               for layer in model.layers
                               if isinstance(layer, mo_layers.MobileOneBlock)]}
    with open(SPEC["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
