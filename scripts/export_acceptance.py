"""Acceptance figures of the exported S0 on real images (thin shell over
:func:`mobileone_tf.export.acceptance.run_acceptance`).

Builds MobileOne-S0 from Apple's fused checkpoint, exports TFLite float32 /
float16 / int8 (PTQ calibrated on a separate folder) and ONNX at 224x224, and
evaluates every file and the fused Keras model on a labelled set
(labels.csv: file,label) with the same eval transform, reporting top-1 and
the number of images whose top-1 differs from Keras.

  python scripts/export_acceptance.py --checkpoint ../shared/data/mobileone_s0.pth.tar \
      --eval_data ../shared/data/imagenet-val-1300 \
      --calibration_data ../shared/data/imagenette/train --workdir /tmp/acc
"""

from absl import flags

from mobileone_tf import cli
from mobileone_tf.export.acceptance import DEFAULT_FORMATS, JOBS

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Apple's fused mobileone_s0.pth.tar")
flags.DEFINE_string("eval_data", None, "Folder with labels.csv (file,label) or class folders")
flags.DEFINE_string("calibration_data", None, "Image folder for int8 PTQ (not the eval set)")
flags.DEFINE_integer("calibration_steps", 100, "int8 calibration images")
flags.DEFINE_integer("limit", 0, "Evaluate only the first N images (0: all)")
flags.DEFINE_string("workdir", "/tmp/mobileone_export_acceptance", "Where exports go")
flags.DEFINE_list("formats", list(DEFAULT_FORMATS), f"What to evaluate: {', '.join(JOBS)}")
flags.DEFINE_string("report", None, "Write the results as JSON here")
flags.mark_flags_as_required(["checkpoint", "eval_data"])


def main(argv):
    del argv
    from mobileone_tf.export.acceptance import run_acceptance
    run_acceptance(
        FLAGS.checkpoint, FLAGS.eval_data, FLAGS.workdir,
        calibration_data=FLAGS.calibration_data, calibration_steps=FLAGS.calibration_steps,
        limit=FLAGS.limit, formats=FLAGS.formats, report_path=FLAGS.report,
        progress=lambda name, figures: print(name, figures, flush=True))


if __name__ == "__main__":
    cli.main(main)
