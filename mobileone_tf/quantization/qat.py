"""Quantization-aware training end to end, and the QAT model's int8 flatbuffer.

:func:`quantization_aware_training`: fused Keras 3 MobileOne -> (equalize)
-> ``tf_keras`` -> TFMOT fake-quant -> calibrate ranges -> distillation
fine-tuning -> (bias correction): the QAT model, with its settings in one
:class:`.options.QatOptions`. :func:`qat_flatbuffer` converts it to a
full-integer int8 TFLite flatbuffer. Writing the file (staging, verification
against the QAT model, TFLite metadata, atomic install, report) is the
export's one TFLite writer: :func:`mobileone_tf.export.qat_to_tflite` runs
both (``scripts/qat.py``). :func:`qat_inputs` checks the settings, lists the
training images and builds the float model of a variant and weights.
"""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.bias_correction import correct_bias
from mobileone_tf.quantization.calibration import calibrate_ranges
from mobileone_tf.quantization.distillation import fine_tune
from mobileone_tf.quantization.equalization import equalize_activations, take_images
from mobileone_tf.quantization.images import qat_dataset
from mobileone_tf.quantization.options import INT8_IO, qat_options
from mobileone_tf.quantization.tfkeras import (check_qat_dependencies, load_tfmot, quantize,
                                                to_tf_keras)

EQUALIZATION_IMAGES = 64
"""Images :func:`quantization_aware_training` takes from ``train_data`` for
:func:`mobileone_tf.quantization.equalize_activations`."""

QAT_PER_TENSOR = ("Dense",)
"""Layers whose kernels a QAT model's TFLite file holds with one scale per
tensor (TFMOT's ``Dense`` weight quantizer); convolutions are rounded per
channel by the converter."""

BIAS_CORRECTION_IMAGES = 128
"""Images :func:`quantization_aware_training` takes from ``train_data`` for
:func:`mobileone_tf.quantization.correct_bias`."""


@mobileone_export("mobileone_tf.quantization")
def fixed_batch(qat_model, batch_size=1):
    """The ``tf_keras`` model ``qat_model`` with a fixed batch dimension
    (XNNPACK wants one; the converter and the verification run it)."""
    tf_keras, _ = load_tfmot()
    inp = tf_keras.layers.Input(shape=tuple(qat_model.input_shape[1:]), batch_size=batch_size)
    return tf_keras.Model(inp, qat_model(inp, training=False))


