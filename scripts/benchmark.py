"""Latency / MACs / training-throughput benchmark (thin shell over
:mod:`mobileone_tf.benchmark`; see docs/benchmark.md).

Examples:
  python scripts/benchmark.py --json bench.json --markdown bench.md --plot bench.png
  python scripts/benchmark.py --variants s0 --runtimes tflite --threads 2 --runs 100
  python scripts/benchmark.py --variants s0,s1 --forms fused --runtimes tflite --baselines '' \
      --quantizations bare,float32,unfolded,float16,int8 --threads 1,2 --markdown files.md
  python scripts/benchmark.py --study activations --markdown act.md
  python scripts/benchmark.py --mode train --variants s0 --backends tensorflow,jax,torch \
      --threads 2 --image_size 128 --batch 8 --runs 6 --rounds 3 --warmup 2
  python scripts/benchmark.py --import_device_results pixel7.txt --markdown pixel7.md
"""

from absl import flags

from mobileone_tf import cli
from mobileone_tf.benchmark import orchestration as bench

FLAGS = flags.FLAGS
D = bench.DEFAULTS
flags.DEFINE_list("variants", D["variants"], "MobileOne variants.")
flags.DEFINE_list("runtimes", D["runtimes"],
                  "Runtimes: keras, tflite, onnx, torch (timm in a subprocess).")
flags.DEFINE_list("threads", [str(t) for t in D["threads"]],
                  "Thread counts (one subprocess each).")
flags.DEFINE_list("forms", D["forms"], "MobileOne forms.")
flags.DEFINE_list("quantizations", D["quantizations"],
                  "TFLite files: float32 (the default export), float16, int8, and for "
                  "MobileOne bare (no normalization, logits), unfolded (normalization as "
                  "MUL+ADD). Branched MobileOne: float32 only.")
flags.DEFINE_list("baselines", list(bench.zoo.BASELINES),
                  "keras.applications baselines ('' for none).")
flags.DEFINE_list("models", None, "Explicit model names (overrides --variants/--baselines), "
                  "e.g. deeplabv3_mobileone_s0,deeplabv3_mobilenet_v3_large (360x480 "
                  "segmenters; need KerasHub).")
flags.DEFINE_integer("runs", D["runs"], "Timed runs per measurement (median/p90 over them).")
flags.DEFINE_integer("warmup", D["warmup"], "Untimed warm-up runs.")
flags.DEFINE_integer("rounds", D["rounds"], "Split the runs into this many rounds, interleaved "
                     "across models (a slow spell spreads over all of them); the spread of the "
                     "round medians is reported as noise.")
flags.DEFINE_integer("image_size", D["image_size"], "Input height = width.")
flags.DEFINE_enum("study", None, list(bench.STUDIES), "Paper latency study.")
flags.DEFINE_enum("mode", D["mode"], list(bench.MODES), "Inference latency or training.")
flags.DEFINE_list("precisions", D["precisions"], "--mode train: float32 and/or bfloat16 "
                  "(Keras mixed_bfloat16, PyTorch CPU autocast).")
flags.DEFINE_list("backends", D["backends"], "--mode train: Keras backends (tensorflow, jax, "
                  "torch, torch-compile), each in its own process, interleaved with timm.")
flags.DEFINE_integer("batch", D["batch"], "--mode train: images per step.")
flags.DEFINE_string("workdir", None, "Cache for converted model files (default: temp dir).")
flags.DEFINE_string("import_device_results", None,
                    "benchmark_model log or CoreML report JSON to tabulate instead.")
flags.DEFINE_string("json", None, "Write all figures + machine description here.")
flags.DEFINE_string("markdown", None, "Write the markdown table here.")
flags.DEFINE_string("plot", None, "Write the latency plots (PNG) here.")
flags.DEFINE_string("plot_runtime", "tflite-float32", "Runtime shown in the plot.")
flags.DEFINE_bool("overwrite", False, "Replace existing --json/--markdown/--plot files.")


def main(argv):
    del argv
    config = {"mode": FLAGS.mode, "study": FLAGS.study, "variants": FLAGS.variants,
              "runtimes": FLAGS.runtimes, "threads": FLAGS.threads, "forms": FLAGS.forms,
              "quantizations": FLAGS.quantizations,
              "baselines": [b for b in FLAGS.baselines if b], "models": FLAGS.models,
              "runs": FLAGS.runs, "warmup": FLAGS.warmup, "rounds": FLAGS.rounds,
              "image_size": FLAGS.image_size, "workdir": FLAGS.workdir,
              "precisions": FLAGS.precisions, "backends": FLAGS.backends, "batch": FLAGS.batch}
    print(bench.run_and_report(
        config, import_device_results=FLAGS.import_device_results, json_path=FLAGS.json,
        markdown_path=FLAGS.markdown, plot_path=FLAGS.plot, plot_runtime=FLAGS.plot_runtime,
        overwrite=FLAGS.overwrite))


if __name__ == "__main__":
    cli.main(main, tensorflow=False)
