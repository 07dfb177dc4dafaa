"""Top-1 / top-5 of a MobileOne model (or an exported .tflite / .onnx file) on
an image folder with labels.csv or synset-named class folders.

  python scripts/evaluate.py --variant s0 --weights imagenet --data DIR --json OUT.json
  python scripts/evaluate.py --model mobileone_s0.tflite --data DIR --json OUT.json
"""

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "s0", "MobileOne variant s0..s4.")
flags.DEFINE_string("weights", "imagenet", "'imagenet', 'none' (random), a .weights.h5 or a "
                    "PyTorch checkpoint.")
flags.DEFINE_bool("fused", False, "Evaluate the fused (inference) form.")
flags.DEFINE_string("model", None, "An exported .tflite / .onnx / SavedModel to evaluate "
                    "instead of building a Keras model.")
flags.DEFINE_string("data", None, "Image folder (labels.csv or ImageFolder).", required=True)
flags.DEFINE_string("json", None, "Write the result JSON here.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("image_size", 224, "Centre-crop size.")
flags.DEFINE_float("crop_pct", 0.875, "Centre-crop fraction (resize short side to size/crop_pct).")
flags.DEFINE_bool("per_image", False, "Keep per-image predictions in the JSON.")


def main(argv):
    from mobileone_tf import cli
    del argv
    from mobileone_tf import data, evaluation
    synsets = data.imagenet_synset_to_index() if data.is_synset_folder(FLAGS.data) else None
    n = len(data.list_examples(FLAGS.data, synset_to_index=synsets)[0])
    dataset = data.eval_dataset(FLAGS.data, FLAGS.batch_size, FLAGS.image_size, FLAGS.crop_pct,
                                synset_to_index=synsets)
    if FLAGS.model:
        from mobileone_tf import runtime
        predict = runtime.load(FLAGS.model, batch_size=FLAGS.batch_size)
        what = {"model": FLAGS.model}
    else:
        import mobileone_tf
        model = mobileone_tf.MobileOne(FLAGS.variant, weights=cli.weights_arg(FLAGS.weights),
                                       fused=FLAGS.fused,
                                       classifier_activation=None)
        predict = model.predict_on_batch
        what = {"variant": FLAGS.variant, "weights": FLAGS.weights, "fused": FLAGS.fused}
    result = evaluation.evaluate(predict, dataset, n)
    summary = {"top1": result["top1"], "top5": result["top5"], "n": result["n"], **what,
               "data": FLAGS.data, "image_size": FLAGS.image_size}
    print(f"top-1 {summary['top1']:.4f}  top-5 {summary['top5']:.4f}  on {summary['n']} images")
    if FLAGS.json:
        if FLAGS.per_image:
            summary.update(predictions=result["predictions"], labels=result["labels"])
        evaluation.write_json(summary, FLAGS.json)


if __name__ == "__main__":
    from mobileone_tf import cli
    sys.exit(app.run(cli.run(main)))
