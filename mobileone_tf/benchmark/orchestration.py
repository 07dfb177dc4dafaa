"""A whole benchmark run: validate the configuration, start one TensorFlow
worker per thread count (:mod:`mobileone_tf.benchmark.workers`) and the timm
worker (:mod:`mobileone_tf.benchmark.torch_worker`), merge their rows, derive
the figures (:mod:`mobileone_tf.benchmark.report`), and write the outputs.

Named ``orchestration`` rather than ``run`` so that the package attribute
``mobileone_tf.benchmark.run`` stays the function. Imports no TensorFlow
(the workers do, in their own processes).
"""

from __future__ import annotations

import os
import tempfile

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.benchmark import device_logs, machine, report, train_steps, workers, zoo
from mobileone_tf.benchmark.torch_worker import run_torch, torch_available

RUNTIMES = workers.TF_RUNTIMES + ("torch",)
MODES = ("latency", "train")
PRECISIONS = ("float32", "bfloat16")
"""Training precisions (``--mode train``): float32, or bfloat16 mixed
precision (Keras ``mixed_bfloat16``; PyTorch ``autocast`` on the CPU)."""
STUDIES = ("activations", "blocks", "flops")
BACKENDS = tuple(c for c in train_steps.CONTENDERS if c != "timm")
"""Keras backends ``--mode train`` can time (``torch-compile``: the PyTorch
backend with ``jit_compile=True``); timm's step is timed beside them."""

DEFAULTS = {"mode": "latency", "study": None, "variants": ["s0", "s1", "s2", "s3", "s4"],
            "runtimes": ["keras", "tflite", "onnx"], "threads": [1, 2],
            "forms": ["fused", "branched"], "quantizations": ["float32", "float16", "int8"],
            "baselines": True, "runs": 100, "warmup": 10, "rounds": 5, "workdir": None,
            "image_size": zoo.IMAGE_SIZE, "models": None, "precisions": ["float32"],
            "backends": ["tensorflow"], "batch": train_steps.TRAIN_BATCH}
"""Configuration defaults of :func:`run` (also the script's flag defaults)."""


def _known_models() -> set:
    from mobileone_tf.variants import VARIANTS
    studies = zoo.STUDY_ACTIVATIONS + zoo.STUDY_BLOCKS
    stages = {f"stages_{v}_P{i}" for v in VARIANTS for i in range(1, 6)}
    return (set(zoo.model_names(VARIANTS)) | set(zoo.SEGMENTERS) | set(zoo.LITE_TOP1) | stages
            | {f"study_{k}" for k in studies})


def _check_subset(key, values, allowed):
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"Unknown {key} {bad}; expected {tuple(allowed)}")


def check_config(config: dict) -> dict:
    """:data:`DEFAULTS` updated with the non-None values of ``config``, checked.

    Raises:
        ValueError: an unknown key or value, or a count out of range (the
            message names the key).
    """
    from mobileone_tf.variants import VARIANTS
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"Unknown benchmark config keys: {sorted(unknown)}")
    cfg = dict(DEFAULTS, **{k: v for k, v in config.items() if v is not None})
    if cfg["mode"] not in MODES:
        raise ValueError(f"mode must be 'latency' or 'train', got {cfg['mode']!r}")
    if cfg["study"] is not None and cfg["study"] not in STUDIES:
        raise ValueError(f"study must be one of {STUDIES}, got {cfg['study']!r}")
    bad = set(cfg["runtimes"]) - set(RUNTIMES)
    if bad:
        raise ValueError(f"Unknown runtimes {sorted(bad)}; expected {RUNTIMES}")
    if set(cfg["quantizations"]) - set(workers.TFLITE_QUANTIZATIONS):
        raise ValueError(f"quantizations must be in {workers.TFLITE_QUANTIZATIONS}")
    cfg["variants"] = [str(v).lower() for v in cfg["variants"]]
    _check_subset("variants", cfg["variants"], sorted(VARIANTS))
    _check_subset("forms", cfg["forms"], zoo.FORMS)
    _check_subset("precisions", cfg["precisions"], PRECISIONS)
    _check_subset("backends", cfg["backends"], BACKENDS)
    if cfg["baselines"] not in (True, False):
        _check_subset("baselines", cfg["baselines"], zoo.BASELINES)
    _check_subset("models", cfg["models"] or [], sorted(_known_models()))
    try:
        cfg["threads"] = [int(t) for t in cfg["threads"]]
    except (TypeError, ValueError):
        raise ValueError(f"threads must be positive integers, got {cfg['threads']!r}") from None
    if not cfg["threads"] or min(cfg["threads"]) < 1:
        raise ValueError(f"threads must be positive integers, got {cfg['threads']!r}")
    if cfg["runs"] < 1 or cfg["warmup"] < 0 or cfg["rounds"] < 1:
        raise ValueError("runs and rounds must be >= 1 and warmup >= 0")
    if cfg["batch"] < 1:
        raise ValueError(f"batch must be >= 1, got {cfg['batch']}")
    if cfg["image_size"] < 32:
        raise ValueError(f"image_size must be at least 32, got {cfg['image_size']}")
    return cfg


