"""Quantization-aware fine-tuning by knowledge distillation from the float model.

Hinton et al., "Distilling the Knowledge in a Neural Network" (2015):
``T**2 * KL(softmax(t/T) || softmax(s/T))`` on the logits, plus an optional
label cross-entropy, so unlabelled in-domain images suffice. Optional MixUp /
CutMix of the inputs ("function matching", Beyer et al., "Knowledge
distillation: A good teacher is patient and consistent", CVPR 2022).
"""

from __future__ import annotations

import contextlib

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.calibration import frozen_ranges
from mobileone_tf.quantization.tfkeras import load_tfmot

MIX_MODES = (None, "mixup", "cutmix")


def distillation_loss(teacher_logits, student_logits, temperature):
    """``T**2 * KL(softmax(t/T) || softmax(s/T))``, mean over the batch (float32)."""
    import tensorflow as tf
    t = tf.nn.softmax(teacher_logits / temperature)
    log_t = tf.nn.log_softmax(teacher_logits / temperature)
    log_s = tf.nn.log_softmax(student_logits / temperature)
    return temperature ** 2 * tf.reduce_mean(tf.reduce_sum(t * (log_t - log_s), -1))


def _distiller(tf_keras, student, teacher, temperature, label_weight):
    import tensorflow as tf

    class Distiller(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher
            self.teacher.trainable = False
            self.kd_tracker = tf_keras.metrics.Mean(name="kd_loss")
            self.agree = tf_keras.metrics.Mean(name="top1_agreement")

        @property
        def metrics(self):
            return [self.kd_tracker, self.agree]

        def call(self, x, training=False):
            return self.student(x, training=training)

        def train_step(self, data):
            x, y = data if isinstance(data, tuple) else (data, None)
            t = self.teacher(x, training=False)
            with tf.GradientTape() as tape:
                s = self.student(x, training=True)
                loss = distillation_loss(t, s, temperature)
                if y is not None and label_weight > 0:
                    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        tf.cast(y, tf.int32), s))
                    loss = loss + label_weight * ce
            grads = tape.gradient(loss, self.student.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.student.trainable_variables))
            self.kd_tracker.update_state(loss)
            self.agree.update_state(tf.cast(
                tf.equal(tf.argmax(t, -1), tf.argmax(s, -1)), tf.float32))
            return {m.name: m.result() for m in self.metrics}

    return Distiller()


def check_schedule(epochs, steps_per_epoch):
    """Checks ``fine_tune``'s ``epochs`` (an integer >= 1) and
    ``steps_per_epoch`` (``None``: one pass over the data, or an integer
    >= 1; Keras' ``-1`` would loop forever over the repeated data).

    Raises:
        ValueError: either out of range (names the argument).
    """
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r} (0 would export "
                         "without any quantization-aware training; post-training int8: "
                         "mobileone_tf.export.to_tflite(..., quantize='int8'))")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool)
                                        or int(steps_per_epoch) != steps_per_epoch
                                        or steps_per_epoch < 1):
        raise ValueError(f"steps_per_epoch must be an integer >= 1 or None (one pass over "
                         f"the data), got {steps_per_epoch!r}")


