"""Quantization-aware training end to end, and the QAT model's int8 TFLite export.

:func:`quantization_aware_training`: fused Keras 3 MobileOne -> (equalize)
-> ``tf_keras`` -> TFMOT fake-quant -> calibrate ranges -> distillation
fine-tuning -> full-integer int8 ``.tflite`` (:func:`export_tflite`),
verified against the QAT Keras model with :func:`mobileone_tf.runtime.run_tflite`.
:func:`qat_from_weights` builds the float model from a variant and weights
first (what ``scripts/qat.py`` runs).
"""

from __future__ import annotations

import os

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.bias_correction import correct_bias
from mobileone_tf.quantization.calibration import calibrate_ranges
from mobileone_tf.quantization.distillation import check_schedule, fine_tune
from mobileone_tf.quantization.equalization import equalize_activations, take_images
from mobileone_tf.quantization.images import qat_dataset
from mobileone_tf.quantization.tfkeras import (check_qat_dependencies, load_tfmot, quantize,
                                                to_tf_keras)

IO_TYPES = ("float32", "int8", "uint8")
"""TFLite input/output tensor types of :func:`export_tflite` (``"float"`` is
accepted for ``"float32"``)."""

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


def _io_type(io):
    io = "float32" if io == "float" else io
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {', '.join(IO_TYPES)}; got {io!r}")
    return io


def _check_output(output, overwrite):
    output = os.fspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists (pass overwrite=True)")
    return output


def _fixed_batch(tf_keras_model, tf_keras, batch_size=1):
    """Same model with a fixed batch dimension (XNNPACK wants one)."""
    shape = tuple(tf_keras_model.input_shape[1:])
    inp = tf_keras.layers.Input(shape=shape, batch_size=batch_size)
    return tf_keras.Model(inp, tf_keras_model(inp, training=False))


@mobileone_export("mobileone_tf.quantization")
def export_tflite(qat_model, output, *, io="float32", overwrite=False, verify_data=None):
    """Converts a QAT ``tf_keras`` model to a full-integer int8 TFLite file.

    The converter takes the activation ranges from the fake-quant nodes
    (no representative dataset); batch size 1.

    Args:
        qat_model: from :func:`mobileone_tf.quantization.quantize` /
            :func:`mobileone_tf.quantization.fine_tune`.
        output: ``.tflite`` path (written atomically: nothing on error).
        io: ``"float32"`` (quantize/dequantize at the edges), ``"int8"`` or
            ``"uint8"`` input and output tensors.
        overwrite: replace an existing ``output``.
        verify_data: optional float32 images ``(N, H, W, 3)`` RGB 0..255; the
            TFLite logits are compared with the QAT Keras model's.

    Returns:
        ``(path, report)``; ``report`` has ``size_bytes``, ``ops`` (sorted op
        names), ``float_ops`` (empty), and with ``verify_data``
        ``top1_agreement``, ``max_abs_diff`` and ``mean_abs_diff`` (logits)
        and ``output_scale`` (one int8 step of the output, logits).

    Raises:
        ValueError: ``io`` not in :data:`IO_TYPES`.
        FileExistsError: ``output`` exists and not ``overwrite``.
        RuntimeError: the converted model has float ops besides the edges.
    """
    import tensorflow as tf
    from mobileone_tf import fileio, runtime
    io = _io_type(io)
    output = _check_output(output, overwrite)
    tf_keras, _ = load_tfmot()
    converter = tf.lite.TFLiteConverter.from_keras_model(_fixed_batch(qat_model, tf_keras))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if io != "float32":
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    data = converter.convert()
    graph = runtime.tflite_graph_report(data)
    if graph["float_ops"]:
        raise RuntimeError(f"Not a full-integer model: float ops {graph['float_ops']}")
    report = {"ops": sorted(graph["ops"]), "float_ops": graph["float_ops"]}
    if verify_data is not None:
        verify_data = np.asarray(verify_data, np.float32)
        ref = qat_model(verify_data, training=False).numpy()
        got = runtime.run_tflite(data, verify_data)
        report.update(top1_agreement=float(np.mean(ref.argmax(-1) == got.argmax(-1))),
                      max_abs_diff=float(np.abs(ref - got).max()),
                      mean_abs_diff=float(np.abs(ref - got).mean()),
                      output_scale=graph["output_step"])
    path = fileio.atomic_write(output, data, overwrite=overwrite)
    report["size_bytes"] = os.path.getsize(path)
    return path, report


