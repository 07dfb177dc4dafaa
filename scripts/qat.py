r"""Quantization-aware training of a fused MobileOne to a full-integer int8 TFLite model.

    python scripts/qat.py --variant s0 --weights imagenet --train_data DIR[,DIR...] \
        --epochs 1 --steps_per_epoch 300 --output mobileone_s0_int8.tflite

Thin absl shell over :func:`mobileone_tf.quantization.qat_from_weights`
(distillation from the float model: the training folder needs no labels;
undecodable images in it are skipped and listed).
"""

from absl import flags

from mobileone_tf import cli

cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_list("train_data", None, "folder(s) of (unlabelled) training images, comma-separated",
                  required=True)
flags.DEFINE_list("exclude", None, "leave out the image paths matching these globs (a held-out "
                  "slice, e.g. '*/tiny-imagenet-202/images/*_2[0-4].JPEG')")
flags.DEFINE_enum("augment", "crop_flip", ["crop_flip", "random_resized_crop", "none"],
                  "training image transform (none: the eval centre crop)")
flags.DEFINE_bool("freeze_ranges", False, "keep the calibrated activation ranges during QAT")
flags.DEFINE_bool("bias_correction", False, "after fine-tuning, correct the biases for the "
                  "export's int8 weight rounding")
flags.DEFINE_string("output", None, "output .tflite", required=True)
flags.DEFINE_integer("epochs", 1, "QAT epochs (>= 1)")
flags.DEFINE_integer("steps_per_epoch", None, "batches per epoch (>= 1; default: one pass "
                     "over the training images)")
flags.DEFINE_integer("batch_size", 32, "batch size", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "training/export input size (pixels)")
flags.DEFINE_float("learning_rate", 1e-5, "Adam learning rate (cosine decay)")
flags.DEFINE_float("temperature", 2.0, "distillation temperature")
flags.DEFINE_enum("io", "float32", ["float32", "int8", "uint8"], "TFLite input/output type")
flags.DEFINE_integer("calibration_steps", 10, "batches to set the activation ranges "
                     "before QAT (0: TFMOT's [-6, 6])", lower_bound=0)
flags.DEFINE_string("checkpoint_dir", None, "checkpoint each epoch here and resume")
flags.DEFINE_bool("overwrite", False, "overwrite --output")
flags.DEFINE_enum("mix", "none", ["none", "mixup", "cutmix"],
                  "blend training images in pairs before distillation (function matching)")
flags.DEFINE_float("mix_alpha", 1.0, "MixUp Beta(alpha, alpha) / CutMix strength")
flags.register_validator("epochs", lambda v: v >= 1, "must be >= 1 (0 exports without any "
                         "QAT; for post-training int8 use scripts/convert.py --quantize int8)")
flags.register_validator("steps_per_epoch", lambda v: v is None or v >= 1, "must be >= 1 (omit "
                         "it for one pass over the training images)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from mobileone_tf import quantization
    _, path, report = quantization.qat_from_weights(
        FLAGS.variant, cli.weights_arg(FLAGS.weights), FLAGS.train_data, FLAGS.output,
        image_size=FLAGS.image_size, batch_size=FLAGS.batch_size, overwrite=FLAGS.overwrite,
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        learning_rate=FLAGS.learning_rate, temperature=FLAGS.temperature, io=FLAGS.io,
        checkpoint_dir=FLAGS.checkpoint_dir, calibration_steps=FLAGS.calibration_steps,
        mix=None if FLAGS.mix == "none" else FLAGS.mix, mix_alpha=FLAGS.mix_alpha,
        exclude=FLAGS.exclude, augment=False if FLAGS.augment == "none" else FLAGS.augment,
        freeze_ranges=FLAGS.freeze_ranges, bias_correction=FLAGS.bias_correction)
    if report.get("skipped"):
        print(report["skipped"])
    print(f"Wrote {path}: {report['size_bytes'] / 1e6:.2f} MB, ops {report['ops']}")


if __name__ == "__main__":
    cli.main(main)
