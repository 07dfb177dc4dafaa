"""Latency / MACs / training-throughput benchmark (thin shell over
:mod:`mobileone_tf.benchmark`; see docs/benchmark.md).

Examples:
  python scripts/benchmark.py --json bench.json --markdown bench.md --plot bench.png
  python scripts/benchmark.py --variants s0 --runtimes tflite --threads 2 --runs 100
  python scripts/benchmark.py --study activations --markdown act.md
  python scripts/benchmark.py --mode train --variants s0 --runs 5 --warmup 2
  python scripts/benchmark.py --import_device_results pixel7.txt --markdown pixel7.md
"""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["s0", "s1", "s2", "s3", "s4"], "MobileOne variants.")
flags.DEFINE_list("runtimes", ["keras", "tflite", "onnx"],
                  "Runtimes: keras, tflite, onnx, torch (timm in a subprocess).")
flags.DEFINE_list("threads", ["1", "2"], "Thread counts (one subprocess each).")
flags.DEFINE_list("forms", ["fused", "branched"], "MobileOne forms.")
flags.DEFINE_list("quantizations", ["float32", "float16", "int8"],
                  "TFLite models (branched MobileOne: float32 only).")
flags.DEFINE_list("baselines", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                                "efficientnet_b0"], "keras.applications baselines ('' for none).")
flags.DEFINE_list("models", None, "Explicit model names (overrides --variants/--baselines).")
flags.DEFINE_integer("runs", 100, "Timed runs per measurement (median/p90 over them).")
flags.DEFINE_integer("warmup", 10, "Untimed warm-up runs.")
flags.DEFINE_integer("rounds", 5, "Split the runs into this many rounds, interleaved across "
                     "models (a slow spell spreads over all of them); the spread of the "
                     "round medians is reported as noise.")
flags.DEFINE_integer("image_size", 224, "Input height = width.")
flags.DEFINE_enum("study", None, ["activations", "blocks", "flops"], "Paper latency study.")
flags.DEFINE_enum("mode", "latency", ["latency", "train"], "Inference latency or training.")
flags.DEFINE_string("workdir", None, "Cache for converted model files (default: temp dir).")
flags.DEFINE_string("import_device_results", None,
                    "benchmark_model log or CoreML report JSON to tabulate instead.")
flags.DEFINE_string("json", None, "Write all figures + machine description here.")
flags.DEFINE_string("markdown", None, "Write the markdown table here.")
flags.DEFINE_string("plot", None, "Write the latency plots (PNG) here.")
flags.DEFINE_string("plot_runtime", "tflite-float32", "Runtime shown in the plot.")


def main(argv):
    del argv
    from mobileone_tf import benchmark
    if FLAGS.import_device_results:
        result = benchmark.import_device_results(FLAGS.import_device_results)
    else:
        result = benchmark.run({
            "mode": FLAGS.mode, "study": FLAGS.study, "variants": FLAGS.variants,
            "runtimes": FLAGS.runtimes, "threads": [int(t) for t in FLAGS.threads],
            "forms": FLAGS.forms, "quantizations": FLAGS.quantizations,
            "baselines": [b for b in FLAGS.baselines if b], "models": FLAGS.models,
            "runs": FLAGS.runs, "warmup": FLAGS.warmup, "rounds": FLAGS.rounds, "image_size": FLAGS.image_size,
            "workdir": FLAGS.workdir})
    text = benchmark.to_markdown(result)
    print(text)
    if FLAGS.json:
        benchmark.write_json(result, FLAGS.json)
    if FLAGS.markdown:
        benchmark.write_markdown(result, FLAGS.markdown)
    if FLAGS.plot:
        runtime = FLAGS.plot_runtime
        if FLAGS.import_device_results or not any(r["runtime"] == runtime
                                                  for r in result["rows"]):
            runtime = result["rows"][0]["runtime"]
        benchmark.plot(result, FLAGS.plot, runtime=runtime)


if __name__ == "__main__":
    app.run(main)
