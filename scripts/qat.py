"""Quantization-aware training of a fused MobileOne to a full-integer int8 TFLite model.

    python scripts/qat.py --variant s0 --weights imagenet --train_data DIR \
        --epochs 1 --steps_per_epoch 300 --output mobileone_s0_int8.tflite

Thin absl shell over :mod:`mobileone_tf.quantization` (distillation from the
float model: the training folder needs no labels).
"""

import os

from absl import app, flags

flags.DEFINE_string("variant", "s0", "s0..s4")
flags.DEFINE_string("weights", "imagenet", "'imagenet', a .weights.h5 or a PyTorch checkpoint")
flags.DEFINE_string("train_data", None, "folder of (unlabelled) training images", required=True)
flags.DEFINE_string("output", None, "output .tflite", required=True)
flags.DEFINE_integer("epochs", 1, "epochs")
flags.DEFINE_integer("steps_per_epoch", None, "steps per epoch (default: one pass)")
flags.DEFINE_integer("batch_size", 32, "batch size")
flags.DEFINE_integer("image_size", 224, "training/export input size (pixels)")
flags.DEFINE_float("learning_rate", 1e-5, "Adam learning rate (cosine decay)")
flags.DEFINE_float("temperature", 2.0, "distillation temperature")
flags.DEFINE_enum("io", "float32", ["float32", "int8", "uint8"], "TFLite input/output type")
flags.DEFINE_integer("calibration_steps", 10,
                     "batches to set the activation ranges before QAT (0: TFMOT's [-6, 6])")
flags.DEFINE_string("checkpoint_dir", None, "checkpoint each epoch here and resume")
flags.DEFINE_bool("overwrite", False, "overwrite --output")
flags.DEFINE_enum("mix", "none", ["none", "mixup", "cutmix"],
                  "blend training images in pairs before distillation (function matching)")
flags.DEFINE_float("mix_alpha", 1.0, "MixUp Beta(alpha, alpha) / CutMix strength")
FLAGS = flags.FLAGS


def build_float_model(variant, weights, image_size):
    """Fused Keras 3 float model with logits; ``weights`` is 'imagenet', a
    .weights.h5 or a PyTorch checkpoint (ported safely by mobileone_tf.porting)."""
    import mobileone_tf as mo
    return mo.MobileOne(variant, weights=weights, fused=True,
                        input_shape=(image_size, image_size, 3), classifier_activation=None)


def main(argv):
    del argv
    from mobileone_tf import quantization as q
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        raise app.UsageError(f"{FLAGS.output} exists (pass --overwrite)")
    train = q.image_folder_dataset(FLAGS.train_data, image_size=FLAGS.image_size,
                                   batch_size=FLAGS.batch_size)
    model = build_float_model(FLAGS.variant, FLAGS.weights, FLAGS.image_size)
    _, path, report = q.quantization_aware_training(
        model, train, FLAGS.output, epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch, learning_rate=FLAGS.learning_rate,
        temperature=FLAGS.temperature, io=FLAGS.io, checkpoint_dir=FLAGS.checkpoint_dir,
        calibration_steps=FLAGS.calibration_steps, overwrite=FLAGS.overwrite,
        mix=None if FLAGS.mix == "none" else FLAGS.mix, mix_alpha=FLAGS.mix_alpha)
    print(f"Wrote {path}: {report['size_bytes'] / 1e6:.2f} MB, ops {report['ops']}")


if __name__ == "__main__":
    app.run(main)
