"""Export a MobileOne to TFLite/LiteRT, Core ML, ONNX or a SavedModel, verified
against the fused Keras model (thin shell over :mod:`mobileone_tf.export`).

  python scripts/convert.py --variant s0 --weights imagenet --format tflite \
      --output mobileone_s0.tflite

Exit code 0 on success; 1 with a one-line error (and nothing written) for bad
input or a failed float32 verification.
"""

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "s0", "MobileOne variant s0..s4.")
flags.DEFINE_string("weights", "imagenet",
                    "'imagenet', 'none' (random), or a .weights.h5 / PyTorch checkpoint path.")
flags.DEFINE_enum("format", None, ["tflite", "coreml", "onnx", "saved_model"],
                  "Output format.")
flags.DEFINE_string("output", None, "Output path (.tflite, .mlpackage, .onnx, or a folder).")
flags.DEFINE_string("quantize", "none",
                    "tflite: none|float16|dynamic|int8; coreml: none|float32|int8|palettize4.")
flags.DEFINE_string("calibration_data", None, "Image folder for int8 calibration (tflite).")
flags.DEFINE_bool("equalize", True, "int8: equalize activation ranges first "
                  "(exact float rescaling, mobileone_tf.quantization.equalize_activations).")
flags.DEFINE_integer("calibration_steps", 100, "Representative-dataset batches for int8.")
flags.DEFINE_enum("int8_io", "float", ["float", "int8", "uint8"],
                  "Input/output type of an int8 TFLite model.")
flags.DEFINE_integer("input_size", 224, "Fixed input height and width.")
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
flags.DEFINE_enum("classifier_activation", "softmax", ["softmax", "none"],
                  "Top activation: softmax probabilities or logits.")


def fail(message):
    print(f"convert.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    del argv
    from mobileone_tf import export
    fmt = FLAGS.format
    if fmt is None or FLAGS.output is None:
        fail("--format and --output are required")
    if FLAGS.quantize not in export.QUANTIZE_MODES[fmt]:
        fail(f"--quantize={FLAGS.quantize} is not valid for --format={fmt}; expected one of "
             f"{', '.join(export.QUANTIZE_MODES[fmt])}")
    if fmt == "tflite" and FLAGS.quantize == "int8":
        if not FLAGS.calibration_data:
            fail("--quantize=int8 needs --calibration_data DIR (representative images, "
                 "never the evaluation set)")
        if not os.path.isdir(FLAGS.calibration_data):
            fail(f"--calibration_data {FLAGS.calibration_data!r} is not a folder")
    if os.path.lexists(FLAGS.output) and not FLAGS.overwrite:
        fail(f"{FLAGS.output} exists; pass --overwrite to replace it")
    weights = None if FLAGS.weights.lower() in ("none", "random", "") else FLAGS.weights
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        fail(f"--weights {weights!r}: no such file")

    import mobileone_tf as mo
    try:
        model = mo.MobileOne(
            FLAGS.variant, weights=weights, input_shape=(None, None, 3),
            include_top=FLAGS.include_top, classes=FLAGS.classes,
            classifier_activation=(None if FLAGS.classifier_activation == "none"
                                   else "softmax"),
            include_preprocessing=FLAGS.include_preprocessing)
    except Exception as e:  # unreadable/mismatched weights, bad variant
        fail(f"cannot build MobileOne-{FLAGS.variant} with --weights {FLAGS.weights}: "
             f"{type(e).__name__}: {e}")
    kwargs = dict(batch_size=FLAGS.batch_size, input_size=FLAGS.input_size,
                  fuse=FLAGS.fuse, overwrite=FLAGS.overwrite, verify=FLAGS.verify,
                  verify_data=FLAGS.verify_data, report_path=FLAGS.report,
                  quantize=FLAGS.quantize)
    if fmt == "tflite":
        kwargs.update(calibration_data=FLAGS.calibration_data,
                      calibration_steps=FLAGS.calibration_steps,
                      equalize=FLAGS.equalize,
                      int8_io=False if FLAGS.int8_io == "float" else FLAGS.int8_io)
    elif fmt == "onnx":
        kwargs["opset"] = FLAGS.opset
    try:
        _, report = export.export(model, FLAGS.output, fmt, **kwargs)
    except (export.ExportError, export.ExportVerificationError) as e:
        fail(str(e))
    print(export.format_report(report))


if __name__ == "__main__":
    app.run(main)
