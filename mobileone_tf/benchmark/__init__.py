"""Latency, MACs and throughput benchmark of MobileOne and mobile baselines.

What it measures (the paper's Sec. 3.1 / 4 argument: MACs and parameter
counts do not predict latency; activations and branches do), on the CPU it
runs on:

* latency at batch 1, NHWC float32 input (224x224 by default), median and
  p90 in milliseconds over ``runs`` runs after ``warmup`` runs, split into
  ``rounds`` interleaved rounds whose spread is reported as noise, for Keras
  (``tf.function``), TFLite (``ai_edge_litert``, default XNNPACK delegate;
  float32, float16, int8), ONNX Runtime and timm's PyTorch MobileOne, each
  thread count in its own process;
* per model: parameters, MACs (:func:`count_macs`), file size, achieved
  GFLOP/s and its share of the float32 GEMM peak of the same process;
* the paper's latency studies (activations, blocks, MACs/params vs latency
  rank correlation) and training throughput vs timm;
* phone results imported from ``benchmark_model`` logs and Core ML reports.

Modules: :mod:`~mobileone_tf.benchmark.stats` (timing statistics, NumPy
only), :mod:`~.machine`, :mod:`~.macs`, :mod:`~.zoo` (models),
:mod:`~.workers` (the TensorFlow worker process), :mod:`~.torch_worker` (the
timm process), :mod:`~.orchestration` (:func:`run`), :mod:`~.report`,
:mod:`~.device_logs`. Commands and measured figures: docs/benchmark.md.

Importing this package imports no TensorFlow: the names below are resolved
on first use.
"""

from mobileone_tf import lazy

_EXPORTS = {
    "summarize": ".stats", "time_callable": ".stats", "interleaved_timings": ".stats",
    "machine_info": ".machine", "gemm_peak": ".machine",
    "count_macs": ".macs", "count_macs_detail": ".macs",
    "IMAGE_SIZE": ".zoo", "BASELINES": ".zoo", "BASELINE_TOP1": ".zoo", "build_model": ".zoo",
    "model_names": ".zoo", "study_net": ".zoo", "top1": ".zoo", "SEGMENTERS": ".zoo",
    "SEGMENTER_SIZE": ".zoo", "input_size": ".zoo", "segmenter": ".zoo", "truncated": ".zoo",
    "Job": ".workers", "worker": ".workers", "spawn_worker": ".workers",
    "run_train_keras": ".workers", "TFLITE_QUANTIZATIONS": ".workers",
    "run_torch": ".torch_worker", "torch_available": ".torch_worker",
    "run": ".orchestration", "run_and_report": ".orchestration", "check_config": ".orchestration",
    "RUNTIMES": ".orchestration",
    "finish_rows": ".report", "correlations": ".report", "findings": ".report",
    "spearman": ".report", "summary_table": ".report", "to_markdown": ".report",
    "write_json": ".report", "write_markdown": ".report", "plot": ".report",
    "import_device_results": ".device_logs", "parse_benchmark_model": ".device_logs",
    "parse_coreml_report": ".device_logs",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS)
