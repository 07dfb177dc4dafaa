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

from mobileone_tf.export.common import INPUT_NAME, ExportError, check_arguments, staging
from mobileone_tf.export.images import check_image_source, describe, sample_images
from mobileone_tf.export.job import start
from mobileone_tf.export.metadata import add_tflite_metadata, mediapipe_dir, read_labels
from mobileone_tf.export.prepare import num_classes
from mobileone_tf.export.saved_model import write_saved_model

INT8_IO = (False, True, "int8", "uint8")
EQUALIZE_IMAGES = 64


def check_options(output, *, quantize="none", overwrite=False, calibration_data=None,
                  calibration_steps=100, int8_io=False, labels=None, **_):
    """The cheap argument checks of :func:`to_tflite` (no image is read);
    returns the output path.

    Raises:
        ExportError: see :func:`to_tflite`.
    """
    output = check_arguments("tflite", output, quantize, overwrite)
    if int8_io not in INT8_IO:
        raise ExportError(f"int8_io must be False, True, 'int8' or 'uint8'; got {int8_io!r}")
    if int8_io and quantize != "int8":
        raise ExportError("int8_io requires quantize='int8'")
    if quantize == "int8":
        if calibration_data is None or (isinstance(calibration_data, str)
                                        and not calibration_data):
            raise ExportError("quantize='int8' needs calibration_data (--calibration_data DIR): "
                              "a folder of representative images (never the evaluation set)")
        check_image_source(calibration_data, "calibration_data")
        if int(calibration_steps) < 1:
            raise ExportError(f"calibration_steps must be >= 1; got {calibration_steps}")
    if labels is not None:
        read_labels(labels)  # readable, one name per line (the count is checked later)
    return output


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


def _convert(source, tmp, quantize, calibration=None, int8_io=False):
    """The flatbuffer of ``source`` (through a SavedModel under ``tmp``);
    ``calibration``: int8 representative images, in whole batches."""
    import tensorflow as tf
    saved = os.path.join(tmp, "saved_model")
    write_saved_model(source, saved)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, ["serving_default"])
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        b = int(source.input.shape[0])

        def representative_dataset():
            for start in range(0, len(calibration), b):
                yield {INPUT_NAME: calibration[start:start + b]}

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io == "uint8":  # XNNPACK cannot take its uint8 -> int8 input step anyway
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        else:
            return _int8_float_softmax(tf, converter, representative_dataset, bool(int8_io))
    return converter.convert()


