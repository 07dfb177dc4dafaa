"""The settings of an export: :class:`ExportOptions` (every format) with its
:class:`Int8Options` (int8 / int16x8 TFLite), the one place that holds their
defaults, help and value checks. ``scripts/convert.py`` and ``scripts/qat.py``
generate their flags from the fields (:mod:`mobileone_tf.dataflags`: same
names, except ``report_path`` is ``--report``), and every exporter takes one
:class:`ExportOptions` whole (:func:`export_options` builds it from keywords).

Errors are :class:`.common.ExportError` lines naming the argument and its
flag. Checks that read files (output folder, labels file, calibration
folders) are the formats' ``check_options``. Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

from mobileone_tf.dataflags import option
from mobileone_tf.export.common import ExportError, check_geometry, check_mode
from mobileone_tf.quantization.options import INT8_IO
from mobileone_tf.api_export import mobileone_export

OUTPUTS = ("probabilities", "logits")
"""What a classifier export outputs (:func:`.prepare.set_outputs`)."""
CALIBRATED = ("int8", "int16x8")
"""TFLite modes that need calibration images."""
OPSETS = (9, 18)
"""ONNX opsets tf2onnx 1.17 writes (inclusive)."""


@mobileone_export("mobileone_tf.export")
@dataclasses.dataclass(frozen=True)
class Int8Options:
    """int8 (and int16x8) post-training quantization of a TFLite export, and
    the int8 file's input/output type (QAT's too)."""

    calibration_data: Any = option(
        None, "Image folder(s) for int8 / int16x8 calibration (tflite; comma-separated; "
        "never the evaluation set). Python: also a float32 array (N, H, W, 3) RGB 0..255.",
        "list")
    calibration_exclude: Optional[Sequence[str]] = option(
        None, "Leave out the calibration image paths matching these globs (a held-out slice).",
        "list")
    calibration_steps: int = option(100, "Representative-dataset batches for int8.", "int")
    equalize: bool = option(True, "int8: equalize activation ranges before quantizing (exact "
                            "float rescaling, mobileone_tf.quantization.equalize_activations).",
                            "bool")
    bias_correction: Union[bool, int] = option(
        False, "int8: after equalization (if on), subtract from each layer's bias the mean "
        "output shift of its int8 weight rounding, measured on up to 128 calibration "
        "images (quantization.correct_bias; Python: an int = that many images).", "bool")
    float_layers: Sequence[str] = option((), "tflite int8: layers kept float32 (rank them "
                                         "with quant_sensitivity.py).", "list")
    int8_io: str = option("float", "Input/output type of an int8 TFLite model: float "
                          "(float32, the default), int8 or uint8.", "enum", choices=INT8_IO)

    def __post_init__(self):  # the old spellings False / True, kept for Python callers
        if self.int8_io is False or self.int8_io is None:
            object.__setattr__(self, "int8_io", "float")
        elif self.int8_io is True:
            object.__setattr__(self, "int8_io", "int8")
        if self.float_layers is None:
            object.__setattr__(self, "float_layers", ())

    def validate(self, quantize="int8", calibrated=True):
        """Returns ``self``; ``calibrated=False``: the ranges come from
        elsewhere (QAT), only ``int8_io`` applies.

        Raises:
            ExportError: a value that cannot work with ``quantize`` (named).
        """
        if self.int8_io not in INT8_IO:
            raise ExportError(f"int8_io (--int8_io) must be one of {', '.join(INT8_IO)}; "
                              f"got {self.int8_io!r}")
        if self.int8_io != "float" and quantize != "int8":
            raise ExportError("int8_io (--int8_io) requires quantize='int8' (--quantize int8)")
        if not calibrated:
            return self
        bias = self.bias_correction
        if not isinstance(bias, (bool, int)) or (not isinstance(bias, bool) and bias < 1):
            raise ExportError("bias_correction (--bias_correction) must be a bool or a number "
                              f"of images >= 1; got {bias!r}")
        if bias and quantize != "int8":
            raise ExportError("bias_correction (--bias_correction) requires quantize='int8' "
                              "(--quantize int8)")
        if self.float_layers:
            if isinstance(self.float_layers, str) or not all(
                    isinstance(n, str) and n for n in self.float_layers):
                raise ExportError("float_layers (--float_layers) must be a list of layer "
                                  f"names; got {self.float_layers!r}")
            if quantize != "int8" or self.int8_io == "uint8":
                raise ExportError("float_layers (--float_layers) requires quantize='int8' "
                                  "with float or int8 I/O (--int8_io)")
        if quantize in CALIBRATED:
            if self.calibration_data is None or (isinstance(self.calibration_data, str)
                                                 and not self.calibration_data):
                raise ExportError(f"quantize={quantize!r} needs calibration_data "
                                  "(--calibration_data DIR): a folder of representative "
                                  "images (never the evaluation set)")
            if int(self.calibration_steps) < 1:
                raise ExportError("calibration_steps (--calibration_steps) must be >= 1; got "
                                  f"{self.calibration_steps}")
        if isinstance(self.calibration_exclude, str):
            raise ExportError("calibration_exclude (--calibration_exclude) must be a list of "
                              f"globs; got {self.calibration_exclude!r}")
        return self

    def calibration_source(self):
        """``calibration_data`` with ``calibration_exclude`` applied (a
        :class:`mobileone_tf.data.ImageFolders`), or as given.

        Raises:
            ExportError: ``calibration_exclude`` with an image array.
        """
        if not self.calibration_exclude:
            return self.calibration_data
        from mobileone_tf import data
        if data.image_folders(self.calibration_data) is None:
            raise ExportError("calibration_exclude (--calibration_exclude) needs image "
                              "folders as calibration_data (--calibration_data)")
        return data.image_folders(self.calibration_data, self.calibration_exclude)


@mobileone_export("mobileone_tf.export")
@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """How a Keras model becomes a file (:func:`mobileone_tf.export.export`)."""

    quantize: str = option("none", "tflite: none|float16|dynamic|int8|int16x8; coreml: "
                           "none|float32|int8|palettize4.", "string")
    input_size: Union[int, Sequence[int]] = option(
        224, "Fixed input height and width (32..4096; Python: also (H, W)).", "int")
    batch_size: int = option(1, "Fixed batch size.", "int")
    fuse: bool = option(True, "Re-parameterize before export (--nofuse only to measure).",
                        "bool")
    fold: bool = option(True, "Fold the input normalization into the stem conv (--nofold "
                        "only to measure).", "bool")
    outputs: Optional[str] = option(None, "Classifier output: probabilities (softmax) or "
                                    "logits (no SOFTMAX op); default: the model's own (convert.py: "
                                    "probabilities).",
                                    "enum", choices=OUTPUTS)
    labels: Optional[str] = option(None, "tflite/coreml/onnx: class names file, UTF-8, one per "
                                   "line (default: ImageNet).", "string")
    verify: bool = option(True, "Verify the exported file against Keras (--noverify skips).",
                          "bool")
    verify_data: Any = option(None, "Image folder for verification (default: 8 generated "
                              "images; Python: also a float32 array).", "string")
    metadata: Optional[bool] = option(
        None, "tflite: pack TFLite metadata for MediaPipe / Android Studio. Default: when "
        "MediaPipe's writer is installed (python -m mobileone_tf.export.mediapipe_install), "
        "else skipped with a note in the report; --metadata: required (an error without the "
        "writer); --nometadata: never.", "bool")
    overwrite: bool = option(False, "Replace an existing output.", "bool")
    report_path: Optional[str] = option(None, "Write the report as JSON to this path.",
                                        "string", flag="report")
    opset: int = option(17, "ONNX opset (9..18).", "int")
    int8: Int8Options = dataclasses.field(default_factory=Int8Options)

    def validate(self, fmt, calibrated=True):
        """Returns ``self`` after the value checks for format ``fmt``
        (mode, geometry, outputs, opset, labels, :meth:`Int8Options.validate`;
        ``calibrated=False``: a QAT file, whose ranges need no calibration).

        Raises:
            ExportError: an unknown format or a value that cannot work (named).
        """
        check_mode(fmt, self.quantize)
        check_geometry(self.batch_size, self.input_size)
        if self.outputs not in (None,) + OUTPUTS:
            raise ExportError(f"outputs must be one of {OUTPUTS} (--outputs); got "
                              f"{self.outputs!r}")
        if self.labels is not None and fmt == "saved_model":
            raise ExportError(f"labels file {self.labels} (--labels): a SavedModel carries no "
                              "class names (--labels is for tflite, coreml and onnx)")
        if fmt == "onnx" and (isinstance(self.opset, bool) or int(self.opset) != self.opset
                              or not OPSETS[0] <= self.opset <= OPSETS[1]):
            raise ExportError(f"opset (--opset) must be an integer in {OPSETS[0]}..{OPSETS[1]} "
                              f"(tf2onnx 1.17); got {self.opset!r}")
        if fmt == "tflite":
            self.int8.validate(self.quantize, calibrated)
        return self


EXPORT_FIELDS = tuple(f.name for f in dataclasses.fields(ExportOptions))
INT8_FIELDS = tuple(f.name for f in dataclasses.fields(Int8Options))


@mobileone_export("mobileone_tf.export")
def export_options(options=None, **keywords):
    """``options`` (default :class:`ExportOptions`) with ``keywords``
    replacing fields of it or of its :class:`Int8Options` (e.g.
    ``quantize="int8", calibration_data=DIR``).

    Raises:
        TypeError: a keyword that is no field of either.
    """
    options = ExportOptions() if options is None else options
    unknown = sorted(set(keywords) - set(EXPORT_FIELDS) - set(INT8_FIELDS))
    if unknown:
        raise TypeError(f"unexpected export options {unknown}; ExportOptions fields: "
                        f"{list(EXPORT_FIELDS)}, Int8Options fields: {list(INT8_FIELDS)}")
    int8 = {k: keywords.pop(k) for k in INT8_FIELDS if k in keywords}
    if int8:
        keywords["int8"] = dataclasses.replace(keywords.get("int8", options.int8), **int8)
    return dataclasses.replace(options, **keywords) if keywords else options

