"""Classify images with a MobileOne ImageNet model and print the top classes.

  python scripts/classify.py IMAGE [IMAGE ...] --variant s0 --weights imagenet

An image that is missing or cannot be decoded (corrupt, truncated, not an
image) stops the command with one ``error:`` line naming the file, before the
model is built.
"""

from absl import app, flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet", fused=True)
flags.DEFINE_integer("top", 5, "How many classes to print per image.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size (pixels).")


def main(argv):
    images = argv[1:]
    if not images:
        raise app.UsageError("Give one or more image files.")
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