@mobileone_export("mobileone_tf.quantization")
def fine_tune(qat_model, teacher, train_data, *, epochs=1, steps_per_epoch=None,
              learning_rate=1e-5, temperature=2.0, label_weight=0.0,
              checkpoint_dir=None, resume=True, mix=None, mix_alpha=1.0, verbose=1,
              freeze_ranges=False):
    """Quantization-aware fine-tuning by distillation from the float model.

    Args:
        qat_model: from :func:`mobileone_tf.quantization.quantize` (modified
            in place).
        teacher: float ``tf_keras`` model with logits output (from
            :func:`mobileone_tf.quantization.to_tf_keras`).
        train_data: ``tf.data.Dataset`` of images ``(B, H, W, 3)`` float32
            or ``(images, labels int)`` (labels used when ``label_weight > 0``).
        epochs: number of epochs (>= 1).
        steps_per_epoch: batches per epoch (>= 1); ``None``: one pass over
            ``train_data`` (its cardinality).
        learning_rate: Adam learning rate (cosine decay to 0 over the run).
        temperature: distillation temperature ``T`` (> 0).
        label_weight: weight of the label cross-entropy (0: distillation only).
        mix: ``None``, ``"mixup"`` or ``"cutmix"``: blend the images of each
            batch (``keras.layers.MixUp`` / ``CutMix``, strength
            ``mix_alpha``) before teacher and student see them, widening the
            inputs the student matches the teacher on ("function matching",
            for distillation on small in-domain sets). Needs
            ``label_weight == 0`` (mixed images have no label).
        checkpoint_dir: ``tf.train.CheckpointManager`` folder (model +
            optimizer + epoch), written at each epoch end; with ``resume``
            the latest checkpoint there is restored and training continues
            from its epoch.
        freeze_ranges: keep the activation ranges as they are (e.g.
            calibrated) for the whole fine-tuning
            (:func:`mobileone_tf.quantization.frozen_ranges`); default: TFMOT's
            moving average keeps updating them.

    Returns:
        The ``fit`` History (``kd_loss``, ``top1_agreement`` per epoch), or
        ``None`` when the restored checkpoint already reached ``epochs``.

    Raises:
        ValueError: ``epochs`` < 1, ``steps_per_epoch`` < 1
            (:func:`check_schedule`), ``temperature <= 0``, bad ``mix`` /
            ``mix_alpha``, ``mix`` with ``label_weight``, or no
            ``steps_per_epoch`` for a dataset of unknown size.
    """
    import tensorflow as tf
    check_schedule(epochs, steps_per_epoch)
    tf_keras, _ = load_tfmot()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mix not in MIX_MODES:
        raise ValueError(f"mix must be one of {MIX_MODES}, got {mix!r}")
    if mix and label_weight:
        raise ValueError("mix needs label_weight == 0: mixed images have no single label")
    if mix and mix_alpha <= 0:
        raise ValueError(f"mix_alpha must be > 0, got {mix_alpha}")
    if steps_per_epoch is None:
        card = int(train_data.cardinality())
        if card <= 0:
            raise ValueError("Pass steps_per_epoch for an infinite/unknown-size dataset.")
        steps_per_epoch = card
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate,
                                                         max(1, epochs * steps_per_epoch))
    distiller = _distiller(tf_keras, qat_model, teacher, float(temperature),
                           float(label_weight))
    distiller.compile(optimizer=tf_keras.optimizers.Adam(schedule))
    initial_epoch, callbacks = 0, []
    if checkpoint_dir is not None:
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        ckpt = tf.train.Checkpoint(model=qat_model, optimizer=distiller.optimizer,
                                   epoch=epoch_var)
        manager = tf.train.CheckpointManager(ckpt, str(checkpoint_dir), max_to_keep=2)
        if resume and manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint)
            initial_epoch = int(epoch_var.numpy())
            if verbose:
                print(f"Resumed from {manager.latest_checkpoint} (epoch {initial_epoch})")

        class Save(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                epoch_var.assign(epoch + 1)
                manager.save(checkpoint_number=epoch + 1)

        callbacks.append(Save())
    if initial_epoch >= epochs:
        return None
    if mix:
        train_data = mix_images(train_data, mix, mix_alpha)
    with frozen_ranges() if freeze_ranges else contextlib.nullcontext():
        return distiller.fit(train_data.repeat(), epochs=epochs, initial_epoch=initial_epoch,
                             steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                             verbose=verbose)


def mix_images(dataset, mode, alpha=1.0, seed=0):
    """Batches of images ``(B, H, W, 3)`` float32 -> the same, blended in pairs.

    ``mode``: ``"mixup"`` (``keras.layers.MixUp(alpha)``: per-image weight
    ~ Beta(alpha, alpha)) or ``"cutmix"`` (``keras.layers.CutMix(alpha)``:
    a box of another image of the batch pasted in). Labels, if the elements
    are ``(images, labels)`` pairs, are dropped.

    Raises:
        ValueError: ``mode`` is not ``"mixup"`` or ``"cutmix"``.
    """
    import keras
    if mode not in MIX_MODES[1:]:
        raise ValueError(f"mode must be 'mixup' or 'cutmix', got {mode!r}")
    layer = (keras.layers.MixUp(alpha=alpha, seed=seed) if mode == "mixup"
             else keras.layers.CutMix(factor=alpha, seed=seed))

    def blend(*batch):
        return layer(batch[0], training=True)

    return dataset.map(blend)