@mobileone_export("mobileone_tf.quantization")
def quantization_aware_training(model, train_data, output, *, epochs=1,
                                steps_per_epoch=None, learning_rate=1e-5,
                                temperature=2.0, label_weight=0.0, io="float32",
                                checkpoint_dir=None, resume=True, overwrite=False,
                                input_size=None, verify_data=None, calibration_steps=10,
                                equalize=True, mix=None, mix_alpha=1.0, batch_size=32,
                                verbose=1, freeze_ranges=False, exclude=None,
                                augment=True, bias_correction=False):
    """Fused Keras 3 MobileOne -> QAT by distillation -> int8 TFLite file.

    Args:
        model: fused Keras 3 MobileOne with classifier (``mobileone_tf.fuse``).
        train_data: a ``tf.data.Dataset`` (see
            :func:`mobileone_tf.quantization.fine_tune`) or a folder of images
            or a list of folders
            (:func:`mobileone_tf.quantization.qat_dataset`, ``batch_size``,
            the model's input size, ``exclude``, ``augment``).
        output: ``.tflite`` path.
        equalize: rescale the float weights with
            :func:`mobileone_tf.quantization.equalize_activations`
            (:data:`EQUALIZATION_IMAGES` images from ``train_data``) before
            quantizing; the float function is unchanged, the int8 one much
            closer to it.
        bias_correction: after fine-tuning, subtract from each layer's bias
            the mean shift the export's int8 weight rounding causes
            (:func:`mobileone_tf.quantization.correct_bias` on the trained
            weights, :data:`BIAS_CORRECTION_IMAGES` images of ``train_data``;
            per channel, per tensor for :data:`QAT_PER_TENSOR`). TFMOT's
            default scheme puts a ``NoOpQuantizeConfig`` on a convolution
            followed by a ReLU layer: the fine-tuning never sees the
            convolutions' weight rounding, which the converter applies only
            at export, so the correction is made after it.
        calibration_steps: batches for
            :func:`mobileone_tf.quantization.calibrate_ranges` before
            fine-tuning (0: keep TFMOT's [-6, 6] start; skipped when a
            checkpoint is resumed, which restores the ranges).
        batch_size: batch size when ``train_data`` is a folder.
        Other arguments: :func:`mobileone_tf.quantization.fine_tune` and
            :func:`export_tflite`.

    Returns:
        ``(qat_model, path, report)`` (``report`` from :func:`export_tflite`
        plus ``history``; for a folder also ``skipped_images``, the
        undecodable files left out, and ``skipped``, a one-line description
        of them, ``""`` when none).

    Raises:
        ValueError: not a fused MobileOne, empty/unreadable folder, bad options
            (e.g. ``epochs`` < 1 or ``steps_per_epoch`` < 1, checked before any
            work).
        FileNotFoundError: ``train_data`` folder missing.
        FileExistsError: ``output`` exists and not ``overwrite``.
        Nothing is written on error (checkpoints of finished epochs stay in
        ``checkpoint_dir`` for ``resume``).
    """
    _io_type(io)
    check_schedule(epochs, steps_per_epoch)
    _check_output(output, overwrite)
    teacher, _ = to_tf_keras(model, input_size=input_size)
    skipped = None
    if isinstance(train_data, (str, os.PathLike, list, tuple)):
        size = input_size or model.input_shape[1] or 224
        train_data, skipped = qat_dataset(train_data, image_size=size, batch_size=batch_size,
                                          with_skipped=True, exclude=exclude, augment=augment)
    if equalize:
        model = equalize_activations(model, take_images(train_data, EQUALIZATION_IMAGES))
    student, _ = to_tf_keras(model, input_size=input_size)
    qat_model = quantize(student)
    if calibration_steps:
        calibrate_ranges(qat_model, train_data, steps=calibration_steps)
    history = fine_tune(qat_model, teacher, train_data, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, learning_rate=learning_rate,
                        temperature=temperature, label_weight=label_weight,
                        checkpoint_dir=checkpoint_dir, resume=resume, mix=mix,
                        mix_alpha=mix_alpha, verbose=verbose, freeze_ranges=freeze_ranges)
    if bias_correction:
        correct_qat_biases(qat_model, model, take_images(train_data, BIAS_CORRECTION_IMAGES))
    path, report = export_tflite(qat_model, output, io=io, overwrite=overwrite,
                                 verify_data=verify_data)
    report["history"] = history.history if history is not None else {}
    if skipped is not None:
        _report_skipped(report, skipped)
    return qat_model, path, report


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


def _report_skipped(report, skipped):
    from mobileone_tf import data
    report["skipped_images"] = list(skipped)
    report["skipped"] = data.describe_skipped(skipped)


@mobileone_export("mobileone_tf.quantization")
def qat_from_weights(variant, weights, train_data, output, *, image_size=224,
                     batch_size=32, overwrite=False, exclude=None, augment=True, seed=0,
                     **kwargs):
    """:func:`quantization_aware_training` of ``MobileOne(variant, weights)``.

    Checks ``output`` and lists ``train_data`` before building the float
    model (fused, logits, ``image_size`` input), so a user error costs no
    weights download.

    Args:
        variant: ``"s0"``..``"s4"``.
        weights: ``"imagenet"``, ``None``, a ``.weights.h5`` or a PyTorch
            checkpoint (see :func:`mobileone_tf.MobileOne`).
        train_data: folder of (unlabelled) images, or a list of folders.
        output: ``.tflite`` path.
        image_size: training and export input size (pixels).
        exclude, augment, seed: :func:`mobileone_tf.quantization.qat_dataset`
            (e.g. ``exclude`` a held-out slice).
        batch_size, overwrite, **kwargs: :func:`quantization_aware_training`.

    Returns:
        ``(qat_model, path, report)`` as :func:`quantization_aware_training`.

    Raises:
        ValueError: unknown variant, weights for another variant, empty or
            unreadable folder, bad options (``epochs`` / ``steps_per_epoch``
            < 1: checked before the folder is listed).
        FileNotFoundError: missing folder or weights file.
        FileExistsError: ``output`` exists and not ``overwrite``.
        MissingExtraError: TFMOT / tf_keras not installed (the ``qat`` extra).
    """
    import mobileone_tf as mo
    _io_type(kwargs.get("io", "float32"))
    check_qat_dependencies()
    check_schedule(kwargs.get("epochs", 1), kwargs.get("steps_per_epoch"))
    _check_output(output, overwrite)
    dataset, skipped = qat_dataset(train_data, image_size=image_size, batch_size=batch_size,
                                   with_skipped=True, exclude=exclude, augment=augment,
                                   seed=seed)
    model = mo.MobileOne(variant, weights=weights, fused=True,
                         input_shape=(image_size, image_size, 3), classifier_activation=None)
    qat_model, path, report = quantization_aware_training(
        model, dataset, output, overwrite=overwrite, **kwargs)
    _report_skipped(report, skipped)
    return qat_model, path, report
