"""The int8 TFLite file of quantization-aware training, written by the one
TFLite writer (:func:`.tflite.write_tflite`): staging folder, verification
against the QAT Keras model (top-1 agreement and differences, no verdict),
TFLite metadata for MediaPipe (``metadata=False``: ``--nometadata``), atomic
install with ``labels.txt``, report JSON.

:func:`qat_variant_to_tflite` (``scripts/qat.py``) and :func:`qat_to_tflite`
run :func:`mobileone_tf.quantization.quantization_aware_training` after every
cheap check, then :func:`write_qat_tflite`. Settings: a
:class:`mobileone_tf.quantization.QatOptions` (the training) and an
:class:`.options.ExportOptions` (the file: ``int8.int8_io``, ``verify``,
``verify_data``, ``metadata``, ``labels``, ``overwrite``, ``report_path``;
always ``quantize="int8"``, batch size 1, the QAT model's input size, the
graph converted as it is: ``fuse``, ``fold``, ``outputs`` do not apply);
``keywords`` replace fields of either (QAT's first: ``batch_size``,
``calibration_steps``, ``equalize``, ``bias_correction`` and
``calibration_exclude`` are the training's).
"""

from __future__ import annotations

import dataclasses

from mobileone_tf import quantization
from mobileone_tf.export.common import staging
from mobileone_tf.export.job import check_classes, check_export, start
from mobileone_tf.export.metadata import mediapipe_dir, wanted
from mobileone_tf.export.options import export_options
from mobileone_tf.export.tflite import write_tflite
from mobileone_tf.api_export import mobileone_export

QAT_FIELDS = tuple(f.name for f in dataclasses.fields(quantization.QatOptions))


def split_options(qat=None, options=None, **keywords):
    """``(QatOptions, ExportOptions)`` with ``keywords`` replacing fields of
    the first that has them.

    Raises:
        TypeError: a keyword that is no option.
    """
    qat = quantization.qat_options(qat, **{k: v for k, v in keywords.items() if k in QAT_FIELDS})
    return qat, export_options(options, **{k: v for k, v in keywords.items()
                                           if k not in QAT_FIELDS})


def _file_options(options, input_size):
    return dataclasses.replace(options, quantize="int8", batch_size=1, input_size=input_size,
                               fuse=True, fold=False, outputs=None)


def _check(output, options):
    output = check_export("tflite", output, options, calibrated=False)
    if wanted(options.metadata):
        mediapipe_dir()  # the writer is there (or a clear error) before any training
    return output


def _write(qat_model, model, output, options, class_names, qat_report=None):
    job = start("tflite", model, output, options, names=class_names)
    job.reference = quantization.fixed_batch(qat_model)  # what the file must reproduce
    if qat_report is not None:
        job.report["qat"] = qat_report
    flatbuffer = quantization.qat_flatbuffer(qat_model, options.int8.int8_io)
    with staging(output) as tmp:
        return write_tflite(job, flatbuffer, tmp, options)


@mobileone_export("mobileone_tf.export")
def write_qat_tflite(qat_model, model, output, options=None, *, class_names=None, **keywords):
    """Writes the full-integer int8 TFLite file of a QAT model.

    Args:
        qat_model: a ``tf_keras`` QAT model
            (:func:`mobileone_tf.quantization.quantize`, fine-tuned).
        model: the fused Keras 3 MobileOne it was made from: the metadata's
            name and input contract, the class names (not converted).
        output: ``.tflite`` path.
        options, keywords: the :class:`.options.ExportOptions` of the file
            (module docstring).
        class_names: as :func:`.tflite.to_tflite`.

    Returns:
        ``(path, report)`` as :func:`.tflite.to_tflite` (``verification``
        compares with ``qat_model``).

    Raises:
        ExportError: a bad option or output (named; nothing written).
        RuntimeError: the converted model has float ops besides the edges.
    """
    options = _file_options(export_options(options, **keywords),
                            tuple(qat_model.input_shape[1:3]))
    output = _check(output, options)
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names)
    return _write(qat_model, model, output, options, class_names)


@mobileone_export("mobileone_tf.export")
def qat_to_tflite(model, train_data, output, qat=None, options=None, *, class_names=None,
                  **keywords):
    """QAT of a fused Keras 3 MobileOne
    (:func:`mobileone_tf.quantization.quantization_aware_training`), then
    :func:`write_qat_tflite`; every cheap check (settings, output, labels,
    MediaPipe) first.

    Returns:
        ``(qat_model, path, report)``; ``report["qat"]``: the training's
        report (``history``, ``equalized``, ``bias_correction``, skipped files).
    """
    qat, options = split_options(qat, options, **keywords)
    qat.validate()
    quantization.check_qat_dependencies()  # the [qat] extra, before anything is read
    size = qat.image_size or model.input_shape[1] or 224
    options = _file_options(options, size)
    output = _check(output, options)
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names)
    qat_model, report = quantization.quantization_aware_training(model, train_data, qat)
    return (qat_model, *_write(qat_model, model, output, options, class_names, report))


@mobileone_export("mobileone_tf.export")
def qat_variant_to_tflite(variant, weights, train_data, output, qat=None, options=None, *,
                          class_names=None, **keywords):
    """:func:`qat_to_tflite` of ``MobileOne(variant, weights)`` (fused, logits,
    ``image_size`` input, 224 by default) on the images of ``train_data``
    (folder(s); :func:`mobileone_tf.quantization.qat_inputs`): what
    ``scripts/qat.py`` runs. The settings, the output and MediaPipe are
    checked before the folder is listed, the folder before the weights are
    read, the labels before training.

    Returns:
        ``(qat_model, path, report)`` as :func:`qat_to_tflite`.

    Raises:
        ExportError: a bad option or output (named).
        ValueError, FileNotFoundError, MissingExtraError: see
            :func:`mobileone_tf.quantization.qat_inputs`.
    """
    qat, options = split_options(qat, options, **keywords)
    qat.validate()
    quantization.check_qat_dependencies()  # the [qat] extra, before anything is read
    options = _file_options(options, qat.image_size or 224)
    output = _check(output, options)
    model, dataset, skipped = quantization.qat_inputs(variant, weights, train_data, qat)
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names)
    qat_model, report = quantization.quantization_aware_training(model, dataset, qat)
    report.update(quantization.skipped_report(skipped))
    return (qat_model, *_write(qat_model, model, output, options, class_names, report))
