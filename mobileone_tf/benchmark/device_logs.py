"""Latency measured on phones, imported into the benchmark's row format.

Two sources (instructions in docs/benchmark.md):

* Android/Linux TFLite ``benchmark_model`` logs (:func:`parse_benchmark_model`);
* Core ML performance reports copied from Xcode into a small JSON
  (:func:`parse_coreml_report`).

The model, form and quantization of a row are read from the file names the
export scripts write, ``{model}_{form}_{quantization}.tflite`` (e.g.
``mobileone_s0_fused_int8.tflite``). Imports no TensorFlow.
"""

from __future__ import annotations

import json
import pathlib
import re

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.benchmark.zoo import FORMS, top1

FILE_QUANTIZATIONS = ("float32", "float16", "int8", "dynamic")
MODEL_SUFFIXES = (".tflite", ".mlpackage", ".mlmodel")


def split_model_file(path: str) -> tuple:
    """``(model, form, quantization)`` from a model file name; form defaults
    to ``"fused"`` and quantization to ``"float32"`` when the name has none."""
    stem = pathlib.Path(path).name
    for suffix in MODEL_SUFFIXES:
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    parts = stem.split("_")
    quant = parts[-1] if parts[-1] in FILE_QUANTIZATIONS else "float32"
    if parts[-1] == quant:
        parts = parts[:-1]
    form = parts[-1] if parts and parts[-1] in FORMS else "fused"
    if parts and parts[-1] == form:
        parts = parts[:-1]
    return "_".join(parts) or stem, form, quant


def _log_runs(text: str) -> list:
    """One dict per ``Graph: [...]`` run of a ``benchmark_model`` log with its
    thread count, delegate and the last ``count=... avg=...`` line
    (microseconds)."""
    runs, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Graph: \[(.+?)\]", line)
        if m:
            runs.append(cur)
            cur = {"graph": m.group(1), "threads": 1, "delegate": "cpu"}
            continue
        if cur is None:
            continue
        m = re.search(r"Num threads: \[(\d+)\]", line)
        if m:
            cur["threads"] = int(m.group(1))
        if re.search(r"Use gpu: \[(1|true)\]", line, re.I):
            cur["delegate"] = "gpu"
        elif re.search(r"Use xnnpack: \[(1|true)\]", line, re.I) and cur["delegate"] != "gpu":
            cur["delegate"] = "xnnpack"
        if line.strip().startswith("count=") or " count=" in line:
            kv = dict(re.findall(r"(\w+)=([-\d.]+)", line))
            if "avg" in kv:
                cur.update(count=int(float(kv["count"])), avg_us=float(kv["avg"]),
                           std_us=float(kv.get("std", "nan")),
                           median_us=float(kv.get("median", kv.get("p50", kv["avg"]))),
                           p90_us=float(kv["p90"]) if "p90" in kv else None)
    runs.append(cur)
    return [r for r in runs if r and "avg_us" in r]


def parse_benchmark_model(text: str) -> list:
    """Rows from Android/Linux TFLite ``benchmark_model`` logs (one or more
    runs concatenated).

    Uses ``Graph: [path]``, ``Num threads: [n]``, ``Use xnnpack: [1]`` /
    ``Use gpu: [1]`` and the final ``count=... avg=... std=...`` line of the
    timed run (microseconds; ``median=``/``p90``-style fields are used when
    the build prints them, else median := avg).

    Returns:
        Rows ``{"model", "form", "runtime": "tflite-<quant>-<cpu|xnnpack|gpu>",
        "threads", "median_ms", "p90_ms", "mean_ms", "runs", "top1",
        "source": "device"}``.
    """
    out = []
    for r in _log_runs(text):
        model, form, quant = split_model_file(r["graph"])
        out.append({"model": model, "form": form,
                    "runtime": f"tflite-{quant}-{r['delegate']}", "threads": r["threads"],
                    "median_ms": r["median_us"] / 1e3,
                    "p90_ms": r["p90_us"] / 1e3 if r["p90_us"] else None,
                    "mean_ms": r["avg_us"] / 1e3, "runs": r["count"],
                    "top1": top1(model), "source": "device"})
    return out


def parse_coreml_report(data: dict) -> list:
    """Rows from the Core ML performance-report JSON documented in
    docs/benchmark.md: ``{"device": str, "os": str, "results": [{"model":
    "mobileone_s0_fused_float16.mlpackage", "compute_units": "all",
    "median_ms": 0.9, "p90_ms"?: .., "runs"?: ..}]}`` (numbers copied from
    Xcode's Performance report, "Median" of the Prediction row).

    Raises:
        ValueError: no ``results`` list, or an entry without ``model`` /
            a numeric ``median_ms``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError("CoreML report JSON needs a 'results' list (docs/benchmark.md)")
    rows = []
    for i, r in enumerate(data["results"]):
        try:
            model, form, quant = split_model_file(r["model"])
            median = float(r["median_ms"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"CoreML report entry {i} needs 'model' and a numeric "
                             f"'median_ms' (docs/benchmark.md); got {r!r}") from e
        rows.append({"model": model, "form": form,
                     "runtime": f"coreml-{quant}-{r.get('compute_units', 'all')}",
                     "threads": r.get("threads"), "median_ms": median,
                     "p90_ms": r.get("p90_ms"), "mean_ms": r.get("mean_ms"),
                     "runs": r.get("runs"), "top1": top1(model), "source": "device",
                     "device": data.get("device")})
    return rows


@mobileone_export("mobileone_tf.benchmark")
def import_device_results(path) -> dict:
    """Reads a ``benchmark_model`` log (any text file) or a Core ML report
    JSON into a results dict with the row format of
    :func:`mobileone_tf.benchmark.run`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a text file, or no results in it.
    """
    try:
        text = pathlib.Path(path).read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file (benchmark_model log or CoreML "
                         "report JSON)") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        rows = parse_coreml_report(data)
        machine = {"device": data.get("device"), "os": data.get("os")}
    else:
        rows = parse_benchmark_model(text)
        machine = {"device": "from benchmark_model log " + pathlib.Path(path).name}
    if not rows:
        raise ValueError(f"No benchmark results found in {path} (expected benchmark_model "
                         "output with 'Graph: [...]' and 'count=... avg=...' lines, or "
                         "the CoreML JSON of docs/benchmark.md)")
    return {"machine": machine, "config": {"import": str(path)}, "gemm": {}, "rows": rows,
            "graphs": {}, "errors": []}
