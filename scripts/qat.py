r"""Quantization-aware training of a fused MobileOne to a full-integer int8 TFLite model.

    python scripts/qat.py --variant s0 --weights imagenet --train_data DIR[,DIR...] \
        --epochs 1 --steps_per_epoch 300 --output mobileone_s0_int8.tflite

Thin absl shell over :func:`mobileone_tf.export.qat_variant_to_tflite`
(distillation from the float model: the training folder needs no labels;
undecodable images in it are skipped and listed). The training flags come
from mobileone_tf.quantization.QatOptions; the file is written as
convert.py's TFLite files are (verified against the QAT model, TFLite
metadata unless --nometadata, labels.txt beside it, --report).
"""

from absl import flags

from mobileone_tf import cli, dataflags
from mobileone_tf.export import options
from mobileone_tf.quantization.options import QatOptions

FILE_FLAGS = ("labels", "verify", "verify_data", "metadata", "overwrite", "report_path")
cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_list("train_data", None, "folder(s) of (unlabelled) training images, comma-separated",
                  required=True)
flags.DEFINE_string("output", None, "output .tflite", required=True)
dataflags.define_flags(QatOptions, image_size=224)
dataflags.define_flags(options.Int8Options, only=("int8_io",))
dataflags.define_flags(options.ExportOptions, only=FILE_FLAGS)
flags.adopt_module_key_flags(dataflags)  # --help lists them
flags.register_validator("epochs", lambda v: v >= 1, "must be >= 1 (0 exports without any "
                         "QAT; for post-training int8 use scripts/convert.py --quantize int8)")
flags.register_validator("steps_per_epoch", lambda v: v is None or v >= 1, "must be >= 1 (omit "
                         "it for one pass over the training images)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from mobileone_tf import export
    int8 = dataflags.from_flags(options.Int8Options, only=("int8_io",))
    _, _, report = export.qat_variant_to_tflite(
        FLAGS.variant, cli.weights_arg(FLAGS.weights), FLAGS.train_data, FLAGS.output,
        dataflags.from_flags(QatOptions),
        dataflags.from_flags(options.ExportOptions, only=FILE_FLAGS, int8=int8))
    if report["qat"].get("skipped"):
        print(report["qat"]["skipped"])
    print(export.format_report(report))


if __name__ == "__main__":
    cli.main(main)
