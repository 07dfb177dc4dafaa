"""The TensorFlow worker process: build, convert and time models at one
thread count.

TensorFlow's thread pools can only be set before TF starts, so every thread
count runs in a fresh interpreter, ``python -m mobileone_tf.benchmark.workers
SPEC OUT`` (:func:`spawn_worker`), which sets them and runs :func:`worker`
(latency; training steps are timed by :mod:`mobileone_tf.benchmark.train_steps`).
Inside the worker every model is built, converted (through
:mod:`mobileone_tf.export`) and loaded first (through :mod:`mobileone_tf.runtime`), then all of them are
timed in interleaved rounds (:func:`mobileone_tf.benchmark.stats.interleaved_timings`).

Input: batch 1, ``image_size`` x ``image_size`` NHWC float32, uniform 0..255
(seed 0). This module imports TensorFlow only inside the worker functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from mobileone_tf import fileio
from mobileone_tf.benchmark import macs, machine, stats, zoo

TFLITE_QUANTIZATIONS = ("float32", "float16", "int8", "bare", "unfolded")
"""The TFLite files a worker can time (runtime ``tflite-<name>``): the default
float32 export (input normalization folded into the stem convolution,
softmax at the end), float16 weights, full-integer int8 (float32 I/O), and
for a MobileOne two float32 references of the same weights: ``bare`` (the
network alone: no input normalization, logits) and ``unfolded`` (the default
export before issue 13: the normalization as one MUL + one ADD)."""
MOBILEONE_ONLY = ("bare", "unfolded")
TF_RUNTIMES = ("keras", "tflite", "onnx")
CALIBRATION_ENV = "MOBILEONE_BENCH_CALIBRATION"
"""Env var: a folder of images to calibrate int8 MobileOne files with
(default: 8 random images -- fine for latency, not for accuracy)."""

ONEDNN_HINT = ("TensorFlow's oneDNN kernels crash on some CPUs: rerun with "
               "TF_ENABLE_ONEDNN_OPTS=0")


@dataclasses.dataclass
class Job:
    """One model to time in a worker (JSON-serializable)."""
    model: str
    form: str = "fused"
    runtimes: tuple = TF_RUNTIMES
    quantizations: tuple = ("float32",)


def random_images(n: int = 1, size=zoo.IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """``(n, H, W, 3)`` float32 uniform in 0..255; ``size`` is ``H = W`` or
    ``(H, W)``."""
    h, w = (size, size) if np.ndim(size) == 0 else size
    return np.random.default_rng(seed).uniform(0, 255, (n, int(h), int(w), 3)).astype(np.float32)


# ---------------------------------------------------------------------------
# conversion (cached files in the work folder)
# ---------------------------------------------------------------------------
def convert(model, path, runtime: str, quantize: str = "float32") -> str:
    """Writes the model file ``runtime`` runs, through the package exporter
    (no verification; the model keeps the form it was built in).

    Args:
        model: a Keras model with a fixed NHWC input.
        path: ``*.tflite`` or ``*.onnx``.
        runtime: ``"tflite"`` or ``"onnx"`` (ONNX: tf2onnx, opset 17).
        quantize: TFLite only, one of :data:`TFLITE_QUANTIZATIONS`. int8 is
            full-integer with float32 I/O, calibrated on the images of
            ``$MOBILEONE_BENCH_CALIBRATION`` (a fused MobileOne is then
            equalized first, as the exporter does by default) or on 8
            uniform random images. ``bare`` / ``unfolded``: MobileOne only.

    Returns:
        ``path`` (batch fixed to 1).
    """
    from mobileone_tf import export
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    size = zoo.input_size(model)
    common = dict(batch_size=1, input_size=size, fuse=False, overwrite=True, verify=False)
    if runtime == "onnx":
        export.to_onnx(model, str(path), opset=17, **common)
        return str(path)
    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {TFLITE_QUANTIZATIONS}, got {quantize!r}")
    folder = os.environ.get(CALIBRATION_ENV) if quantize == "int8" else None
    calibration = folder or (random_images(8, size) if quantize == "int8" else None)
    if quantize == "bare":
        model = zoo.bare_model(model)
    # equalization only with real calibration images (it changes no op), and
    # only for a MobileOne classifier (what the exporter equalizes)
    equalize = bool(folder) and model.name.startswith("mobileone_")
    export.to_tflite(model, str(path), quantize=quantize if quantize in ("float16", "int8")
                     else "none", calibration_data=calibration, calibration_steps=8,
                     equalize=equalize, fold=quantize != "unfolded", metadata=False,
                     **common)
    return str(path)


# ---------------------------------------------------------------------------
# runners: no-argument callables, one batch-1 forward pass each
# ---------------------------------------------------------------------------
def keras_runner(model):
    """One forward pass of ``model`` through ``tf.function`` (inference
    mode, no XLA), result fetched to NumPy."""
    import tensorflow as tf
    x = tf.constant(random_images(1, zoo.input_size(model)))
    fn = tf.function(lambda t: model(t, training=False), jit_compile=False)
    return lambda: fn(x).numpy()


def tflite_runner(path, threads: int):
    """``Interpreter.invoke`` of the ``.tflite`` file (default XNNPACK
    delegate, ``threads`` threads) with its input set once: the image,
    quantized for an int8/uint8 input."""
    from mobileone_tf import runtime
    interp = runtime.tflite_interpreter(path, threads)
    size = tuple(int(s) for s in interp.get_input_details()[0]["shape"][1:3])
    runtime.run_tflite(interp, random_images(1, size))
    return interp.invoke


def onnx_runner(path, threads: int):
    """One ONNX Runtime (CPU, ``threads`` intra-op threads) run of the file."""
    from mobileone_tf import runtime
    runner = runtime.load(path, num_threads=threads)
    x = random_images(1, tuple(int(s) for s in runner.input_shape[:2]))
    return lambda: runner(x)


def _prepare(runtime_name, q, model, tag, workdir, threads, graphs):
    """``(callable, file bytes)`` for one runtime of one model; converts
    (once: files are cached in ``workdir``) and records the TFLite graph
    report in ``graphs``."""
    if runtime_name == "keras":
        return keras_runner(model), None
    if runtime_name == "tflite":
        path = workdir / f"{tag}_{q}.tflite"
        if not path.exists():
            convert(model, path, "tflite", q)
        if graphs is not None and f"{tag}_{q}" not in graphs:
            from mobileone_tf import runtime
            graphs[f"{tag}_{q}"] = runtime.tflite_graph_report(path, threads)
        return tflite_runner(path, threads), path.stat().st_size
    if runtime_name == "onnx":
        path = workdir / f"{tag}.onnx"
        if not path.exists():
            convert(model, path, "onnx")
        return onnx_runner(path, threads), path.stat().st_size
    raise ValueError(f"unknown runtime {runtime_name!r}")


# ---------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------
def _fix_threads(threads: int):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def worker(spec: dict) -> dict:
    """Times every job of ``spec`` at one thread count (runs inside the
    subprocess started by :func:`spawn_worker`).

    Args:
        spec: ``{"threads", "runs", "warmup", "rounds"?, "workdir", "jobs":
            [Job dicts], "gemm"?: bool, "graph_report"?: bool, "image_size"?}``.

    Returns:
        ``{"threads", "gemm"?, "rows": [...], "graphs": {...}, "errors":
        [...]}``; a model or runtime that fails is reported in ``errors`` and
        the run continues.
    """
    threads = int(spec["threads"])
    _fix_threads(threads)
    workdir = pathlib.Path(spec["workdir"])
    size = int(spec.get("image_size", zoo.IMAGE_SIZE))
    out = {"threads": threads, "rows": [], "graphs": {}, "errors": []}
    graphs = out["graphs"] if spec.get("graph_report") else None
    if spec.get("gemm", True):
        out["gemm"] = machine.gemm_peak(threads)
    # 1) build, convert and load everything; 2) time all of it in interleaved rounds
    targets = []  # (row without timings, runner, tag, runtime name)
    for job in map(lambda j: Job(**j), spec["jobs"]):
        form = job.form if job.model.startswith("mobileone_") else "-"
        tag = f"{job.model}_{form}" if form != "-" else job.model
        try:
            model = zoo.build_model(job.model, job.form, size)
        except Exception as e:  # noqa: BLE001 - reported, run continues
            out["errors"].append(f"{tag}: build failed: {e}")
            continue
        base = {"model": job.model, "form": form, "threads": threads,
                "params": int(model.count_params()), "macs": macs.count_macs(model),
                "top1": zoo.top1(job.model)}
        for runtime_name in job.runtimes:
            for q in job.quantizations if runtime_name == "tflite" else (None,):
                name = runtime_name if q is None else f"tflite-{q}"
                try:
                    fn, size_b = _prepare(runtime_name, q, model, tag, workdir, threads, graphs)
                    fn()  # fails here, not in the middle of the timing rounds
                except Exception as e:  # noqa: BLE001 - reported, run continues
                    out["errors"].append(f"{tag} {name}: {type(e).__name__}: {e}")
                    continue
                targets.append(({**base, "runtime": name, "file_bytes": size_b}, fn, tag, name))
        print(f"[{threads} thr] prepared {tag}", flush=True)
    timings = stats.interleaved_timings([t[1] for t in targets], int(spec["runs"]),
                                        int(spec["warmup"]), int(spec.get("rounds", 1)))
    for (row, _, tag, name), st in zip(targets, timings):
        out["rows"].append({**row, **st})
        print(f"[{threads} thr] {tag:28s} {name:16s} median {st['median_ms']:8.2f} ms "
              f"(noise {st['noise_pct']:.0f}%)", flush=True)
    return out


def worker_main(spec_path, out_path):
    """Entry point of the worker process: reads the spec JSON, writes the
    result JSON (atomically) to ``out_path``."""
    spec = json.loads(pathlib.Path(spec_path).read_text())
    out = worker(spec)
    fileio.atomic_write(out_path, json.dumps(out, default=str))


def spawn_worker(spec: dict, timeout: float = 3600) -> dict:
    """Runs :func:`worker_main` in a fresh interpreter with ``spec["threads"]``
    threads (OMP/OpenBLAS/MKL env vars too) and returns its result.

    Raises:
        RuntimeError: the worker failed or wrote nothing (with the end of
            its stderr; when it was killed by a signal, the oneDNN workaround).
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = pathlib.Path(d) / "spec.json", pathlib.Path(d) / "out.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", __name__, str(spec_path), str(out_path)],
                              env=env, timeout=timeout, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out_path.exists():
            hint = ""
            if proc.returncode < 0 and env.get("TF_ENABLE_ONEDNN_OPTS") != "0":
                # TF 2.21's oneDNN kernels segfault in the branched training
                # step on some CPUs (README, known problems); TF's own kernels run it
                hint = (f"\nthe worker was killed by signal {-proc.returncode}; "
                        + ONEDNN_HINT)
            raise RuntimeError(f"benchmark worker failed (rc {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}{hint}")
        return json.loads(out_path.read_text())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("internal entry point: use scripts/benchmark.py")
    worker_main(sys.argv[1], sys.argv[2])
