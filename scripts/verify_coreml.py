"""Verify an exported Core ML package against the Keras MobileOne.

macOS: runs ``MLModel.predict`` on images (``--images DIR`` or generated ones)
and compares class probabilities and top-1 with the fused Keras model
(float16 compute: tolerance ``--rtol``, default 1e-2 of max |output|).
Linux (no Core ML runtime): the spec-level checks of
:func:`mobileone_tf.export.check_coreml` (ML program, RGB ImageType input,
classifier labels and output names, no batch_norm op, conv weights equal to
the fused Keras weights at float16 precision).

  python scripts/verify_coreml.py MobileOneS0.mlpackage --variant s0 --weights imagenet
"""

import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "s0", "MobileOne variant of the package.")
flags.DEFINE_string("weights", "imagenet", "Weights the package was exported from "
                    "('imagenet', a file, or 'none' for spec checks without weights).")
flags.DEFINE_string("images", None, "Image folder for the macOS comparison.")
flags.DEFINE_integer("num_images", 8, "Images to compare.")
flags.DEFINE_float("rtol", 1e-2, "Max |diff| allowed, relative to max |output| (float16).")


def main(argv):
    if len(argv) != 2:
        print("usage: verify_coreml.py PACKAGE.mlpackage [flags]", file=sys.stderr)
        return 2
    path = argv[1]
    import mobileone_tf as mo
    from mobileone_tf import export, runtime
    ct = export.import_coremltools()
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    h = spec.description.input[0].type.imageType.height
    model = None
    if FLAGS.weights.lower() != "none":
        model = export.prepare_model(mo.MobileOne(FLAGS.variant, weights=FLAGS.weights,
                                                  input_shape=(None, None, 3)), input_size=h)
    labels = runtime._classifier_labels(spec) if spec.description.predictedFeatureName else None
    result = export.check_coreml(path, keras_model=model, class_names=labels,
                                 check_weights=model is not None)
    ok = all(result["checks"].values())
    if sys.platform == "darwin" and model is not None:
        images = export.verification_images(FLAGS.images, h, FLAGS.num_images)
        cmp = export.compare(model.predict(images, batch_size=1, verbose=0),
                             runtime.load(path)(images), strict=True, rtol=FLAGS.rtol)
        result["predict"] = cmp
        ok = ok and cmp["passed"]
    print(json.dumps({k: result[k] for k in ("checks", "ops", "inputs", "outputs", "metadata")
                      if k in result} | ({"predict": result["predict"]}
                                          if "predict" in result else {}), indent=2,
                     default=str))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)