@mobileone_export("mobileone_tf.quantization")
def qat_flatbuffer(qat_model, int8_io="float"):
    """The full-integer int8 TFLite flatbuffer (bytes) of a QAT ``tf_keras``
    model, batch size 1. The converter takes the activation ranges from the
    fake-quant nodes (no representative dataset).

    Args:
        qat_model: from :func:`mobileone_tf.quantization.quantize` /
            :func:`quantization_aware_training`.
        int8_io: the input/output type, one of :data:`.options.INT8_IO`:
            ``"float"`` (float32, quantize/dequantize at the edges),
            ``"int8"`` or ``"uint8"``.

    Raises:
        ValueError: ``int8_io`` not in :data:`.options.INT8_IO`.
        RuntimeError: the converted model has float ops besides the edges.
    """
    import tensorflow as tf
    from mobileone_tf import runtime
    if int8_io not in INT8_IO:
        raise ValueError(f"int8_io (--int8_io) must be one of {', '.join(INT8_IO)}; "
                         f"got {int8_io!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed_batch(qat_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8_io != "float":
        converter.inference_input_type = getattr(tf, int8_io)
        converter.inference_output_type = getattr(tf, int8_io)
    flatbuffer = converter.convert()
    float_ops = runtime.tflite_graph_report(flatbuffer)["float_ops"]
    if float_ops:
        raise RuntimeError(f"Not a full-integer model: float ops {float_ops}")
    return flatbuffer


@mobileone_export("mobileone_tf.quantization")
def quantization_aware_training(model, train_data, options=None, **keywords):
    """Fused Keras 3 MobileOne -> QAT by distillation: the QAT model.

    Args:
        model: fused Keras 3 MobileOne with classifier (``mobileone_tf.fuse``).
        train_data: a ``tf.data.Dataset`` (see
            :func:`mobileone_tf.quantization.fine_tune`) or a folder of images
            or a list of folders
            (:func:`mobileone_tf.quantization.qat_dataset` with the options'
            ``batch_size``, ``image_size`` (default: the model's input size),
            ``calibration_exclude``, ``augment``, ``seed``).
        options: a :class:`.options.QatOptions`; ``keywords`` replace its
            fields. ``equalize``: rescale the float weights with
            :func:`mobileone_tf.quantization.equalize_activations`
            (:data:`EQUALIZATION_IMAGES` images from ``train_data``) before
            quantizing; the float function is unchanged, the int8 one much
            closer to it. ``calibration_steps``: batches for
            :func:`mobileone_tf.quantization.calibrate_ranges` before
            fine-tuning (0: keep TFMOT's [-6, 6] start; skipped when a
            checkpoint is resumed, which restores the ranges).
            ``bias_correction``: after fine-tuning, subtract from each
            layer's bias the mean shift the export's int8 weight rounding
            causes (:func:`correct_qat_biases` on the trained weights,
            :data:`BIAS_CORRECTION_IMAGES` images of ``train_data``; per
            channel, per tensor for :data:`QAT_PER_TENSOR`). TFMOT's default
            scheme puts a ``NoOpQuantizeConfig`` on a convolution followed
            by a ReLU layer: the fine-tuning never sees the convolutions'
            weight rounding, which the converter applies only at export, so
            the correction is made after it. The rest:
            :func:`mobileone_tf.quantization.fine_tune`.

    Returns:
        ``(qat_model, report)``: the fine-tuned ``tf_keras`` QAT model and
        ``{"history", "equalized", "bias_correction"}`` (for a folder also
        ``skipped_images``, the undecodable files left out, and
        ``skipped``, a one-line description of them, ``""`` when none).

    Raises:
        ValueError: not a fused MobileOne, empty/unreadable folder, bad options
            (e.g. ``epochs`` < 1 or ``steps_per_epoch`` < 1, checked before any
            work).
        FileNotFoundError: ``train_data`` folder missing.
        TypeError: a keyword that is no :class:`.options.QatOptions` field.
        Checkpoints of finished epochs stay in ``checkpoint_dir`` for ``resume``.
    """
    options = qat_options(options, **keywords).validate()
    teacher, _ = to_tf_keras(model, input_size=options.image_size)
    skipped = None
    if isinstance(train_data, (str, os.PathLike, list, tuple)):
        size = options.image_size or model.input_shape[1] or 224
        train_data, skipped = qat_dataset(train_data, image_size=size,
                                          batch_size=options.batch_size, with_skipped=True,
                                          exclude=options.calibration_exclude,
                                          augment=options.dataset_augment(), seed=options.seed)
    if options.equalize:
        model = equalize_activations(model, take_images(train_data, EQUALIZATION_IMAGES))
    student, _ = to_tf_keras(model, input_size=options.image_size)
    qat_model = quantize(student)
    if options.calibration_steps:
        calibrate_ranges(qat_model, train_data, steps=options.calibration_steps)
    history = fine_tune(qat_model, teacher, train_data, epochs=options.epochs,
                        steps_per_epoch=options.steps_per_epoch,
                        learning_rate=options.learning_rate, temperature=options.temperature,
                        label_weight=options.label_weight, checkpoint_dir=options.checkpoint_dir,
                        resume=options.resume, mix=options.fine_tune_mix(),
                        mix_alpha=options.mix_alpha, verbose=options.verbose,
                        freeze_ranges=options.freeze_ranges)
    report = {"history": history.history if history is not None else {},
              "equalized": bool(options.equalize), "bias_correction": False}
    if options.bias_correction:
        images = take_images(train_data, BIAS_CORRECTION_IMAGES)
        correct_qat_biases(qat_model, model, images)
        report["bias_correction"] = len(images)
    if skipped is not None:
        report.update(skipped_report(skipped))
    return qat_model, report


@mobileone_export("mobileone_tf.quantization")
def correct_qat_biases(qat_model, model, images):
    """Bias correction of a (fine-tuned) QAT model before its int8 export.

    The QAT model's float kernels and biases are copied by layer name into a
    clone of the fused Keras 3 ``model`` it was built from,
    :func:`mobileone_tf.quantization.correct_bias` measures there the mean
    output shift each layer's int8 weight rounding will cause in the
    exported file (per channel; per tensor for :data:`QAT_PER_TENSOR`), and
    the shifts are subtracted from the QAT layers' biases.

    Args:
        qat_model: from :func:`mobileone_tf.quantization.quantize` (modified
            in place).
        model: the fused Keras 3 MobileOne ``qat_model`` was made from (its
            weights are not used; not modified).
        images: float32 ``(N, H, W, 3)`` RGB 0..255 training-side images.

    Returns:
        ``{layer name: shift}`` (float64 ``(channels,)``, what was subtracted).

    Raises:
        ValueError: not a fused MobileOne, or images of another size.
    """
    import keras
    from mobileone_tf import models
    wrapped = {getattr(layer, "layer", layer).name: layer for layer in qat_model.layers}
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.mobileone_config = dict(model.mobileone_config)
    for layer in models.all_layers(clone):
        if layer.weights and layer.name in wrapped and isinstance(
                layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            found = _kernel_and_bias(wrapped[layer.name])
            layer.set_weights([v.numpy() for v in found])
    _, shifts = correct_bias(clone, images, return_shifts=True, per_tensor=QAT_PER_TENSOR)
    for name, shift in shifts.items():
        bias = _kernel_and_bias(wrapped[name])[1]
        bias.assign(bias - shift.reshape(bias.shape).astype(bias.dtype.as_numpy_dtype))
    return shifts


def _kernel_and_bias(layer):
    """The kernel and bias *variables* of a TFMOT ``QuantizeWrapper``'s layer
    (the wrapped layer's ``kernel`` attribute holds the fake-quantized tensor,
    and the variable may be listed by the wrapper only)."""
    named = {v.name.split("/")[-1].split(":")[0]: v for v in layer.weights}
    return named.get("depthwise_kernel", named.get("kernel")), named["bias"]


@mobileone_export("mobileone_tf.quantization")
def skipped_report(skipped):
    """``{"skipped_images": [...], "skipped": one line}`` of the undecodable
    training files left out (``""`` when none)."""
    from mobileone_tf import data
    return {"skipped_images": list(skipped), "skipped": data.describe_skipped(skipped)}


@mobileone_export("mobileone_tf.quantization")
def qat_inputs(variant, weights, train_data, options=None, **keywords):
    """What :func:`quantization_aware_training` of ``MobileOne(variant,
    weights)`` starts from: ``(model, dataset, skipped)``.

    Checks the settings and the QAT dependencies, then lists ``train_data``
    before building the float model (fused, logits, ``image_size`` input,
    224 by default), so a user error costs no weights download.

    Args:
        variant: ``"s0"``..``"s4"``.
        weights: ``"imagenet"``, ``None``, a ``.weights.h5`` or a PyTorch
            checkpoint (see :func:`mobileone_tf.MobileOne`).
        train_data: folder of (unlabelled) images, or a list of folders
            (:func:`mobileone_tf.quantization.qat_dataset` with the options'
            ``batch_size``, ``calibration_exclude`` (e.g. a held-out slice),
            ``augment``, ``seed``).
        options, keywords: a :class:`.options.QatOptions` and fields replaced.

    Returns:
        ``(model, dataset, skipped)``: the fused Keras 3 model, the
        ``tf.data.Dataset`` of training batches, the undecodable files.

    Raises:
        ValueError: unknown variant, weights for another variant, empty or
            unreadable folder, bad options (``epochs`` / ``steps_per_epoch``
            < 1: checked before the folder is listed).
        FileNotFoundError: missing folder or weights file.
        MissingExtraError: TFMOT / tf_keras not installed (the ``qat`` extra).
    """
    import mobileone_tf as mo
    options = qat_options(options, **keywords).validate()
    check_qat_dependencies()
    size = options.image_size or 224
    dataset, skipped = qat_dataset(train_data, image_size=size, batch_size=options.batch_size,
                                   with_skipped=True, exclude=options.calibration_exclude,
                                   augment=options.dataset_augment(), seed=options.seed)
    model = mo.MobileOne(variant, weights=weights, fused=True, input_shape=(size, size, 3),
                         classifier_activation=None)
    return model, dataset, skipped


@mobileone_export("mobileone_tf.quantization")
def qat_from_weights(variant, weights, train_data, options=None, **keywords):
    """:func:`quantization_aware_training` of ``MobileOne(variant, weights)``
    (:func:`qat_inputs`); returns ``(qat_model, model, report)``: the QAT
    model, the fused float model it was made from, and the report (with
    ``skipped_images`` / ``skipped``). The int8 file:
    :func:`mobileone_tf.export.qat_to_tflite`.

    Raises:
        See :func:`qat_inputs` and :func:`quantization_aware_training`.
    """
    options = qat_options(options, **keywords)
    model, dataset, skipped = qat_inputs(variant, weights, train_data, options)
    qat_model, report = quantization_aware_training(model, dataset, options)
    report.update(skipped_report(skipped))
    return qat_model, model, report