@mobileone_export("mobileone_tf.benchmark")
def run(config: dict) -> dict:
    """Runs a benchmark described by ``config`` and returns the results dict.

    ``config`` keys (all optional, defaults :data:`DEFAULTS`): ``mode``
    (``latency``|``train``), ``study`` (``None``|``activations``|``blocks``|
    ``flops``), ``variants`` (list of ``s0``..), ``runtimes`` (subset of
    :data:`RUNTIMES`), ``threads`` (list of ints), ``forms``
    (``fused``/``branched``), ``quantizations`` (TFLite, applied to fused
    MobileOne and baselines; branched models get float32 only),
    ``baselines`` (bool or list of names), ``runs``, ``warmup``, ``rounds``
    (the ``runs`` are split into this many rounds interleaved across all
    models of a thread count), ``workdir`` (model file cache; default a new
    temporary folder), ``image_size``, ``models`` (explicit model names,
    overrides variants/baselines); ``--mode train`` only: ``precisions``,
    ``backends`` (Keras backends from :data:`BACKENDS`, each timed in its own
    process beside timm's step) and ``batch`` (images per step).

    Returns:
        ``{"machine", "config", "gemm": {threads: ...}, "rows": [...],
        "graphs", "errors", "correlation"?, "findings"?}``; each latency row
        has model, form, runtime, threads, median_ms, p90_ms, mean_ms,
        min_ms, runs, round_medians_ms, noise_pct, params, macs, file_bytes,
        top1, gflops, peak_ratio.

    Raises:
        ValueError: a bad configuration (see :func:`check_config`).
        RuntimeError: a worker process failed.
    """
    cfg = check_config(config)
    workdir = cfg["workdir"] or tempfile.mkdtemp(prefix="mobileone_bench_")
    result = {"machine": machine.machine_info(), "config": dict(cfg, workdir=str(workdir)),
              "gemm": {}, "rows": [], "graphs": {}, "errors": []}
    if cfg["mode"] == "train":
        return _run_train(cfg, result)
    jobs = _jobs(cfg)
    tf_runtimes = tuple(r for r in cfg["runtimes"] if r != "torch")
    for threads in cfg["threads"]:
        spec = {"threads": threads, "runs": cfg["runs"], "warmup": cfg["warmup"],
                "rounds": cfg["rounds"], "workdir": str(workdir),
                "image_size": cfg["image_size"], "graph_report": True, "gemm": True,
                "jobs": [dict(j.__dict__, runtimes=tf_runtimes) for j in jobs]}
        out = workers.spawn_worker(spec)
        result["gemm"][threads] = out.get("gemm", {})
        result["rows"] += out["rows"]
        result["graphs"].update(out["graphs"])
        result["errors"] += out["errors"]
        if "torch" in cfg["runtimes"] and cfg["study"] is None:
            _torch_latency(cfg, threads, result)
    report.finish_rows(result["rows"], result["gemm"])
    if cfg["study"] in ("flops", None):
        result["correlation"] = report.correlations(result["rows"])
    result["findings"] = report.findings(result)
    return result


