"""Train or fine-tune MobileOne (thin shell over mobileone_tf.training).

From scratch (the paper's recipe):
  python scripts/train.py --variant s1 --train_data DIR --val_data DIR \
      --epochs 300 --batch_size 256 --output_dir runs/s1
Fine-tune Apple's S0 on a 10-class ImageFolder:
  python scripts/train.py --variant s0 --weights imagenet --classes 10 \
      --train_data DIR --val_data DIR --epochs 2 --batch_size 64 \
      --image_sizes 160 --resize_epochs 0 --base_lr 0.01 --warmup_epochs 0.2 \
      --ema_decay 0 --weight_decay 1e-5 --output_dir runs/ft
A killed run continues from its last completed epoch with --resume (same
--output_dir); a folder holding a finished run is never touched unless
--overwrite (start over). The training flags and their defaults come from
mobileone_tf.training.TrainConfig.
Several machines: the same command on every host with --strategy multi_worker
and that host's TF_CONFIG (--output_dir on a file system all hosts share; only
the chief writes into it); --sync_batchnorm for small per-replica batches.
"""

from absl import flags

from mobileone_tf import cli, dataflags
from mobileone_tf.training import config

FLAGS = flags.FLAGS
config.define_flags()
flags.adopt_module_key_flags(dataflags)  # --help lists them
flags.DEFINE_string("train_data", None, "ImageFolder training directory, or TFRecord shards "
                    "(file or glob; needs --classes).", required=True)
flags.DEFINE_string("val_data", None, "ImageFolder validation directory (same classes), or "
                    "TFRecord shards.")
flags.DEFINE_integer("label_offset", 0, "Added to TFRecord labels (-1 for 1-based ImageNet "
                     "shards).")
flags.DEFINE_string("output_dir", None, "Run directory (checkpoints, logs, fused model).",
                    required=True)
flags.DEFINE_bool("overwrite", False, "Start over in an --output_dir that holds a run "
                  "(finished or not): its run files are removed first.")
flags.DEFINE_bool("resume", False, "Continue the unfinished run in --output_dir from its "
                  "last completed epoch (starts a new run when there is none).")


def main(argv):
    del argv
    import json
    from mobileone_tf import training
    summary = training.run(config.from_flags(FLAGS), FLAGS.train_data, FLAGS.val_data,
                           FLAGS.output_dir, label_offset=FLAGS.label_offset,
                           overwrite=FLAGS.overwrite, resume=FLAGS.resume)
    print(json.dumps(training.report(summary), indent=2))


if __name__ == "__main__":
    cli.main(main)
