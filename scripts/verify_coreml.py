"""Verify an exported Core ML package against the Keras MobileOne
(thin shell over :func:`mobileone_tf.export.verify_coreml`).

macOS: runs ``MLModel.predict`` on images (``--images DIR`` or generated ones)
and compares class probabilities and top-1 with the fused Keras model
(float16 compute: tolerance ``--rtol``, default 1e-2 of max |output|).
Linux (no Core ML runtime): the spec-level checks of
:func:`mobileone_tf.export.check_coreml` (ML program, RGB ImageType input,
classifier labels and output names, no batch_norm op, conv weights equal to
the fused Keras weights at float16 precision).

  python scripts/verify_coreml.py MobileOneS0.mlpackage --variant s0 --weights imagenet

Exit code 0 when every check passes, 1 otherwise (or with one ``error:`` line
for a missing package or unreadable weights).
"""

import json

from absl import app, flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet")
flags.DEFINE_string("images", None, "Image folder for the macOS comparison.")
flags.DEFINE_integer("num_images", 8, "Images to compare.")
flags.DEFINE_float("rtol", 1e-2, "Max |diff| allowed, relative to max |output| (float16).")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: verify_coreml.py PACKAGE.mlpackage [flags]")
    from mobileone_tf import export
    result = export.verify_coreml(argv[1], FLAGS.variant, weights=cli.weights_arg(FLAGS.weights),
                                  images=FLAGS.images, num_images=FLAGS.num_images,
                                  rtol=FLAGS.rtol)
    print(json.dumps(result, indent=2, default=str))
    print("PASS" if result["passed"] else "FAIL")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    cli.main(main)
