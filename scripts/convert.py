"""Export a MobileOne to TFLite/LiteRT, Core ML, ONNX or a SavedModel, verified
against the fused Keras model (thin shell over
:func:`mobileone_tf.export.export_variant`).

  python scripts/convert.py --variant s0 --weights imagenet --format tflite \
      --output mobileone_s0.tflite

The export flags and their defaults come from
mobileone_tf.export.ExportOptions and Int8Options (int8 calibration).
Exit code 0 on success; 1 with one ``error:`` line and nothing written for bad
input (checked before any conversion: ``mobileone_tf.export.check_options``) or a
failed float32 verification.
"""

import sys

from absl import flags

from mobileone_tf import cli, dataflags
from mobileone_tf.export import options

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_enum("format", None, ["tflite", "coreml", "onnx", "saved_model"],
                  "Output format.")
flags.DEFINE_string("output", None, "Output path (.tflite, .mlpackage, .onnx, or a folder).")
dataflags.define_flags(options.ExportOptions)
dataflags.define_flags(options.Int8Options)
flags.adopt_module_key_flags(dataflags)  # --help lists them
flags.DEFINE_bool("include_preprocessing", True,
                  "Model takes RGB 0..255 and normalizes inside (false: normalized input).")
flags.DEFINE_integer("classes", 1000, "Classes of the top (1000 for ImageNet weights).")
flags.DEFINE_bool("include_top", True, "Export with the classifier.")
flags.mark_flags_as_required(["format", "output"])


def main(argv):
    del argv
    from mobileone_tf import export
    settings = dataflags.from_flags(options.ExportOptions,
                                    int8=dataflags.from_flags(options.Int8Options))
    try:
        _, report = export.export_variant(
            FLAGS.variant, FLAGS.output, FLAGS.format, settings,
            weights=cli.weights_arg(FLAGS.weights), include_top=FLAGS.include_top,
            classes=FLAGS.classes, include_preprocessing=FLAGS.include_preprocessing)
    except export.ExportVerificationError as e:  # a failed check, not a bug: one line
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    print(export.format_report(report))


if __name__ == "__main__":
    cli.main(main)
