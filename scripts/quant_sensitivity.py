"""Per-layer int8 sensitivity of a MobileOne (issue 16): the layer-wise SQNR
of the full int8 PTQ model and a one-layer-at-a-time scan scored on
held-out training-side images (thin shell over
:func:`mobileone_tf.export.sensitivity.sensitivity_scan`).

  python scripts/quant_sensitivity.py --variant s0 --weights mobileone_s0.pth.tar \
      --calibration_data calib/ --holdout_data holdout/ --output scan.json

Writes ``--output`` (JSON) and the markdown table beside it (``.md``). Keep
the worst layers float with ``convert.py --float_layers a,b``. Exit 1 with
one ``error:`` line (nothing written) for bad input.
"""

import os

from absl import flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_string("calibration_data", None, "Image folder for int8 calibration.",
                    required=True)
flags.DEFINE_string("holdout_data", None, "Held-out training-side images (labels.csv or class "
                    "folders add top-1); never an evaluation set.", required=True)
flags.DEFINE_string("output", None, "Report JSON path (the .md table goes beside it).",
                    required=True)
flags.DEFINE_enum("mode", "only", ["only", "all_but"],
                  "only: one layer int8, the rest float; all_but: one layer float.")
flags.DEFINE_integer("calibration_steps", 100, "Calibration images (batch size 1).")
flags.DEFINE_bool("equalize", True, "Equalize activation ranges first (as convert.py).")
flags.DEFINE_integer("input_size", 224, "Fixed input height and width.")
flags.DEFINE_integer("max_images", None, "Use at most this many held-out images (spread).")
flags.DEFINE_integer("error_images", 64, "Held-out images for the per-layer SQNR table.")
flags.DEFINE_integer("num_threads", None, "LiteRT threads.")
flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")


def main(argv):
    del argv
    table = os.path.splitext(FLAGS.output)[0] + ".md"
    for path in (FLAGS.output, table):
        if os.path.exists(path) and not FLAGS.overwrite:
            raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.output))):
        raise FileNotFoundError(f"--output: folder of {FLAGS.output} does not exist")
    import mobileone_tf
    from mobileone_tf import fileio
    from mobileone_tf.export import sensitivity
    model = mobileone_tf.MobileOne(FLAGS.variant, weights=cli.weights_arg(FLAGS.weights),
                                   classifier_activation=None)
    report = sensitivity.sensitivity_scan(
        model, FLAGS.calibration_data, FLAGS.holdout_data, mode=FLAGS.mode,
        calibration_steps=FLAGS.calibration_steps, equalize=FLAGS.equalize,
        input_size=FLAGS.input_size, max_images=FLAGS.max_images,
        error_images=FLAGS.error_images, num_threads=FLAGS.num_threads, progress=print)
    report.update(variant=FLAGS.variant, weights=FLAGS.weights)
    text = sensitivity.markdown(report)
    fileio.write_json(report, FLAGS.output)
    fileio.atomic_write(table, text)
    print(text)


if __name__ == "__main__":
    cli.main(main)
