"""Train or fine-tune MobileOne (thin shell over mobileone_tf.training).

From scratch (the paper's recipe):
  python scripts/train.py --variant s1 --train_data DIR --val_data DIR \
      --epochs 300 --batch_size 256 --output_dir runs/s1
Fine-tune Apple's S0 on a 10-class ImageFolder:
  python scripts/train.py --variant s0 --weights imagenet --classes 10 \
      --train_data DIR --val_data DIR --epochs 2 --batch_size 64 \
      --image_sizes 160 --resize_epochs 0 --base_lr 0.01 --warmup_epochs 0.2 \
      --ema_decay 0 --weight_decay 1e-5 --output_dir runs/ft
A killed run resumes from its last completed epoch when rerun with the same
--output_dir.
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("variant", "s0", ["s0", "s1", "s2", "s3", "s4"], "MobileOne variant.")
flags.DEFINE_string("train_data", None, "ImageFolder training directory, or TFRecord shards "
                    "(file or glob; needs --classes).", required=True)
flags.DEFINE_string("val_data", None, "ImageFolder validation directory (same classes), or "
                    "TFRecord shards.")
flags.DEFINE_integer("label_offset", 0, "Added to TFRecord labels (-1 for 1-based ImageNet shards).")
flags.DEFINE_string("output_dir", None, "Run directory (checkpoints, logs, fused model).",
                    required=True)
flags.DEFINE_integer("epochs", 300, "Epochs.")
flags.DEFINE_integer("batch_size", 256, "Global batch size (split across replicas).")
flags.DEFINE_float("base_lr", 0.1, "Learning rate per 256 images.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_bool("nesterov", False, "Nesterov momentum.")
flags.DEFINE_float("warmup_epochs", 5.0, "Linear warm-up epochs.")
flags.DEFINE_float("warmup_start_factor", 0.001, "Warm-up starts at this x lr.")
flags.DEFINE_float("min_lr", 1e-6, "Final learning rate of the cosine.")
flags.DEFINE_float("weight_decay", 1e-4, "Coupled L2 (PyTorch style) at the start.")
flags.DEFINE_float("min_weight_decay", 1e-5, "Coupled L2 at the end (cosine).")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.")
flags.DEFINE_float("ema_decay", 0.9995, "EMA decay of the weights (0: off).")
flags.DEFINE_float("clip_grad_norm", 0.0, "Clip gradients to this global L2 norm (0: off); "
                   "use it when fine-tuning the BatchNorm-free fused model.")
flags.DEFINE_list("image_sizes", ["160", "192", "224"], "Progressive train crop sizes.")
flags.DEFINE_list("resize_epochs", ["0", "37", "112"],
                  "Epochs (of --resize_reference_epochs) where each size starts.")
flags.DEFINE_integer("resize_reference_epochs", 300, "Epochs the resize_epochs refer to.")
flags.DEFINE_list("augment_magnitudes", None, "RandAugment factor per stage (default per variant).")
flags.DEFINE_integer("eval_image_size", 224, "Validation crop size.")
flags.DEFINE_float("crop_scale_min", 0.08, "Random-resized crop: smallest area fraction "
                   "(0.08 torchvision/paper; larger, e.g. 0.35, for short fine-tuning).")
flags.DEFINE_string("weights", None, "imagenet, or a .weights.h5 / PyTorch checkpoint path.")
flags.DEFINE_integer("classes", None, "Number of classes (new head); default: from the data.")
flags.DEFINE_bool("fused", False, "Train the fused (plain conv) model instead of the branched one.")
flags.DEFINE_integer("freeze_backbone_epochs", 0, "Train only the head for this many epochs.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy.")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 on GPU, mixed_bfloat16 on TPU/CPU.")
flags.DEFINE_bool("xla", False, "jit_compile the train step.")
flags.DEFINE_bool("run_eagerly", False, "Debug: run the train step eagerly (no tracing).")
flags.DEFINE_integer("steps_per_epoch", None, "Limit steps per epoch (default: full pass).")
flags.DEFINE_integer("validation_steps", None, "Limit validation steps.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    del argv
    import json
    from mobileone_tf import training
    cfg = training.TrainConfig(
        variant=FLAGS.variant, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        base_lr=FLAGS.base_lr, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov,
        warmup_epochs=FLAGS.warmup_epochs, warmup_start_factor=FLAGS.warmup_start_factor,
        min_lr=FLAGS.min_lr, weight_decay=FLAGS.weight_decay,
        min_weight_decay=FLAGS.min_weight_decay, label_smoothing=FLAGS.label_smoothing,
        ema_decay=FLAGS.ema_decay, clip_grad_norm=FLAGS.clip_grad_norm, image_sizes=tuple(int(s) for s in FLAGS.image_sizes),
        resize_epochs=tuple(int(s) for s in FLAGS.resize_epochs),
        resize_reference_epochs=FLAGS.resize_reference_epochs,
        augment_magnitudes=(tuple(float(m) for m in FLAGS.augment_magnitudes)
                            if FLAGS.augment_magnitudes else None),
        eval_image_size=FLAGS.eval_image_size, crop_scale_min=FLAGS.crop_scale_min, weights=FLAGS.weights,
        classes=FLAGS.classes, fused=FLAGS.fused,
        freeze_backbone_epochs=FLAGS.freeze_backbone_epochs, strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision, jit_compile=FLAGS.xla, run_eagerly=FLAGS.run_eagerly,
        steps_per_epoch=FLAGS.steps_per_epoch, validation_steps=FLAGS.validation_steps,
        seed=FLAGS.seed)
    summary = training.run(cfg, FLAGS.train_data, FLAGS.val_data, FLAGS.output_dir,
                           label_offset=FLAGS.label_offset)
    print(json.dumps({k: v for k, v in summary.items()
                      if k not in ("model", "fused_model", "config")}, indent=2))


if __name__ == "__main__":
    app.run(main)
