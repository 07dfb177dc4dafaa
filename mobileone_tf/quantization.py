"""Int8 quantization of the fused MobileOne: QAT (TFMOT) with distillation, and PTQ.

Quantization-aware training (Jacob et al., CVPR 2018, as implemented by the
TensorFlow Model Optimization Toolkit) of the **fused** graph, the one that
runs on the device:

1. :func:`to_tf_keras`: check that the Keras 3 model is a fused MobileOne
   (:func:`mobileone_tf.fuse`), rebuild the same graph with ``tf_keras``
   (TFMOT works only with ``tf_keras``) and copy the weights layer by layer;
2. :func:`quantize`: ``tfmot.quantization.keras.quantize_apply`` with an
   output-only quantize config for the layers TFMOT does not know: the
   squeeze-excite ``Multiply`` (``*_se_scale``) and the ``Rescaling``
   normalization ("preprocessing", kept inside so the int8 model takes 0..255
   pixels);
3. :func:`fine_tune`: ``fit`` with knowledge distillation from the float model
   (Hinton et al. 2015: ``T**2 * KL(softmax(t/T) || softmax(s/T))`` on the
   logits, plus optional label cross-entropy), so unlabelled in-domain images
   suffice;
4. :func:`export_tflite`: full-integer int8 TFLite (int8/uint8/float32 I/O),
   verified with ``ai_edge_litert`` against the QAT Keras model.

:func:`ptq_tflite` is the cheap alternative (post-training quantization of the
Keras 3 float model with a representative dataset, per-channel or per-tensor
weights).

Importing TFMOT sets ``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` for the whole
process; this module imports it lazily (:func:`load_tfmot`) and restores the
variable, so Keras 3 keeps working in the same process.

All models here output **logits** (the classifier activation is dropped):
the int8 model's argmax is the class; apply a softmax on the host if needed.
Images are NHWC float32 RGB 0..255 (the model normalizes inside) unless the
model was built with ``include_preprocessing=False``.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from mobileone_tf import fileio, variants

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_CUSTOM_LAYER_SUFFIXES = ("_se_scale",)
_PREPROCESSING = "preprocessing"
_HEAD = "predictions"


# ---------------------------------------------------------------------------
# TFMOT import without leaking TF_USE_LEGACY_KERAS
# ---------------------------------------------------------------------------
def load_tfmot():
    """Imports ``tf_keras`` and TFMOT, restoring ``TF_USE_LEGACY_KERAS``.

    Returns:
        ``(tf_keras, tfmot)`` modules.
    """
    had, old = "TF_USE_LEGACY_KERAS" in os.environ, os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tf_keras
        import tensorflow_model_optimization as tfmot
    finally:
        if had:
            os.environ["TF_USE_LEGACY_KERAS"] = old
        else:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
    return tf_keras, tfmot


# ---------------------------------------------------------------------------
# Keras 3 fused model -> tf_keras model
# ---------------------------------------------------------------------------
def _layers_by_name(model):
    from mobileone_tf.models import _all_layers
    return {layer.name: layer for layer in _all_layers(model)}


def infer_variant(model) -> str:
    """The variant (``"s0"``..``"s4"``) of a fused Keras 3 MobileOne model.

    Raises:
        ValueError: the model is branched (not fused), or not a MobileOne
            (no variant's block names and kernel shapes match).
    """
    import keras
    from mobileone_tf import layers as mo_layers
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a Keras 3 keras.Model, got {type(model).__name__}.")
    layers = _layers_by_name(model)
    if any(isinstance(l, mo_layers.MobileOneBlock) for l in layers.values()):
        raise ValueError("QAT quantizes the fused (deployed) graph: call "
                         "mobileone_tf.fuse(model) first (the model has MobileOneBlocks).")
    for name in variants.VARIANTS:
        specs = variants.block_specs(name, in_channels=3)
        ok = True
        for spec in specs:
            conv = layers.get(f"{spec.name}_conv")
            if conv is None or not conv.built:
                ok = False
                break
            shape = tuple(conv.weights[0].shape)
            want = ((spec.kernel_size, spec.kernel_size, spec.in_channels, 1)
                    if spec.depthwise else
                    (spec.kernel_size, spec.kernel_size, spec.in_channels, spec.filters))
            if shape != want or (f"{spec.name}_se_scale" in layers) != spec.use_se:
                ok = False
                break
        # all of this variant's blocks match; a larger variant has more blocks
        if ok and sum(1 for n in layers if n.endswith("_conv")) == len(specs):
            return name
    raise ValueError("Not a fused MobileOne model: no variant s0..s4 matches its "
                     "'{block}_conv' layers (names and kernel shapes). Build it with "
                     "mobileone_tf.MobileOne(...) and mobileone_tf.fuse().")


def to_tf_keras(model, input_size=None):
    """Rebuilds a fused Keras 3 MobileOne as a ``tf_keras`` model with its weights.

    The graph is :func:`mobileone_tf.models.build_backbone` (``fused=True``)
    + ``avg_pool`` + ``predictions`` (no activation: logits), with the same
    layer names; weights are copied by layer name (``get_weights`` order is
    the same in both Keras versions, including ``DepthwiseConv2D`` whose
    weight is ``kernel`` in Keras 3 and ``depthwise_kernel`` in tf_keras).

    Args:
        model: fused Keras 3 MobileOne with a classifier (``include_top``).
        input_size: fixed square input size (pixels); default the model's
            own (``None`` dimensions are kept).

    Returns:
        ``tf_keras.Model``: ``(batch, H, W, 3)`` float32 -> ``(batch, classes)``
        logits.

    Raises:
        ValueError: not a fused MobileOne (see :func:`infer_variant`), or no
            classifier.
    """
    from mobileone_tf import models
    variant = infer_variant(model)
    layers = _layers_by_name(model)
    if _HEAD not in layers:
        raise ValueError("QAT by distillation needs the classifier ('predictions' "
                         "layer): build the model with include_top=True.")
    tf_keras, _ = load_tfmot()
    shape = tuple(model.input_shape[1:])
    if input_size is not None:
        shape = (int(input_size), int(input_size), shape[-1])
    inp = tf_keras.layers.Input(shape=shape, name="input")
    x = inp
    if _PREPROCESSING in layers:
        x = _normalization_layer(tf_keras, layers[_PREPROCESSING])(x)
    x = models.build_backbone(x, variant, tf_keras, fused=True,
                              include_preprocessing=False)
    classes = layers[_HEAD].units
    x = models.build_head(x, tf_keras, True, None, classes, None)
    out = tf_keras.Model(inp, x, name=f"{model.name}_tf_keras")
    for layer in out.layers:
        if not layer.weights or layer.name == _PREPROCESSING:
            continue
        if layer.name not in layers:
            raise ValueError(f"Layer '{layer.name}' missing from the Keras 3 model.")
        src = layers[layer.name].get_weights()
        dst = layer.get_weights()
        if [w.shape for w in src] != [w.shape for w in dst]:
            raise ValueError(f"Layer '{layer.name}': weight shapes "
                             f"{[w.shape for w in src]} != {[w.shape for w in dst]}")
        layer.set_weights(src)
    return out, variant


def _normalization_layer(tf_keras, rescaling):
    """The ``Rescaling`` normalization as a 1x1 ``DepthwiseConv2D`` (same name).

    ``y = x * scale + offset`` per channel; TFMOT quantizes a depthwise conv
    natively (int8 weights per channel, int32 bias), so the int8 model takes
    raw 0..255 pixels and normalizes in integer arithmetic.
    """
    cfg = rescaling.get_config()
    scale = np.broadcast_to(np.asarray(cfg["scale"], np.float32), (3,))
    offset = np.broadcast_to(np.asarray(cfg["offset"], np.float32), (3,))
    layer = tf_keras.layers.DepthwiseConv2D(1, use_bias=True, name=_PREPROCESSING)
    layer.build((None, None, None, 3))
    layer.set_weights([scale.reshape(1, 1, 3, 1).copy(), offset.copy()])
    layer.trainable = False
    return layer


# ---------------------------------------------------------------------------
# TFMOT annotation
# ---------------------------------------------------------------------------
def _output_config_class(tfmot):
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit \
        import default_8bit_quantize_configs as configs
    return configs.Default8BitOutputQuantizeConfig


def quantize(tf_keras_model):
    """Wraps a fused ``tf_keras`` MobileOne for QAT (fake-quant, 8-bit default scheme).

    Conv/Dense weights get TFMOT's default int8 scheme (per-channel symmetric
    for convolutions); the SE ``Multiply`` and the ``Rescaling`` input
    normalization get an output-only 8-bit quantizer (moving-average
    min/max) since TFMOT's registry does not know them.

    Returns:
        The quantized ``tf_keras.Model`` (same inputs/outputs).
    """
    tf_keras, tfmot = load_tfmot()
    qk = tfmot.quantization.keras
    Output = _output_config_class(tfmot)

    def annotate(layer):
        if layer.name.endswith(_CUSTOM_LAYER_SUFFIXES):
            return qk.quantize_annotate_layer(layer, quantize_config=Output())
        return qk.quantize_annotate_layer(layer) if not isinstance(
            layer, tf_keras.layers.InputLayer) else layer

    annotated = tf_keras.models.clone_model(tf_keras_model, clone_function=annotate)
    annotated.set_weights(tf_keras_model.get_weights())
    with qk.quantize_scope({"Default8BitOutputQuantizeConfig": Output}):
        return qk.quantize_apply(annotated)


# ---------------------------------------------------------------------------
# Activation equalization (exact float rescaling before int8)
# ---------------------------------------------------------------------------
def equalize_activations(model, images, *, min_scale=1e-2, pointwise_exponent=0.5):
    """Equalizes per-channel activation ranges in front of depthwise convs.

    int8 TFLite quantizes activations per tensor, but the fused MobileOne's
    activation channels differ in range by orders of magnitude (each
    channel's folded BatchNorm scale survives the fusion), so small channels
    get few quantization levels. For every block ``A`` (no squeeze-excite)
    followed by a depthwise block ``B``, ReLU's positive homogeneity
    (``relu(x / s) = relu(x) / s`` for ``s > 0``) lets output channel ``c``
    of ``A`` (kernel and bias) be divided by ``s_c`` and ``B``'s depthwise
    kernel channel ``c`` be multiplied by ``s_c`` without changing the float
    function (zero padding commutes). With ``s_c = r_c / max(r)`` (``r_c``
    the largest ReLU output of channel ``c`` over ``images``) every channel
    uses the whole int8 range, and neither layer's per-channel weight
    quantization loses anything. This is the data-aware form of cross-layer
    equalization (Nagel et al., "Data-Free Quantization Through Weight
    Equalization and Bias Correction", ICCV 2019, Sec. 4.1), restricted to
    the pairs where it is free.

    Args:
        model: fused Keras 3 MobileOne (``mobileone_tf.fuse``); not modified.
        images: float32 array ``(N, H, W, 3)`` RGB 0..255 (a few dozen
            in-domain images).
        min_scale: lower bound of ``s_c`` (dead or tiny channels are not
            blown up beyond ``1 / min_scale``).

    Returns:
        A new fused Keras 3 model with equal float outputs (to float32
        rounding) and the rescaled weights.

    Raises:
        ValueError: not a fused MobileOne.
    """
    import keras
    variant = infer_variant(model)
    specs = variants.block_specs(variant)
    layers = _layers_by_name(model)
    pairs = [(a, b) for a, b in zip(specs[:-1], specs[1:])
             if not a.use_se and b.in_channels == a.filters
             and (b.depthwise or pointwise_exponent > 0)]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    if not pairs:
        return clone
    probe = keras.Model(model.inputs, [layers[f"{a.name}_act"].output for a, _ in pairs])
    outs = probe.predict(np.asarray(images, np.float32),
                         batch_size=model.inputs[0].shape[0] or 16, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    cl = _layers_by_name(clone)
    for (a, b), act in zip(pairs, outs):
        r = act.reshape(-1, act.shape[-1]).max(axis=0).astype(np.float64)
        scale = np.ones_like(r) if r.max() <= 0 else np.clip(r / r.max(), min_scale, 1.0)
        scale[r <= 0] = 1.0
        if not b.depthwise:
            scale = scale ** pointwise_exponent
        ka, ba = cl[f"{a.name}_conv"].get_weights()
        out_scale = scale[None, None, :, None] if a.depthwise else scale
        cl[f"{a.name}_conv"].set_weights([(ka / out_scale).astype(ka.dtype),
                                          (ba / scale).astype(ba.dtype)])
        kb, bb = cl[f"{b.name}_conv"].get_weights()  # (k, k, C, 1) or (k, k, C, O)
        cl[f"{b.name}_conv"].set_weights([(kb * scale[None, None, :, None]).astype(kb.dtype),
                                          bb])
    return clone


def _take_images(data, n):
    """The first ``n`` images of a dataset/iterable of batches (or
    ``(images, labels)`` batches) as one float32 array."""
    out, count = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = np.asarray(x, np.float32)
        out.append(x)
        count += len(x)
        if count >= n:
            break
    if not out:
        raise ValueError("no images to equalize/calibrate with")
    return np.concatenate(out)[:n]


# ---------------------------------------------------------------------------
# Activation-range calibration
# ---------------------------------------------------------------------------
def calibrate_ranges(qat_model, images, steps=10):
    """Sets the activation quantizers' ranges from data before QAT.

    TFMOT's ``MovingAverageQuantizer`` starts every activation range at
    ``[-6, 6]`` and moves it by an EMA with a fixed decay of 0.999, i.e. by
    0.1 % per training step. MobileOne's fused activations span tens to
    hundreds, so without calibration the first few hundred QAT steps clip
    them hard (measured on Apple's S0: top-1 agreement with the float model
    0.48 at the start, 0.74 after 170 steps of 32 images). This runs
    ``steps`` batches forward in training mode with the EMA decay replaced by
    ``k / (k + 1)`` at batch ``k`` (a running mean of the per-batch min/max,
    the quantity TFMOT's EMA estimates), and resets the input
    ``QuantizeLayer`` (an all-values min/max, also initialised at -6/6) so it
    covers exactly the observed input range. Weights are not touched.

    Args:
        qat_model: from :func:`quantize` (modified in place).
        images: ``tf.data.Dataset`` of float32 ``(B, H, W, 3)`` images (or
            ``(images, labels)``), or an iterable of such arrays.
        steps: number of batches (> 0).

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``steps < 1`` or no batch in ``images``.
    """
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quant_ops, quantizers)
    if steps < 1:
        raise ValueError(f"calibration steps must be >= 1, got {steps}")
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            for w in layer.weights:
                if w.name.split("/")[-1].split(":")[0].endswith(("_min", "_max")):
                    w.assign(tf.zeros_like(w))
    count = tf.Variable(0.0, trainable=False)
    original = quantizers.MovingAverageQuantizer.__call__

    def running_mean_call(self, inputs, training, weights, **kwargs):
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"],
            ema_decay=count / (count + 1.0), is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis,
            symmetric=self.symmetric, narrow_range=self.narrow_range)

    quantizers.MovingAverageQuantizer.__call__ = running_mean_call
    try:
        forward = tf.function(lambda x: qat_model(x, training=True))
        n = 0
        for batch in images:
            if n >= steps:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(tf.cast(x, tf.float32))
            count.assign_add(1.0)
            n += 1
    finally:
        quantizers.MovingAverageQuantizer.__call__ = original
    if n == 0:
        raise ValueError("calibrate_ranges: the image source yielded no batch")
    return n


# ---------------------------------------------------------------------------
# Distillation fine-tuning
# ---------------------------------------------------------------------------
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


def fine_tune(qat_model, teacher, train_data, *, epochs=1, steps_per_epoch=None,
              learning_rate=1e-5, temperature=2.0, label_weight=0.0,
              checkpoint_dir=None, resume=True, mix=None, mix_alpha=1.0, verbose=1):
    """Quantization-aware fine-tuning by distillation from the float model.

    Args:
        qat_model: from :func:`quantize` (modified in place).
        teacher: float ``tf_keras`` model with logits output (from
            :func:`to_tf_keras`).
        train_data: ``tf.data.Dataset`` of images ``(B, H, W, 3)`` float32
            or ``(images, labels int)`` (labels used when ``label_weight > 0``).
        epochs, steps_per_epoch: ``fit`` arguments.
        learning_rate: Adam learning rate (cosine decay to 0 over the run).
        temperature: distillation temperature ``T`` (> 0).
        label_weight: weight of the label cross-entropy (0: distillation only).
        mix: ``None``, ``"mixup"`` or ``"cutmix"``: blend the images of each
            batch (``keras.layers.MixUp`` / ``CutMix``, strength
            ``mix_alpha``) before teacher and student see them, widening the
            inputs the student matches the teacher on ("function matching",
            Beyer et al., CVPR 2022, for distillation on small in-domain
            sets). Needs ``label_weight == 0`` (mixed images have no label).
        checkpoint_dir: ``tf.train.CheckpointManager`` folder (model +
            optimizer + epoch), written at each epoch end; with ``resume``
            the latest checkpoint there is restored and training continues
            from its epoch.

    Returns:
        The ``fit`` History (``kd_loss``, ``top1_agreement`` per epoch).
    """
    import tensorflow as tf
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
    return distiller.fit(train_data.repeat(), epochs=epochs, initial_epoch=initial_epoch,
                         steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                         verbose=verbose)


MIX_MODES = (None, "mixup", "cutmix")


def mix_images(dataset, mode, alpha=1.0, seed=0):
    """Batches of images ``(B, H, W, 3)`` float32 -> the same, blended in pairs.

    ``mode``: ``"mixup"`` (``keras.layers.MixUp(alpha)``: per-image weight
    ~ Beta(alpha, alpha)) or ``"cutmix"`` (``keras.layers.CutMix(alpha)``:
    a box of another image of the batch pasted in). Labels, if the elements
    are ``(images, labels)`` pairs, are dropped.
    """
    import keras
    if mode not in MIX_MODES[1:]:
        raise ValueError(f"mode must be 'mixup' or 'cutmix', got {mode!r}")
    layer = (keras.layers.MixUp(alpha=alpha, seed=seed) if mode == "mixup"
             else keras.layers.CutMix(factor=alpha, seed=seed))

    def blend(*batch):
        return layer(batch[0], training=True)

    return dataset.map(blend)


# ---------------------------------------------------------------------------
# Unlabelled image folder
# ---------------------------------------------------------------------------
def list_images(directory) -> list:
    """Sorted image files under ``directory`` (recursive).

    Raises:
        ValueError: the folder does not exist, holds no images, or its first
            images cannot be decoded.
    """
    directory = str(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"Training folder not found: {directory}")
    files = sorted(p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {directory}")
    from PIL import Image
    for path in files[:8]:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:  # PIL raises many types
            raise ValueError(f"Unreadable image in the training folder: {path} ({e})") from e
    return files


def image_folder_dataset(directory, image_size=224, batch_size=32, shuffle=True,
                         augment=True, seed=0, crop_pct=0.875):
    """Unlabelled images as a ``tf.data.Dataset`` of float32 ``(B, S, S, 3)`` 0..255.

    Resize (bilinear) the short side to ``image_size / crop_pct``, then a
    random (``augment``) or centre ``image_size`` crop, random horizontal
    flip when ``augment``. Deliberately milder than the training pipeline's
    random-resized crop (``mobileone_tf.data.train_dataset``): distillation
    should see the image statistics the deployed model will see, and needs no
    labels, so any folder of images (sub-folders or not) serves.
    """
    import tensorflow as tf
    files = list_images(directory)
    resize = int(round(image_size / crop_pct))

    def load(path):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        shape = tf.cast(tf.shape(img)[:2], tf.float32)
        scale = resize / tf.reduce_min(shape)
        size = tf.cast(tf.round(shape * scale), tf.int32)
        img = tf.image.resize(tf.cast(img, tf.float32), size, method="bilinear")
        if augment:
            img = tf.image.random_crop(img, (image_size, image_size, 3))
            img = tf.image.random_flip_left_right(img)
        else:
            top = (size[0] - image_size) // 2
            left = (size[1] - image_size) // 2
            img = img[top:top + image_size, left:left + image_size]
        return tf.clip_by_value(tf.ensure_shape(img, (image_size, image_size, 3)), 0, 255)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(
        batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# TFLite export
# ---------------------------------------------------------------------------
_IO = {"float32": "float32", "float": "float32", "int8": "int8", "uint8": "uint8"}


def _converter_io(converter, io, qat=False):
    import tensorflow as tf
    io = _IO.get(io)
    if io is None:
        raise ValueError(f"io must be one of float32, int8, uint8; got {io}")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if not qat:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)


def _fixed_batch(tf_keras_model, tf_keras, batch_size=1):
    """Same model with a fixed batch dimension (XNNPACK wants one)."""
    shape = tuple(tf_keras_model.input_shape[1:])
    inp = tf_keras.layers.Input(shape=shape, batch_size=batch_size)
    return tf_keras.Model(inp, tf_keras_model(inp, training=False))


def export_tflite(qat_model, output, *, io="float32", overwrite=False, verify_data=None):
    """Converts a QAT ``tf_keras`` model to a full-integer int8 TFLite file.

    Args:
        qat_model: from :func:`quantize` / :func:`fine_tune`.
        output: ``.tflite`` path (written to a temp file, then renamed).
        io: ``"float32"`` (quantize/dequantize at the edges), ``"int8"`` or
            ``"uint8"`` input and output tensors.
        verify_data: optional float32 images ``(N, H, W, 3)`` 0..255; the
            TFLite logits are compared with the QAT Keras model's.

    Returns:
        ``(path, report)``; ``report`` has ``size_bytes``, ``ops`` (op names),
        and with ``verify_data`` ``top1_agreement``, ``max_abs_diff`` and
        ``mean_abs_diff`` (logits) and ``output_scale`` (one int8 step of the output).

    Raises:
        FileExistsError: ``output`` exists and not ``overwrite``.
        RuntimeError: the converted model has float ops besides the edges.
    """
    import tensorflow as tf
    tf_keras, _ = load_tfmot()
    if os.path.exists(str(output)) and not overwrite:
        raise FileExistsError(f"{output} exists (pass overwrite=True)")
    converter = tf.lite.TFLiteConverter.from_keras_model(_fixed_batch(qat_model, tf_keras))
    _converter_io(converter, io, qat=True)  # fake-quant ranges; float ops checked below
    data = converter.convert()
    report = inspect_tflite(data)
    if report["float_ops"]:
        raise RuntimeError(f"Not a full-integer model: float ops {report['float_ops']}")
    if verify_data is not None:
        ref = qat_model(np.asarray(verify_data, np.float32), training=False).numpy()
        got, scale = run_tflite(data, verify_data, with_scale=True)
        report.update(top1_agreement=float(np.mean(ref.argmax(-1) == got.argmax(-1))),
                      max_abs_diff=float(np.abs(ref - got).max()),
                      mean_abs_diff=float(np.abs(ref - got).mean()), output_scale=scale)
    path = fileio.atomic_write(str(output), data, overwrite=overwrite)
    report["size_bytes"] = os.path.getsize(path)
    return path, report


def ptq_tflite(model, output, calibration_data, *, steps=100, per_channel=True,
               io="float32", overwrite=False, input_size=None):
    """Post-training full-integer int8 quantization of a float Keras 3 model.

    Args:
        model: Keras 3 float model (fused MobileOne, logits or probabilities).
        calibration_data: iterable of float32 image batches ``(B, H, W, 3)``
            (the representative dataset); the first ``steps`` images are used.
        per_channel: per-channel (TFLite default) or per-tensor weight scales.

    Returns:
        ``(path, report)`` as :func:`export_tflite` (without verification).

    Stand-in until ``mobileone_tf.export.to_tflite(..., quantize="int8")``
    lands on main.
    """
    import keras
    import tensorflow as tf
    if os.path.exists(str(output)) and not overwrite:
        raise FileExistsError(f"{output} exists (pass overwrite=True)")
    shape = tuple(model.input_shape[1:])
    if input_size:
        shape = (input_size, input_size, 3)
    inp = keras.Input(shape=shape, batch_size=1)
    fixed = keras.Model(inp, model(inp))

    def representative():
        n = 0
        for batch in calibration_data:
            batch = batch[0] if isinstance(batch, tuple) else batch
            for img in np.asarray(batch, np.float32):
                if n >= steps:
                    return
                n += 1
                yield [img[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    _converter_io(converter, io)
    converter.representative_dataset = representative
    if not per_channel:
        converter._experimental_disable_per_channel = True
    data = converter.convert()
    report = inspect_tflite(data)
    path = fileio.atomic_write(str(output), data, overwrite=overwrite)
    report["size_bytes"] = os.path.getsize(path)
    return path, report


def inspect_tflite(model_content: bytes) -> dict:
    """Op names and the ops computing in float (other than QUANTIZE/DEQUANTIZE)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType
    interp = Interpreter(model_content=model_content, experimental_op_resolver_type=
                         OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    details = interp.get_tensor_details()
    ops, float_ops = [], []
    for op in interp._get_ops_details():
        ops.append(op["op_name"])
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        outs = [details[i]["dtype"] for i in op["outputs"] if i >= 0]
        if any(np.dtype(d) == np.float32 for d in outs):
            float_ops.append(op["op_name"])
    return {"ops": sorted(set(ops)), "float_ops": sorted(set(float_ops))}


def run_tflite(model, images, num_threads=2, with_scale=False):
    """Runs a TFLite model image by image; returns float32 outputs ``(N, classes)``.

    ``model`` is a path or bytes; int8/uint8 inputs are quantized and outputs
    dequantized with the model's own parameters.
    """
    from ai_edge_litert.interpreter import Interpreter
    kw = {"model_content": model} if isinstance(model, (bytes, bytearray)) \
        else {"model_path": str(model)}
    interp = Interpreter(num_threads=num_threads, **kw)
    interp.allocate_tensors()
    ind, outd = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for img in np.asarray(images, np.float32):
        x = img[None]
        if ind["dtype"] != np.float32:
            s, z = ind["quantization"]
            info = np.iinfo(ind["dtype"])
            x = np.clip(np.round(x / s + z), info.min, info.max).astype(ind["dtype"])
        interp.set_tensor(ind["index"], x)
        interp.invoke()
        y = interp.get_tensor(outd["index"])[0]
        if outd["dtype"] != np.float32:
            s, z = outd["quantization"]
            y = (y.astype(np.float32) - z) * s
        outs.append(y.astype(np.float32))
    out = np.stack(outs)
    if with_scale:
        # one output quantization step: from the last op's output tensor
        scale = _output_step(interp)
        return out, scale
    return out


def _output_step(interp):
    outd = interp.get_output_details()[0]
    if outd["dtype"] != np.float32:
        return float(outd["quantization"][0])
    details = interp.get_tensor_details()
    for op in interp._get_ops_details():
        if op["op_name"] == "DEQUANTIZE" and outd["index"] in op["outputs"]:
            return float(details[op["inputs"][0]]["quantization"][0])
    return 0.0


# ---------------------------------------------------------------------------
# End-to-end
# ---------------------------------------------------------------------------
def quantization_aware_training(model, train_data, output, *, epochs=1,
                                steps_per_epoch=None, learning_rate=1e-5,
                                temperature=2.0, label_weight=0.0, io="float32",
                                checkpoint_dir=None, resume=True, overwrite=False,
                                input_size=None, verify_data=None, calibration_steps=10,
                                equalize=True, mix=None, mix_alpha=1.0, verbose=1):
    """Fused Keras 3 MobileOne -> QAT by distillation -> int8 TFLite file.

    Args:
        model: fused Keras 3 MobileOne with classifier (``mobileone_tf.fuse``).
        train_data: a ``tf.data.Dataset`` (see :func:`fine_tune`) or a folder
            of images (:func:`image_folder_dataset`, batch 32, model input size).
        output: ``.tflite`` path.
        equalize: rescale the float weights with :func:`equalize_activations`
            (64 images from ``train_data``) before quantizing; the float
            function is unchanged, the int8 one much closer to it.
        calibration_steps: batches for :func:`calibrate_ranges` before
            fine-tuning (0: keep TFMOT's [-6, 6] start; skipped when a
            checkpoint is resumed, which restores the ranges).
        Other arguments: :func:`fine_tune` and :func:`export_tflite`.

    Returns:
        ``(qat_model, path, report)`` (``report`` from :func:`export_tflite`
        plus ``history``).

    Raises:
        ValueError: not a fused MobileOne, empty/unreadable folder, bad options.
        FileExistsError: ``output`` exists and not ``overwrite``.
        Nothing is written on error.
    """
    if os.path.exists(str(output)) and not overwrite:
        raise FileExistsError(f"{output} exists (pass overwrite=True)")
    teacher, _ = to_tf_keras(model, input_size=input_size)
    if isinstance(train_data, (str, os.PathLike)):
        size = input_size or model.input_shape[1] or 224
        train_data = image_folder_dataset(train_data, image_size=size)
    if equalize:
        model = equalize_activations(model, _take_images(train_data, 64))
    student, _ = to_tf_keras(model, input_size=input_size)
    qat_model = quantize(student)
    if calibration_steps:
        calibrate_ranges(qat_model, train_data, steps=calibration_steps)
    history = fine_tune(qat_model, teacher, train_data, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                        temperature=temperature, label_weight=label_weight,
                        checkpoint_dir=checkpoint_dir, resume=resume, mix=mix,
                        mix_alpha=mix_alpha, verbose=verbose)
    path, report = export_tflite(qat_model, output, io=io, overwrite=overwrite,
                                 verify_data=verify_data)
    report["history"] = history.history if history is not None else {}
    return qat_model, path, report
