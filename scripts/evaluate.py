"""Top-1 / top-5 of a MobileOne model (or an exported .tflite / .onnx /
SavedModel) on an image folder with labels.csv or class folders (synset-named
folders are mapped to ImageNet-1k indices).

  python scripts/evaluate.py --variant s0 --weights imagenet --data DIR --json OUT.json
  python scripts/evaluate.py --model mobileone_s0.tflite --data DIR --json OUT.json

Undecodable images (corrupt, truncated, not an image) are skipped: the scores
cover the decodable images only (``n``); the summary line and the JSON
(``skipped``: paths, ``n_skipped``) name and count the skipped ones. A label
outside the model's classes stops the command naming its labels.csv row.
"""

from absl import flags

from mobileone_tf import cli

FLAGS = flags.FLAGS
cli.define_model_flags(variant="s0", weights="imagenet", fused=False)
flags.DEFINE_string("model", None, "An exported .tflite / .onnx / SavedModel to evaluate "
                    "instead of building a Keras model.")
flags.DEFINE_string("data", None, "Image folder (labels.csv or class folders). Undecodable "
                    "images are skipped, counted and listed (JSON: skipped, n_skipped).",
                    required=True)
flags.DEFINE_string("json", None, "Write the result JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --json file.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size (pixels).")
flags.DEFINE_float("crop_pct", 0.875, "Centre-crop fraction (resize short side to size/crop_pct).")
flags.DEFINE_bool("per_image", False, "Keep per-image files, predictions and labels in the JSON.")
flags.DEFINE_list("include", None, "Score only the paths matching one of these globs "
                  "(e.g. a held-out slice: '*/images/*_2[0-4].JPEG').")
flags.DEFINE_string("reference", None, "A --per_image JSON of another model on the same data: "
                    "also report the top-1 agreement with it.")


def main(argv):
    del argv
    import os
    if FLAGS.json and os.path.exists(FLAGS.json) and not FLAGS.overwrite:
        raise FileExistsError(f"{FLAGS.json} exists (pass --overwrite to replace it)")
    from mobileone_tf import data, evaluation, fileio
    if FLAGS.model:
        from mobileone_tf import runtime
        predict, classes = runtime.load(FLAGS.model, batch_size=FLAGS.batch_size), None
        what = {"model": FLAGS.model}
    else:
        import mobileone_tf
        model = mobileone_tf.MobileOne(FLAGS.variant, weights=cli.weights_arg(FLAGS.weights),
                                       fused=FLAGS.fused, classifier_activation=None)
        predict, classes = model.predict_on_batch, int(model.output_shape[-1])
        what = {"variant": FLAGS.variant, "weights": FLAGS.weights, "fused": FLAGS.fused}
    reference = fileio.read_json(FLAGS.reference) if FLAGS.reference else None
    result = evaluation.evaluate_folder(predict, FLAGS.data, classes, FLAGS.batch_size,
                                        FLAGS.image_size, FLAGS.crop_pct, include=FLAGS.include)
    summary = {key: result[key] for key in ("top1", "top5", "n", "n_skipped", "skipped")}
    summary.update(what, data=FLAGS.data, image_size=FLAGS.image_size, crop_pct=FLAGS.crop_pct,
                   include=FLAGS.include)
    print(f"top-1 {summary['top1']:.4f}  top-5 {summary['top5']:.4f}  on {summary['n']} images")
    if reference is not None:
        summary["reference"] = {"json": FLAGS.reference,
                                **evaluation.agreement(result, reference)}
        print(f"top-1 agreement with {FLAGS.reference}: {summary['reference']['agreement']:.4f}")
    if result["n_skipped"]:
        print(data.describe_skipped(result["skipped"], result["n"] + result["n_skipped"]))
    if FLAGS.json:
        if FLAGS.per_image:
            summary.update({k: result[k] for k in ("files", "predictions", "labels")})
        fileio.write_json(summary, FLAGS.json)


if __name__ == "__main__":
    cli.main(main)
