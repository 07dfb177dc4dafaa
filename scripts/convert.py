"""Export a MobileOne to TFLite/LiteRT, Core ML, ONNX or a SavedModel, verified
against the fused Keras model (thin shell over
:func:`mobileone_tf.export.export_variant`).

  python scripts/convert.py --variant s0 --weights imagenet --format tflite \
      --output mobileone_s0.tflite

Exit code 0 on success; 1 with one ``error:`` line and nothing written for bad
input (checked before any conversion: ``mobileone_tf.export.check_options``) or a
failed float32 verification.
"""

import sys

from absl import flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_enum("format", None, ["tflite", "coreml", "onnx", "saved_model"],
                  "Output format.")
flags.DEFINE_string("output", None, "Output path (.tflite, .mlpackage, .onnx, or a folder).")
flags.DEFINE_string("quantize", "none", "tflite: none|float16|dynamic|int8|int16x8; "
                    "coreml: none|float32|int8|palettize4.")
flags.DEFINE_list("calibration_data", None, "Image folder(s) for int8 calibration (tflite).")
flags.DEFINE_list("calibration_exclude", None, "Leave out calibration paths matching these globs.")
flags.DEFINE_bool("equalize", True, "int8: equalize activation ranges first "
                  "(exact float rescaling, mobileone_tf.quantization.equalize_activations).")
flags.DEFINE_integer("calibration_steps", 100, "Representative-dataset batches for int8.")
flags.DEFINE_list("float_layers", [], "tflite int8: layers kept float32 (quant_sensitivity.py).")
flags.DEFINE_bool("bias_correction", False, "int8: bias correction (quantization.correct_bias).")
flags.DEFINE_enum("int8_io", "float", ["float", "int8", "uint8"],
                  "Input/output type of an int8 TFLite model.")
flags.DEFINE_integer("input_size", 224, "Fixed input height and width (32..4096).")
flags.DEFINE_integer("batch_size", 1, "Fixed batch size.")
flags.DEFINE_bool("fuse", True, "Re-parameterize before export (--nofuse only to measure).")
flags.DEFINE_bool("verify", True, "Verify the exported file against Keras (--noverify skips).")
flags.DEFINE_string("verify_data", None, "Image folder for verification (default: generated).")
flags.DEFINE_string("report", None, "Write the report as JSON to this path.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output.")
flags.DEFINE_integer("opset", 17, "ONNX opset.")
flags.DEFINE_bool("include_preprocessing", True,
                  "Model takes RGB 0..255 and normalizes inside (false: normalized input).")
flags.DEFINE_integer("classes", 1000, "Classes of the top (1000 for ImageNet weights).")
flags.DEFINE_bool("include_top", True, "Export with the classifier.")
flags.DEFINE_enum("outputs", "probabilities", ["probabilities", "logits"],
                  "Classifier output: softmax probabilities or logits (no SOFTMAX op).")
flags.DEFINE_bool("fold", True, "Fold the input normalization into the stem conv (--nofold "
                  "only to measure).")
flags.DEFINE_string("labels", None, "tflite/coreml/onnx: class names file, UTF-8, one per line "
                    "(default: ImageNet).")
flags.DEFINE_bool("metadata", True, "tflite: pack TFLite metadata for MediaPipe / Android Studio "
                  "(--nometadata skips it; works offline).")
flags.mark_flags_as_required(["format", "output"])


def main(argv):
    del argv
    from mobileone_tf import export
    options = dict(batch_size=FLAGS.batch_size, input_size=FLAGS.input_size, fuse=FLAGS.fuse,
                   overwrite=FLAGS.overwrite, verify=FLAGS.verify, verify_data=FLAGS.verify_data,
                   report_path=FLAGS.report, quantize=FLAGS.quantize, fold=FLAGS.fold,
                   outputs=FLAGS.outputs if FLAGS.include_top else None, labels=FLAGS.labels,
                   calibration_data=FLAGS.calibration_data, equalize=FLAGS.equalize,
                   calibration_steps=FLAGS.calibration_steps,
                   calibration_exclude=FLAGS.calibration_exclude,
                   bias_correction=FLAGS.bias_correction, float_layers=FLAGS.float_layers,
                   int8_io=False if FLAGS.int8_io == "float" else FLAGS.int8_io,
                   metadata=FLAGS.metadata, opset=FLAGS.opset)
    try:
        _, report = export.export_variant(
            FLAGS.variant, FLAGS.output, FLAGS.format, weights=cli.weights_arg(FLAGS.weights),
            include_top=FLAGS.include_top, classes=FLAGS.classes,
            include_preprocessing=FLAGS.include_preprocessing,
            **export.format_options(FLAGS.format, options))
    except export.ExportVerificationError as e:  # a failed check, not a bug: one line
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    print(export.format_report(report))


if __name__ == "__main__":
    cli.main(main)
