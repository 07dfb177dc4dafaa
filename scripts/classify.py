"""Classify images with a MobileOne ImageNet model and print the top classes.

  python scripts/classify.py                     # the bundled photos in samples/
  python scripts/classify.py IMAGE [IMAGE ...] --variant s0 --weights imagenet

Apple's weights are downloaded and cached on first use; offline, put
``mobileone_s0.pth.tar`` in a folder and set ``MOBILEONE_TF_CHECKPOINTS`` to it.
An image that is missing or cannot be decoded (corrupt, truncated, not an
image) stops the command with one ``error:`` line naming the file, before the
model is built.
"""

import glob
import os
import sys

from absl import flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet", fused=True)
flags.DEFINE_integer("top", 5, "How many classes to print per image.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size (pixels, 32..4096).")
flags.register_validator("image_size", lambda v: v is not None and 32 <= v <= 4096,
                         "must be 32..4096 pixels (MobileOne's five stride-2 stages need 32; "
                         "above 4096 one image's activations take gigabytes)")
# the repository's sample photos (CC0 / public domain, see samples/README.md)
SAMPLES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                        "samples"))


def sample_images():
    """The bundled ``samples/*.jpg`` (sorted); raises OSError naming the folder."""
    images = sorted(glob.glob(os.path.join(SAMPLES, "*.jpg")))
    if not images:
        raise FileNotFoundError(f"no image given and no sample photos in {SAMPLES} "
                                "(give image files)")
    return images


def main(argv):
    images = argv[1:]
    if not images:
        images = sample_images()
        print(f"No image given: classifying the sample photos in {SAMPLES}", file=sys.stderr)
    import mobileone_tf
    from mobileone_tf import data
    batch = data.load_images(images, FLAGS.image_size)
    model = mobileone_tf.MobileOne(FLAGS.variant, weights=cli.weights_arg(FLAGS.weights),
                                   fused=FLAGS.fused)
    probs = model.predict(batch, verbose=0)
    for path, top in zip(images, mobileone_tf.decode_predictions(probs, top=FLAGS.top)):
        print(path)
        for synset, name, p in top:
            print(f"  {p:7.2%}  {name} ({synset})")


if __name__ == "__main__":
    cli.main(main)