def _int8_float_softmax(tf, converter, dataset, int8_io):
    """Full-integer int8 with the SOFTMAX left in float32 after a DEQUANTIZE.

    XNNPACK has no int8 softmax: the converter's int8 SOFTMAX would run
    outside the delegate, in a second partition (issue 13). Selective
    quantization (``tf.lite.experimental.QuantizationDebugger`` with
    ``denylisted_ops=["SOFTMAX"]``, the TFLite guide's public way) keeps it
    float, so XNNPACK takes the whole graph: QUANTIZE (float input) or an int8
    input, int8 convolutions, DEQUANTIZE, float SOFTMAX, then QUANTIZE for an
    int8 output (``int8_io``). A model without softmax converts the same.
    """
    import warnings
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["SOFTMAX"],
                                                            fully_quantize=int8_io)
    with warnings.catch_warnings():  # it opens its debug model with tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def to_tflite(model, output, *, quantize="none", calibration_data=None,
              calibration_steps=100, int8_io=False, batch_size=1, input_size=224,
              fuse=True, overwrite=False, verify=True, verify_data=None,
              report_path=None, class_names=None, equalize=True, labels=None,
              metadata=True, outputs=None, fold=True):
    """Exports a TFLite / LiteRT flatbuffer (and ``labels.txt`` beside it)
    carrying TFLite metadata for MediaPipe Tasks / Android Studio.

    Args:
        model: MobileOne ``keras.Model``; with ``fuse=False`` any functional
            model with one NHWC RGB image input (e.g. a benchmark baseline).
        output: ``*.tflite`` path.
        quantize: ``"none"`` (float32), ``"float16"`` (float16 weights,
            float32 compute on CPU), ``"dynamic"`` (dynamic-range int8
            weights), ``"int8"`` (full-integer PTQ, per-channel weights).
        calibration_data: for ``"int8"``: a folder of images (recursive;
            ``calibration_steps * batch_size`` of them spread over the sorted
            listing, eval transform applied) or a float32 array
            ``(N, H, W, 3)`` RGB 0..255 at the export size (its first images).
        calibration_steps: number of representative batches (of
            ``batch_size`` images).
        equalize: with ``"int8"`` and a fused MobileOne, first rescale the
            weights with :func:`mobileone_tf.quantization.equalize_activations`
            (64 calibration images; the float function is unchanged).
            ``report["equalized"]`` says whether it was applied.
        int8_io: with ``"int8"``: ``False`` keeps float32 input/output;
            ``True``/``"int8"`` makes them int8, ``"uint8"`` uint8 (the input
            then takes ``pixel / scale + zero_point``: read the tensor's
            quantization; calibrated on photos it is scale 1, zero point
            -128 (int8: feed ``pixel - 128``, i.e. ``pixel ^ 0x80``) or 0
            (uint8: feed camera pixels as they are)). float32 and int8 I/O
            run as one XNNPACK partition (float softmax); a uint8 input's
            requantization and the int8 softmax run outside XNNPACK.
        batch_size, input_size, fuse: see :func:`.prepare.prepare_model`.
        outputs: ``None`` (the model's top), ``"probabilities"`` or
            ``"logits"`` (:func:`.prepare.set_outputs`).
        fold: fold the input normalization into the stem convolution
            (:func:`.prepare.fold_input_normalization`; ``False`` only to
            measure what it saves).
        overwrite, verify, verify_data, report_path: see
            :func:`.saved_model.to_saved_model` (float32 verification is
            strict; quantized files are compared without a verdict).
        class_names: labels for ``labels.txt`` and the metadata (default:
            ImageNet names for a 1000-class top).
        labels: a text file of class names, one per line (replaces
            ``class_names``; its line count must equal the classes).
        metadata: pack TFLite metadata into the file (name, version,
            licence, input normalization, RGB, labels:
            :mod:`.metadata`; MediaPipe is installed on first use);
            ``False`` skips it (works offline).

    Returns:
        ``(path, report)``; the report has ``ops`` (builtin op counts),
        ``inputs``/``outputs`` (name, dtype, shape, quantization),
        ``metadata`` (:func:`.metadata.add_tflite_metadata`), ``xnnpack``
        (``partitions``, ``all_delegated``, ``float_ops``:
        :func:`mobileone_tf.runtime.tflite_graph_report`) and
        ``verification``.

    Raises:
        ExportError: invalid mode, missing calibration data, existing output,
            a labels file that does not fit the model, MediaPipe unavailable.
        ValueError: an undecodable calibration/verification image (named).
        ExportVerificationError: float32 file does not match Keras.
    """
    from mobileone_tf import runtime
    output = check_options(output, quantize=quantize, overwrite=overwrite,
                           calibration_data=calibration_data,
                           calibration_steps=calibration_steps, int8_io=int8_io,
                           labels=labels)
    if labels is not None:
        if num_classes(model) is None:
            raise ExportError(f"labels file {labels}: the model has no classifier (include_top)")
        class_names = read_labels(labels, num_classes(model))
    several = isinstance(model.output, dict)  # pyramid levels: MediaPipe's writers take one
    if metadata and not several:
        mediapipe_dir()  # installed (or a clear error) before any conversion work
    job = start("tflite", model, output, quantize=quantize, fuse=fuse,
                batch_size=batch_size, input_size=input_size, names=class_names,
                outputs=outputs, fold=fold)
    source, calibration = job.fixed, None
    if quantize == "int8":
        n = int(calibration_steps) * int(job.fixed.input.shape[0])
        calibration = _full_batches(job.fixed, calibration_data, n, "calibration_data")
        if equalize:
            source = _equalized(job.fixed, calibration_data)
            job.report["equalized"] = source is not job.fixed
        job.report["calibration"] = {"data": describe(calibration_data, len(calibration)),
                                     "steps": int(calibration_steps),
                                     "int8_io": int8_io or False}
    with staging(output) as tmp:
        staged = os.path.join(tmp, "model.tflite")
        flatbuffer = _convert(source, tmp, quantize, calibration, int8_io)
        with open(staged, "wb") as f:
            f.write(flatbuffer)
        inputs, outputs = runtime.tflite_io(staged)
        if metadata and several:
            job.report["metadata"] = ("skipped: MediaPipe's metadata writers describe one "
                                      f"output; this model has {len(outputs)}")
        elif metadata:
            job.report["metadata"] = add_tflite_metadata(staged, job.fixed, job.labels,
                                                         inputs, outputs)
        job.converted(ops=runtime.tflite_ops(staged), inputs=inputs, outputs=outputs)
        graph = runtime.tflite_graph_report(staged)
        job.report["xnnpack"] = {"partitions": graph["delegate_partitions"],
                                 "all_delegated": graph["all_delegated"],
                                 "float_ops": graph["float_ops"]}
        return job.finish(staged, verify=verify, verify_data=verify_data,
                          strict=quantize == "none", report_path=report_path)