def _jobs(cfg) -> list:
    q = tuple(cfg["quantizations"])
    plain = tuple(x for x in q if x not in workers.MOBILEONE_ONLY) or ("float32",)
    if cfg["study"] == "activations":
        return [workers.Job(f"study_{a}", quantizations=plain) for a in zoo.STUDY_ACTIVATIONS]
    if cfg["study"] == "blocks":
        return [workers.Job(f"study_{b}", quantizations=plain) for b in zoo.STUDY_BLOCKS]
    if cfg["models"]:
        names = list(cfg["models"])
    else:
        base = cfg["baselines"]
        names = zoo.model_names(cfg["variants"], baselines=False)
        names += list(zoo.BASELINES) if base is True else list(base or [])
    jobs = []
    for name in names:
        if not name.startswith("mobileone_"):
            jobs.append(workers.Job(name, quantizations=plain))
            continue
        for form in cfg["forms"]:
            jobs.append(workers.Job(name, form, quantizations=q if form == "fused" else
                                    tuple(x for x in q if x == "float32") or plain[:1]))
    return jobs


def _torch_latency(cfg, threads, result):
    if not torch_available():
        result["errors"].append("torch/timm not installed: torch runtime skipped")
        return
    try:
        out = run_torch({"mode": "latency", "variants": cfg["variants"], "threads": threads,
                         "runs": cfg["runs"], "warmup": cfg["warmup"],
                         "rounds": cfg.get("rounds", 1), "size": cfg["image_size"],
                         "batch": 1})
    except Exception as e:  # noqa: BLE001 - reported, run continues
        result["errors"].append(f"torch latency: {e}")
        return
    macs = {r["model"]: r["macs"] for r in result["rows"]
            if r["form"] == "fused" and r.get("macs")}
    for r in out["rows"]:
        r.update(macs=macs.get(r["model"]), top1=zoo.top1(r["model"]), file_bytes=None)
        result["rows"].append(r)
    result["machine"]["versions"].update(torch=out["torch"], timm=out["timm"])


def _run_train(cfg, result):
    """Training throughput: for every variant, thread count and precision,
    the Keras step on each of ``backends`` and timm's step (when torch and
    timm are installed) in one interleaved run
    (:func:`mobileone_tf.benchmark.train_steps.interleaved_train`)."""
    contenders = list(cfg["backends"]) + (["timm"] if torch_available() else [])
    if "timm" not in contenders:
        result["errors"].append("timm train: torch/timm not installed")
    for variant in cfg["variants"]:
        for threads in cfg["threads"]:
            for precision in cfg["precisions"]:
                rows, errors = train_steps.interleaved_train(
                    contenders, variant, threads, cfg["runs"], cfg["warmup"], cfg["rounds"],
                    cfg["batch"], cfg["image_size"], precision)
                result["rows"] += rows
                result["errors"] += errors
    return result


@mobileone_export("mobileone_tf.benchmark")
def run_and_report(config: dict, *, import_device_results=None, json_path=None,
                   markdown_path=None, plot_path=None, plot_runtime="tflite-float32",
                   overwrite=False) -> str:
    """What ``scripts/benchmark.py`` does: :func:`run` (or
    :func:`~mobileone_tf.benchmark.device_logs.import_device_results` of a
    device log), then the JSON, markdown and plot files that are asked for.

    Existing outputs are refused before anything runs unless ``overwrite``.
    The plot shows ``plot_runtime``, or the first row's runtime when there is
    no such row (always for imported device results).

    Returns:
        The markdown report.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is False.
        ValueError, FileNotFoundError: a bad configuration or device file.
    """
    outputs = [p for p in (json_path, markdown_path, plot_path) if p]
    for path in outputs:
        if not overwrite and os.path.lexists(path):
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if import_device_results:
        result = device_logs.import_device_results(import_device_results)
    else:
        result = run(config)
    if json_path:
        report.write_json(result, json_path)
    if markdown_path:
        report.write_markdown(result, markdown_path)
    if plot_path:
        rows = result["rows"]
        if rows and (import_device_results or
                     not any(r["runtime"] == plot_runtime for r in rows)):
            plot_runtime = rows[0]["runtime"]
        report.plot(result, plot_path, runtime=plot_runtime)
    return report.to_markdown(result)
