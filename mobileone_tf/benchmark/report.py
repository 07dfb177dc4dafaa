"""Benchmark results: derived figures (GFLOP/s, share of the GEMM peak, rank
correlations, fused-graph checks) and the outputs (markdown, JSON, PNG).

A results dict is ``{"machine", "config", "gemm": {threads: {...}}, "rows":
[...], "graphs": {...}, "errors": [...], "correlation"?, "findings"?}`` (see
:func:`mobileone_tf.benchmark.run`). Latencies are milliseconds, MACs and
parameters plain counts, file sizes bytes. Imports no TensorFlow; matplotlib
and SciPy are imported where used.
"""

from __future__ import annotations

import io
import json
import pathlib
import warnings

import numpy as np

from mobileone_tf import fileio
from mobileone_tf.api_export import mobileone_export

PEAK_RUNTIMES = ("tflite-float32", "tflite-float16", "tflite-bare", "tflite-unfolded", "keras",
                 "onnx", "torch")
"""Runtimes computing in floating point, whose GFLOP/s is compared with the
float32 GEMM peak (int8 rows get no peak ratio)."""

TABLE_COLUMNS = ("model", "form", "runtime", "threads", "median_ms", "p90_ms", "noise_pct",
                 "params_m", "macs_m", "file_mb", "gflops", "peak_pct", "top1")
TABLE_HEADER = ("model", "form", "runtime", "threads", "median (ms)", "p90 (ms)", "noise (%)",
                "params (M)", "MACs (M)", "file (MB)", "GFLOP/s", "% GEMM peak", "top-1 (%)")
SUMMARY_RUNTIMES = ("keras", "tflite-bare", "tflite-unfolded", "tflite-float32", "tflite-float16",
                    "tflite-int8", "onnx", "torch")
FILE_COLUMNS = (("bare", "tflite-bare"), ("default", "tflite-float32"),
                ("unfolded", "tflite-unfolded"), ("float16", "tflite-float16"),
                ("int8", "tflite-int8"))
"""The TFLite files compared side by side (:func:`tflite_files`): name, runtime."""
ONE_DECIMAL = ("macs_m", "top1", "gflops", "peak_pct", "noise_pct")


# ---------------------------------------------------------------------------
# derived figures
# ---------------------------------------------------------------------------
def finish_rows(rows, gemm: dict) -> list:
    """Adds ``gflops`` (2 x MACs / median latency, GFLOP/s) and ``peak_ratio``
    (its share of the float32 GEMM peak at the row's thread count, for
    :data:`PEAK_RUNTIMES`; else None) to every timed row with MACs, in place.

    Args:
        rows: result rows.
        gemm: ``{threads: {"gflops": float, ...}}`` from the workers.
    """
    for r in rows:
        peak = gemm.get(r["threads"], {}).get("gflops")
        if r.get("macs") and r.get("median_ms"):
            r["gflops"] = 2.0 * r["macs"] / (r["median_ms"] / 1e3) / 1e9
            r["peak_ratio"] = (r["gflops"] / peak if peak and r["runtime"].startswith(
                PEAK_RUNTIMES) else None)
    return rows


def _require(module):
    """``module`` imported, or one ValueError naming the ``benchmark`` extra."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"the benchmark report needs {module.split('.')[0]} ({e}): "
                         "pip install 'mobileone_tf[benchmark]'") from None


def spearman(x, y) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``; ties get their
    average rank); NaN when an input is constant.

    Raises:
        ValueError: scipy is not installed (names the ``benchmark`` extra).
    """
    stats = _require("scipy.stats")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def correlations(rows) -> dict:
    """Spearman rank correlation of latency with MACs and with params, per
    (runtime, threads), over fused MobileOne + baselines (groups of >= 3
    models; branched and training rows are left out).

    Returns:
        ``{"<runtime>@<threads>": {"n", "spearman_macs", "spearman_params"}}``.
    """
    groups = {}
    for r in rows:
        if r.get("form") == "branched" or not r.get("macs") or r["runtime"].endswith("train"):
            continue
        groups.setdefault((r["runtime"], r["threads"]), []).append(r)
    out = {}
    for (rt, th), rs in sorted(groups.items()):
        if len(rs) < 3:
            continue
        lat = [r["median_ms"] for r in rs]
        out[f"{rt}@{th}"] = {"n": len(rs),
                            "spearman_macs": spearman([r["macs"] for r in rs], lat),
                            "spearman_params": spearman([r["params"] for r in rs], lat)}
    return out


