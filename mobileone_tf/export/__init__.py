"""Deployment export of MobileOne: TFLite/LiteRT, Core ML, ONNX, SavedModel.

Every exporter takes a Keras MobileOne (branched or fused), re-parameterizes
it with :func:`mobileone_tf.fuse` (unless ``fuse=False``), rebuilds it with a
fixed input ``(batch_size, input_size, input_size, 3)``, writes the file
atomically (an existing output is kept unless ``overwrite=True``; nothing is
left at the output path on failure) and, with ``verify=True`` (default),
checks the file against the fused Keras model before moving it into place.

Tensor contract of the exported files (the defaults of :func:`mobileone_tf.MobileOne`):

* input ``"image"``: float32 NHWC ``(batch, H, W, 3)``, RGB 0..255; the
  ImageNet normalization ``(x / 255 - mean) / std`` is part of the graph,
  folded into the stem convolution exactly (border pixels included): one ADD
  of ``-255 * mean`` at the input, the ``1 / (255 std)`` scale in the stem
  kernel (:func:`mobileone_tf.export.prepare.fold_input_normalization`;
  ``fold=False`` keeps the MUL + ADD). int8 TFLite with ``int8_io="int8"``
  (or ``"uint8"``) takes int8 (or uint8) with the tensor's scale / zero point
  (see :func:`to_tflite`).
* output ``"probabilities"`` (softmax top), ``"logits"`` (top without
  activation, or ``outputs="logits"``) or ``"features"`` (no top): float32
  ``(batch, classes)``.
  Core ML classifiers output ``classLabel`` (string) and ``classLabelProbs``
  (class name -> probability).

Verification (``report["verification"]``): float32 TFLite / ONNX / SavedModel
must match the fused Keras model within ``1e-4 * max|output|`` with the same
top-1 on every image, else :class:`ExportVerificationError` is raised and
nothing is written; float16 / dynamic / int8 report the top-1 agreement and
max difference. Core ML is checked at spec level (Linux cannot run it).

Settings: one :class:`ExportOptions` (with its :class:`Int8Options`) per
export, passed whole (``options``; keywords replace its fields:
:func:`export_options`). Modules: ``options`` (the settings, their flags and
value checks; no TF), ``common`` (constants, errors, staging, reports), ``prepare``
(fixed-shape fused model, output and class names), ``images``
(verification/calibration images), ``verify``, ``job`` (one export:
prepare, stage, verify, install), one module per format (``tflite``,
``coreml``, ``onnx``, ``saved_model``; ``tflite.write_tflite`` is the one
TFLite writer), ``qat_tflite`` (quantization-aware training, then its int8
file through that writer), ``selective`` (int8 with chosen
layers kept float: one calibration, many quantizations) and ``sensitivity``
(per-layer int8 error and the one-layer-at-a-time scan), ``api`` (:func:`export`,
:func:`export_variant`), ``acceptance`` (Apple's S0 on real images). Running
an exported file is :mod:`mobileone_tf.runtime`'s job. No TensorFlow import
at module level.
"""

from mobileone_tf.export.api import EXPORTERS, check_options, export, export_variant
from mobileone_tf.export.common import (AUTHOR, COREML_LABEL, COREML_PROBS, DEFAULT_LICENSE,
                                        FORMATS, FUSED_TFLITE_OPS, INPUT_NAME, QUANTIZE_MODES,
                                        RTOL, ExportError, ExportVerificationError,
                                        format_report, write_report)
from mobileone_tf.export.coreml import check_coreml, to_coreml, verify_coreml
from mobileone_tf.export.images import generated_images, sample_images, verification_images
from mobileone_tf.export.onnx import onnx_proto, to_onnx
from mobileone_tf.export.options import ExportOptions, Int8Options, export_options
from mobileone_tf.export.prepare import class_names, num_classes, output_name, prepare_model
from mobileone_tf.export.qat_tflite import qat_to_tflite, qat_variant_to_tflite, write_qat_tflite
from mobileone_tf.export.saved_model import to_saved_model, write_saved_model
from mobileone_tf.export.tflite import to_tflite
from mobileone_tf.export.verify import compare

__all__ = [
    "AUTHOR", "COREML_LABEL", "COREML_PROBS", "DEFAULT_LICENSE", "EXPORTERS", "FORMATS",
    "FUSED_TFLITE_OPS", "INPUT_NAME", "QUANTIZE_MODES", "RTOL", "ExportError",
    "ExportOptions", "ExportVerificationError", "Int8Options", "check_coreml", "check_options",
    "class_names", "compare", "export", "export_options", "export_variant", "format_report",
    "generated_images", "num_classes", "onnx_proto", "output_name", "prepare_model",
    "qat_to_tflite", "qat_variant_to_tflite", "sample_images", "to_coreml", "to_onnx",
    "to_saved_model", "to_tflite", "verification_images", "verify_coreml", "write_qat_tflite",
    "write_report", "write_saved_model",
]
