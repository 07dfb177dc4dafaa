"""TFLite / LiteRT export: float32, float16, dynamic-range int8 and
full-integer int8 post-training quantization (PTQ).

Conversion goes through a SavedModel (``TFLiteConverter.from_saved_model``,
signature ``serving_default``: input ``"image"``, output
``"probabilities"``/``"logits"``/``"features"``). int8 takes its
representative dataset from an image folder (the eval transform is applied)
or from an array of images; with ``equalize`` a fused MobileOne is first
rescaled by :func:`mobileone_tf.quantization.equalize_activations` (exact in
float, much closer in int8; measurements in ``docs/export.md``).
"""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import selective
from mobileone_tf.export.common import INPUT_NAME, ExportError, staging
from mobileone_tf.export.images import check_image_source, describe, sample_images
from mobileone_tf.export.job import check_classes, check_export, start
from mobileone_tf.export.metadata import (NOT_INSTALLED, add_tflite_metadata, mediapipe_dir,
                                          wanted)
from mobileone_tf.export.options import CALIBRATED, export_options
from mobileone_tf.export.saved_model import write_saved_model

EQUALIZE_IMAGES = 64
BIAS_CORRECTION_IMAGES = 128


def check_options(output, options):
    """The cheap checks of :func:`to_tflite` (no image is read):
    :func:`.job.check_export`, then that the calibration folders exist;
    returns the output path.

    Raises:
        ExportError: see :func:`to_tflite`.
        OSError: an unreadable labels file (named).
    """
    output = check_export("tflite", output, options)
    if options.quantize in CALIBRATED:
        check_image_source(options.int8.calibration_source(), "calibration_data")
    return output


def check_metadata(model, options):
    """Finds MediaPipe's metadata writer (or raises the clear error naming
    its install command) before
    any conversion work, when ``options.metadata`` and the model has one output."""
    if wanted(options.metadata) and not isinstance(model.output, dict):
        mediapipe_dir()