def _graph_check(variant: str, graph: dict, kind: str = "float32") -> dict:
    """Op counts of a fused MobileOne TFLite graph against what a minimal
    graph has: one PAD per stride-2 conv, one conv per block plus the two SE
    convs, one MUL per SE; the input normalization adds one ADD (folded:
    every export but ``bare``) and one MUL (``unfolded`` only)."""
    from mobileone_tf.variants import block_specs
    specs = block_specs(variant)
    ops = graph["ops"]
    se = sum(1 for s in specs if s.use_se)
    return {"pad_ops": ops.get("PAD", 0),
            "expected_pad_ops": sum(1 for s in specs if s.strides == 2),
            "conv_ops": ops.get("CONV_2D", 0) + ops.get("DEPTHWISE_CONV_2D", 0),
            "expected_conv_ops": len(specs) + 2 * se,
            "add_ops": ops.get("ADD", 0), "expected_add_ops": int(kind != "bare"),
            "mul_ops": ops.get("MUL", 0), "expected_mul_ops": se + (kind == "unfolded"),
            "all_delegated": graph["all_delegated"], "undelegated": graph["undelegated_ops"],
            "delegate_partitions": graph["delegate_partitions"]}


def tflite_files(rows) -> list:
    """The TFLite files of each fused MobileOne side by side, per thread
    count: median latency (ms) of ``bare``, ``default`` (the export),
    ``unfolded``, ``float16`` and ``int8`` (the runtimes of
    :data:`FILE_COLUMNS`), timed in the same interleaved rounds, and the
    ratios ``default / bare`` (what the export's input normalization and
    softmax cost; goal <= 1.02), ``unfolded / bare`` (the same before
    issue 13), ``float16 / default`` and ``default / int8`` (int8 speed-up).
    A ratio is paired when both rows carry ``round_medians_ms`` of the same
    rounds: the median over rounds of the per-round ratio (a slow spell of a
    shared machine hits both files of a round alike), else the ratio of the
    medians.

    Returns:
        ``[{"model", "threads", "<name>_ms"..., "default_over_bare",
        "unfolded_over_bare", "float16_over_default", "int8_speedup"}]``
        (a ratio is ``None`` when a file is missing); models with neither a
        bare nor an int8 row are left out.
    """
    fused = {(r["model"], r["runtime"], r["threads"]): r for r in rows
             if r.get("form") == "fused" and r.get("median_ms")}
    out = []
    for model, threads in sorted({(m, t) for m, _, t in fused}):
        picked = {name: fused.get((model, rt, threads)) for name, rt in FILE_COLUMNS}
        ms = {name: r["median_ms"] if r else None for name, r in picked.items()}
        if ms["bare"] is None and ms["int8"] is None:
            continue
        ratios = {key: _ratio(picked[a], picked[b])
                  for key, (a, b) in (("default_over_bare", ("default", "bare")),
                                      ("unfolded_over_bare", ("unfolded", "bare")),
                                      ("float16_over_default", ("float16", "default")),
                                      ("int8_speedup", ("default", "int8")))}
        out.append({"model": model, "threads": threads,
                    **{f"{k}_ms": v for k, v in ms.items()}, **ratios})
    return out


def _ratio(a, b):
    """``a / b`` of two latency rows: paired (median of per-round ratios)
    when both have round medians of the same rounds; ``None`` if one is
    missing."""
    if not a or not b:
        return None
    ra, rb = a.get("round_medians_ms") or [], b.get("round_medians_ms") or []
    if len(ra) > 1 and len(ra) == len(rb) and all(rb):
        return float(np.median(np.asarray(ra, float) / np.asarray(rb, float)))
    return a["median_ms"] / b["median_ms"]


def findings(result: dict) -> dict:
    """Derived figures: fused vs branched speed-up per (model, runtime,
    threads), TFLite int8 vs float32 speed-up, and the fused-graph checks of
    every fused MobileOne TFLite file.

    Returns:
        ``{"fused_speedup": [{"model", "runtime", "threads", "speedup"}],
        "int8_vs_float32": [{"model", "threads", "speedup"}],
        "graph_checks": {"<model>_fused_<quant>": {...}}, "tflite_files":
        [...]}`` (:func:`tflite_files`).
    """
    idx = {(r["model"], r["form"], r["runtime"], r["threads"]): r for r in result["rows"]}
    f = {"fused_speedup": [], "int8_vs_float32": [], "graph_checks": {},
         "tflite_files": tflite_files(result["rows"])}
    for (m, form, rt, th), r in idx.items():
        if form == "fused" and (m, "branched", rt, th) in idx:
            b = idx[(m, "branched", rt, th)]
            f["fused_speedup"].append({"model": m, "runtime": rt, "threads": th,
                                       "speedup": b["median_ms"] / r["median_ms"]})
        if rt == "tflite-int8" and (m, form, "tflite-float32", th) in idx:
            fl = idx[(m, form, "tflite-float32", th)]
            f["int8_vs_float32"].append({"model": m, "threads": th,
                                         "speedup": fl["median_ms"] / r["median_ms"]})
    for key, g in result.get("graphs", {}).items():
        if key.startswith("mobileone_") and "_fused_" in key:
            f["graph_checks"][key] = _graph_check(key.split("_")[1], g, key.rsplit("_", 1)[1])
    return f


