"""Classify images with a MobileOne ImageNet model and print the top-5 classes.

  python scripts/classify.py IMAGE [IMAGE ...] --variant s0 --weights imagenet
"""

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "s0", "MobileOne variant s0..s4.")
flags.DEFINE_string("weights", "imagenet", "'imagenet', 'none' (random), a .weights.h5 or a "
                    "PyTorch checkpoint.")
flags.DEFINE_bool("fused", True, "Use the fused (inference) form.")
flags.DEFINE_integer("top", 5, "How many classes to print per image.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size.")


def main(argv):
    from mobileone_tf import cli
    images = argv[1:]
    if not images:
        raise app.UsageError("Give one or more image files.")
    import os
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        raise app.UsageError(f"No such image file: {', '.join(missing)}")
    import mobileone_tf
    from mobileone_tf import data
    model = mobileone_tf.MobileOne(FLAGS.variant, weights=cli.weights_arg(FLAGS.weights), fused=FLAGS.fused)
    probs = model.predict(data.load_images(images, FLAGS.image_size), verbose=0)
    for path, top in zip(images, mobileone_tf.decode_predictions(probs, top=FLAGS.top)):
        print(path)
        for synset, name, p in top:
            print(f"  {p:7.2%}  {name} ({synset})")


if __name__ == "__main__":
    from mobileone_tf import cli
    sys.exit(app.run(cli.run(main)))