def _full_batches(fixed, source, n, what):
    """``n`` images of ``source`` cut to whole batches of the fixed batch size."""
    b = int(fixed.input.shape[0])
    images = sample_images(source, tuple(fixed.input.shape[1:3]), n, what)
    images = images[:len(images) // b * b]
    if not len(images):
        raise ExportError(f"{what} holds fewer images than batch_size={b}")
    return images


def _equalized(fixed, calibration_data):
    """``fixed`` rescaled by :func:`mobileone_tf.quantization.equalize_activations`
    on ~64 calibration images when it is a fused MobileOne; else ``fixed``."""
    from mobileone_tf import models, quantization
    try:
        fused = models.model_info(fixed)["fused"]
    except ValueError:  # not a MobileOne (e.g. a baseline): export as is
        return fixed
    if not fused:
        return fixed
    b = int(fixed.input.shape[0])
    images = _full_batches(fixed, calibration_data, b * max(1, EQUALIZE_IMAGES // b),
                           "calibration_data")
    return quantization.equalize_activations(fixed, images)


def _bias_corrected(source, calibration, calibration_data, bias_correction, float_layers):
    """``source`` after :func:`mobileone_tf.quantization.correct_bias` (a fused
    MobileOne; else ``source``), on at most 128 of the ``calibration`` images
    spread evenly (``True``) or on ``bias_correction`` images of
    ``calibration_data`` (``float_layers`` left as they are); returns
    ``(model, number of images or False)``."""
    from mobileone_tf import models, quantization
    try:
        if not models.model_info(source)["fused"]:
            return source, False
    except ValueError:  # not a MobileOne (e.g. a baseline): export as is
        return source, False
    if isinstance(bias_correction, bool):
        step = -(-len(calibration) // BIAS_CORRECTION_IMAGES)
        images = calibration[::step]
    else:
        images = _full_batches(source, calibration_data, int(bias_correction),
                               "calibration_data")
    return quantization.correct_bias(source, images, skip=float_layers or ()), len(images)


def tflite_converter(saved, quantize, calibration=None, batch_size=1):
    """A ``tf.lite.TFLiteConverter`` of the SavedModel folder ``saved``
    (signature ``serving_default``) set up for ``quantize``; for ``"int8"``
    (``TFLITE_BUILTINS_INT8``) and ``"int16x8"`` (int16 activations, int8
    weights: ``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``)
    its representative dataset yields ``calibration`` (float32 NHWC, whole
    batches) ``batch_size`` images at a time."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, ["serving_default"])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize in ("int8", "int16x8"):
        def representative_dataset():
            for start in range(0, len(calibration), batch_size):
                yield {INPUT_NAME: calibration[start:start + batch_size]}

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantize == "int8" else
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return converter


def _convert(source, tmp, quantize, calibration, int8):
    """The flatbuffer of ``source`` (through a SavedModel under ``tmp``);
    ``calibration``: int8 / int16x8 representative images, in whole batches;
    ``int8``: the :class:`.options.Int8Options`. int8 (float or int8 I/O)
    goes through :func:`.selective.calibrated_debugger`: SOFTMAX and
    ``int8.float_layers`` stay float32."""
    import tensorflow as tf
    saved = os.path.join(tmp, "saved_model")
    write_saved_model(source, saved)
    converter = tflite_converter(saved, quantize, calibration, int(source.input.shape[0]))
    if quantize == "int8" and int8.int8_io == "uint8":  # XNNPACK cannot take its uint8 ->
        converter.inference_input_type = tf.uint8  # int8 input step anyway
        converter.inference_output_type = tf.uint8
    elif quantize == "int8":
        debugger = selective.calibrated_debugger(converter, None, int8)
        if int8.float_layers:
            return selective.int8_with_float_layers(
                debugger, int8, selective.keras_layer_names(source))[0]
        return selective.requantize(debugger, int8)
    return converter.convert()


def write_tflite(job, flatbuffer, tmp, options, float_layers=()):
    """The one TFLite writer (PTQ and QAT files alike): ``flatbuffer`` staged
    in ``tmp`` (a :func:`.common.staging` folder beside the output), its
    tensors and op census in ``job.report``, TFLite metadata packed in
    (:func:`.metadata.add_tflite_metadata`, unless ``options.metadata`` is
    False; skipped for several outputs), the XNNPACK partitions, then
    :meth:`.job.ExportJob.finish`: verification against ``job.reference``
    (strict for ``quantize="none"``) and the atomic install with
    ``labels.txt`` and the report JSON.

    Args:
        float_layers: Keras layers kept float32 (``report["float_layers"]``
            lists the quantizable ops of the file that are float).

    Returns:
        ``(path, report)``.
    """
    from mobileone_tf import runtime
    staged = os.path.join(tmp, "model.tflite")
    with open(staged, "wb") as f:
        f.write(flatbuffer)
    inputs, outputs = runtime.tflite_io(staged)
    metadata = wanted(options.metadata)
    if metadata and isinstance(job.fixed.output, dict):
        job.report["metadata"] = ("skipped: MediaPipe's metadata writers describe one "
                                  f"output; this model has {len(outputs)}")
    elif options.metadata is None and not metadata:
        job.report["metadata"] = NOT_INSTALLED
    elif metadata:
        job.report["metadata"] = add_tflite_metadata(staged, job.fixed, job.labels,
                                                     inputs, outputs)
    job.converted(ops=runtime.tflite_ops(staged), inputs=inputs, outputs=outputs)
    graph = runtime.tflite_graph_report(staged)
    job.report["xnnpack"] = {"partitions": graph["delegate_partitions"],
                             "all_delegated": graph["all_delegated"],
                             "float_ops": graph["float_ops"]}
    if float_layers:
        job.report["float_layers"] = [
            layer["name"] for layer in selective.quantizable_layers(
                staged, selective.keras_layer_names(job.fixed))
            if layer["dtype"] == "float32"]
    return job.finish(staged, options, strict=options.quantize == "none")


def quantization_inputs(fixed, calibration_data, calibration_steps=100, equalize=True):
    """``(source, calibration)`` as :func:`to_tflite` makes them for int8:
    ``calibration_steps`` whole batches of ``calibration_data`` images
    (float32 NHWC) and the model to convert, ``fixed`` equalized
    (:func:`mobileone_tf.quantization.equalize_activations`, a fused
    MobileOne only) unless ``equalize=False``."""
    n = int(calibration_steps) * int(fixed.input.shape[0])
    calibration = _full_batches(fixed, calibration_data, n, "calibration_data")
    return (_equalized(fixed, calibration_data) if equalize else fixed), calibration


@mobileone_export("mobileone_tf.export")
def to_tflite(model, output, options=None, *, class_names=None, **keywords):
    """Exports a TFLite / LiteRT flatbuffer (and ``labels.txt`` beside it)
    carrying TFLite metadata for MediaPipe Tasks / Android Studio.

    Args:
        model: MobileOne ``keras.Model``; with ``fuse=False`` any functional
            model with one NHWC RGB image input (e.g. a benchmark baseline).
        output: ``*.tflite`` path.
        options: an :class:`.options.ExportOptions` (default: its defaults);
            ``keywords`` replace its fields or those of its ``int8``
            (:func:`.options.export_options`), e.g.
            ``to_tflite(model, path, quantize="int8", calibration_data=DIR)``.
        class_names: labels for ``labels.txt`` and the metadata (default:
            ImageNet names for a 1000-class top).

    The settings (:class:`.options.ExportOptions`, :class:`.options.Int8Options`):

    * ``quantize``: ``"none"`` (float32), ``"float16"`` (float16 weights,
      float32 compute on CPU), ``"dynamic"`` (dynamic-range int8 weights),
      ``"int8"`` (full-integer PTQ, per-channel weights), ``"int16x8"``
      (int16 activations, int8 weights, whole model: no XNNPACK kernels,
      measured in ``docs/quantization_sensitivity.md``).
    * ``int8.calibration_data``: for int8 / int16x8: image folder(s)
      (recursive; ``calibration_steps * batch_size`` images spread over the
      sorted listing, eval transform applied) or a float32 array
      ``(N, H, W, 3)`` RGB 0..255 at the export size (its first images);
      ``calibration_exclude``: globs of paths left out (a held-out slice;
      several folders are one listing, :class:`mobileone_tf.data.ImageFolders`).
    * ``int8.equalize``: with int8 and a fused MobileOne, first rescale the
      weights with :func:`mobileone_tf.quantization.equalize_activations` (64
      calibration images; the float function is unchanged);
      ``report["equalized"]`` says whether it was applied.
    * ``int8.bias_correction``: with int8 and a fused MobileOne, then
      subtract from every layer's bias the mean output shift its int8 weight
      rounding causes (:func:`mobileone_tf.quantization.correct_bias`; Nagel
      et al. 2019, Sec. 4.2), measured on up to 128 of the calibration
      images (``True``) or on that many images of ``calibration_data`` (an
      int); ``report["bias_correction"]``: the number of images, or ``False``.
    * ``int8.float_layers``: with int8: Keras layer names (or TFLite tensor
      names) of convolutions / dense layers kept in float32 (:mod:`.selective`;
      rank them with :func:`mobileone_tf.export.sensitivity.sensitivity_scan`).
    * ``int8.int8_io``: with int8: ``"float"`` keeps float32 input/output;
      ``"int8"`` / ``"uint8"`` make them integer (the input then takes
      ``pixel / scale + zero_point``: read the tensor's quantization;
      calibrated on photos it is scale 1, zero point -128 (int8: feed
      ``pixel - 128``, i.e. ``pixel ^ 0x80``) or 0 (uint8: feed camera pixels
      as they are)). float32 and int8 I/O run as one XNNPACK partition (float
      softmax); a uint8 input's requantization and the int8 softmax run
      outside XNNPACK.
    * ``batch_size``, ``input_size``, ``fuse``, ``outputs``, ``fold``: see
      :func:`.prepare.prepare_model`.
    * ``overwrite``, ``verify``, ``verify_data``, ``report_path``: see
      :func:`.saved_model.to_saved_model` (float32 verification is strict;
      quantized files are compared without a verdict).
    * ``labels``: a text file of class names, one per line (replaces
      ``class_names``; its line count must equal the classes).
    * ``metadata``: pack TFLite metadata into the file (name, version,
      licence, input normalization, RGB, labels: :mod:`.metadata`; needs
      MediaPipe's writer, installed once with
      ``python -m mobileone_tf.export.mediapipe_install``); ``None`` (the
      default): when that writer is installed, else skipped with
      ``report["metadata"]`` saying so; ``True``: required (ExportError
      without it); ``False``: never.

    Returns:
        ``(path, report)``; the report has ``ops`` (builtin op counts),
        ``inputs``/``outputs`` (name, dtype, shape, quantization),
        ``metadata`` (:func:`.metadata.add_tflite_metadata`), ``xnnpack``
        (``partitions``, ``all_delegated``, ``float_ops``:
        :func:`mobileone_tf.runtime.tflite_graph_report`),
        ``verification``; with int8 ``calibration`` (``data``, ``steps``,
        ``int8_io``), ``equalized``, ``bias_correction``[, ``float_layers``].

    Raises:
        ExportError: invalid mode, missing calibration data, existing output
            (or ``labels.txt`` beside it, without ``overwrite``), an output
            path that is a folder, input size out of 32..4096, a labels file
            that does not fit the model (or is not UTF-8), MediaPipe
            unavailable.
        TypeError: a keyword that is no option.
        ValueError: an undecodable calibration/verification image (named).
        ExportVerificationError: float32 file does not match Keras.
    """
    options = export_options(options, **keywords)
    output = check_options(output, options)
    int8 = options.int8
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names)
    check_metadata(model, options)
    job = start("tflite", model, output, options, names=class_names)
    source, calibration = job.fixed, None
    if int8.float_layers:
        selective.check_float_layers(int8.float_layers, selective.keras_layer_names(job.fixed))
    if options.quantize in CALIBRATED:
        calibration_data = int8.calibration_source()
        source, calibration = quantization_inputs(job.fixed, calibration_data,
                                                  int8.calibration_steps, int8.equalize)
        if int8.equalize:
            job.report["equalized"] = source is not job.fixed
        source, job.report["bias_correction"] = (
            _bias_corrected(source, calibration, calibration_data, int8.bias_correction,
                            int8.float_layers) if int8.bias_correction else (source, False))
        job.report["calibration"] = {"data": describe(calibration_data, len(calibration)),
                                     "steps": int(int8.calibration_steps),
                                     "int8_io": int8.int8_io}
    with staging(output) as tmp:
        flatbuffer = _convert(source, tmp, options.quantize, calibration, int8)
        return write_tflite(job, flatbuffer, tmp, options, int8.float_layers)