# ---------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------
def _cell(r, col) -> str:
    v = {"params_m": (r.get("params") or 0) / 1e6 or None,
         "macs_m": (r.get("macs") or 0) / 1e6 or None,
         "file_mb": (r.get("file_bytes") or 0) / 2 ** 20 or None,
         "peak_pct": None if r.get("peak_ratio") is None else 100 * r["peak_ratio"],
         }.get(col, r.get(col))
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if col in ONE_DECIMAL else f"{v:.2f}"
    return str(v)


def _table(header, rows) -> list:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, cells)) + " |" for cells in rows])


def summary_table(result: dict, threads=None) -> list:
    """Markdown lines: one row per model and form, median latency (ms) per
    runtime at ``threads`` (default: the largest thread count measured), with
    params, MACs, published top-1 and the TFLite float32 share of the GEMM
    peak. Empty when there are no latency rows."""
    rows = [r for r in result.get("rows", []) if "images_per_s" not in r and r.get("median_ms")]
    if not rows:
        return []
    threads = threads or max(r.get("threads") or 0 for r in rows)
    rows = [r for r in rows if r.get("threads") == threads]
    runtimes = [rt for rt in SUMMARY_RUNTIMES if any(r["runtime"] == rt for r in rows)]
    keys = sorted({(r["model"], r.get("form", "-")) for r in rows},
                  key=lambda k: (not k[0].startswith("mobileone_"), k[0], k[1] != "fused"))
    head = ["model", "form", "params (M)", "MACs (M)", "top-1 (%)"] + \
        [f"{rt} (ms)" for rt in runtimes] + ["tflite-float32 % GEMM peak"]
    body = []
    for model, form in keys:
        mine = {r["runtime"]: r for r in rows if r["model"] == model and r.get("form", "-") == form}
        any_row = next(iter(mine.values()))
        cells = [model, form] + [_cell(any_row, c) for c in ("params_m", "macs_m", "top1")]
        cells += [_cell(mine[rt], "median_ms") if rt in mine else "-" for rt in runtimes]
        cells.append(_cell(mine["tflite-float32"], "peak_pct") if "tflite-float32" in mine
                     else "-")
        body.append(cells)
    return [f"Median latency at batch 1, {threads} thread(s):", ""] + _table(head, body) + [""]


def _findings_lines(result: dict) -> list:
    lines = []
    f = result.get("findings") or {}
    if f.get("fused_speedup"):
        lines += ["", "Fused vs branched speed-up: " + "; ".join(
            f"{s['model']} {s['runtime']}@{s['threads']}: {s['speedup']:.2f}x"
            for s in f["fused_speedup"])]
    if f.get("int8_vs_float32"):
        lines += ["", "TFLite int8 vs float32 speed-up: " + "; ".join(
            f"{s['model']}@{s['threads']}: {s['speedup']:.2f}x" for s in f["int8_vs_float32"])]
    if f.get("tflite_files"):
        head = (["model", "threads"] + [f"{n} (ms)" for n, _ in FILE_COLUMNS]
                + ["default / bare", "unfolded / bare", "float16 / default",
                   "int8 speed-up"])
        keys = ("default_over_bare", "unfolded_over_bare", "float16_over_default",
                "int8_speedup")
        lines += ["", ("TFLite files side by side (same process, interleaved rounds; ratios: "
                       "median of the per-round ratios; default = the export, bare = the "
                       "network alone, unfolded = the export before issue 13):"), ""] + _table(head, [
            [t["model"], t["threads"]]
            + [f"{t[n + '_ms']:.2f}" if t[n + "_ms"] else "-" for n, _ in FILE_COLUMNS]
            + [f"{t[k]:.3f}" if t[k] else "-" for k in keys]
            for t in f["tflite_files"]])
    if f.get("graph_checks"):
        head = ("fused TFLite graph", "PAD (expected)", "conv ops (expected)", "ADD (expected)",
                "MUL (expected)", "XNNPACK partitions", "all ops delegated")
        lines += [""] + _table(head, [
            [k] + [f"{g[op + '_ops']} ({g['expected_' + op + '_ops']})"
                   for op in ("pad", "conv", "add", "mul")]
            + [g["delegate_partitions"], g["all_delegated"]]
            for k, g in f["graph_checks"].items()])
    if result.get("correlation"):
        head = ("runtime@threads", "models", "Spearman(latency, MACs)",
                "Spearman(latency, params)")
        lines += [""] + _table(head, [
            [k, c["n"], f"{c['spearman_macs']:.2f}", f"{c['spearman_params']:.2f}"]
            for k, c in result["correlation"].items()])
    return lines


@mobileone_export("mobileone_tf.benchmark")
def to_markdown(result: dict) -> str:
    """A markdown report: machine line, GEMM peak, summary table, the full
    latency table (sorted by runtime, threads, model), training throughput,
    then findings, graph checks, correlations and errors."""
    m = result.get("machine", {})
    lines = [f"Machine: {m.get('cpu', m.get('device', '?'))}, "
             f"{m.get('logical_cores', '?')} logical cores, {m.get('date_utc', '')}; "
             + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v), ""]
    if result.get("gemm"):
        lines += ["Float32 GEMM peak: " + ", ".join(
            f"{t} thread(s) {g['gflops']:.0f} GFLOP/s" for t, g in result["gemm"].items()
            if g), ""]
    lines += summary_table(result)
    rows = sorted((r for r in result["rows"] if "images_per_s" not in r),
                  key=lambda r: (r["runtime"], r.get("threads") or 0, r["model"],
                                 r.get("form", "")))
    if rows:
        lines += _table(TABLE_HEADER, [[_cell(r, c) for c in TABLE_COLUMNS] for r in rows])
    train = [r for r in result["rows"] if "images_per_s" in r]
    if train:
        lines += [""] + _table(
            ("model", "runtime", "precision", "threads", "batch", "step median (ms)",
             "images/s"),
            [[f"{r['model']} ({r['form']})", r["runtime"], r.get("precision", "float32"),
              r["threads"], r["batch"], f"{r['median_ms']:.0f}", f"{r['images_per_s']:.1f}"]
             for r in train])
    lines += _findings_lines(result)
    if result.get("errors"):
        lines += ["", "Errors / skipped: " + "; ".join(result["errors"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
@mobileone_export("mobileone_tf.benchmark")
def write_json(result: dict, path, *, overwrite: bool = True) -> str:
    """The results dict as JSON (atomic; non-JSON values as ``str``).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return fileio.atomic_write(path, json.dumps(result, indent=1, default=str),
                               overwrite=overwrite)


@mobileone_export("mobileone_tf.benchmark")
def write_markdown(result: dict, path, *, overwrite: bool = True) -> str:
    """:func:`to_markdown` of ``result``, written atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return fileio.atomic_write(path, to_markdown(result), overwrite=overwrite)


@mobileone_export("mobileone_tf.benchmark")
def plot(result: dict, path, runtime: str = "tflite-float32", threads=None, *,
         overwrite: bool = True) -> str:
    """Writes a figure (format from the suffix, e.g. ``.png``) with two
    panels: latency vs published top-1 (the paper's Fig. 6) and latency vs
    MACs, for one runtime and thread count (default: the largest measured);
    branched rows are left out.

    Raises:
        ValueError: no row of ``runtime`` (at ``threads``).
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if r["runtime"] == runtime and r.get("form") != "branched"]
    if threads is None and rows:
        threads = max(r["threads"] for r in rows)
    rows = [r for r in rows if r["threads"] == threads]
    if not rows:
        raise ValueError(f"No {runtime} rows to plot")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "top1", "ImageNet top-1 (%) (published)"),
                           (axes[1], "macs", "MACs (M)")):
        for family, marker in (("mobileone", "o"), ("other", "s")):
            pts = [r for r in rows if r.get(key) and
                   (r["model"].startswith("mobileone_") == (family == "mobileone"))]
            if not pts:
                continue
            xs = [r["median_ms"] for r in pts]
            ys = [r[key] / (1e6 if key == "macs" else 1) for r in pts]
            ax.plot(xs, ys, marker, linestyle="-" if family == "mobileone" else "",
                    label="MobileOne" if family == "mobileone" else "baselines")
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r["model"].replace("mobileone_", "").replace("_", " "), (x, y),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"latency (ms), {runtime}, {threads} thread(s), batch 1, 224x224")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result.get("machine", {}).get("cpu", ""), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=pathlib.Path(path).suffix[1:] or "png", dpi=120)
    plt.close(fig)
    return fileio.atomic_write(path, buf.getvalue(), overwrite=overwrite)
