"""What every export format shares: the constants of the tensor contract, the
two error classes, argument checks, the staging folder with its atomic
install, and the report (timing, JSON, text rendering).

An export (:class:`mobileone_tf.export.job.ExportJob`) makes the cheap
checks (mode, output path) first, then prepares the model, writes the file
into a :func:`staging` folder beside the output (same filesystem), verifies
it there, and only then moves it into place (:func:`install`, ``os.replace``).
An existing output is kept unless ``overwrite=True``; a failure leaves
nothing at the output path. Imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

import numpy as np

from mobileone_tf import fileio

FORMATS = ("tflite", "coreml", "onnx", "saved_model")
QUANTIZE_MODES = {
    "tflite": ("none", "float16", "dynamic", "int8", "int16x8"),
    "coreml": ("none", "float32", "int8", "palettize4"),
    "onnx": ("none",),
    "saved_model": ("none",),
}
SUFFIXES = {"tflite": (".tflite",), "coreml": (".mlpackage",), "onnx": (".onnx",),
            "saved_model": None}
INPUT_NAME = "image"
COREML_LABEL = "classLabel"
COREML_PROBS = "classLabelProbs"
AUTHOR = "mobileone_tf (Keras port of Apple's ml-mobileone)"
DEFAULT_LICENSE = ("Apple sample-code licence (ml-mobileone) for Apple's released "
                   "weights; Apache-2.0 for the mobileone_tf code")
RTOL = 1e-4
# TFLite builtin ops a fused MobileOne may contain (tests assert this set).
FUSED_TFLITE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "MEAN", "AVERAGE_POOL_2D",
                    "FULLY_CONNECTED", "MUL", "ADD", "LOGISTIC", "SOFTMAX",
                    "QUANTIZE", "DEQUANTIZE"}


class ExportError(ValueError):
    """Bad export arguments (unknown format/mode, missing data, existing output)."""


class ExportVerificationError(RuntimeError):
    """A float32 export does not reproduce the Keras model (nothing was written)."""


# ---------------------------------------------------------------------------
# cheap argument checks (before any model work)
# ---------------------------------------------------------------------------
def check_mode(fmt, quantize):
    """Raises :class:`ExportError` for an unknown format or quantize mode."""
    if fmt not in QUANTIZE_MODES:
        raise ExportError(f"Unknown format {fmt!r}; expected one of {FORMATS}")
    if quantize not in QUANTIZE_MODES[fmt]:
        raise ExportError(f"quantize={quantize!r} is not valid for {fmt}; expected one of "
                          f"{QUANTIZE_MODES[fmt]}")


def check_output(output, overwrite, suffixes):
    """The output path without a trailing slash.

    Raises:
        ExportError: wrong suffix, an existing output without ``overwrite``,
            or a missing parent folder.
    """
    output = os.fspath(output)
    if suffixes and not output.rstrip("/").endswith(suffixes):
        raise ExportError(f"Output {output!r} should end with {' or '.join(suffixes)}")
    if os.path.lexists(output) and not overwrite:
        raise ExportError(f"Output {output!r} exists; pass overwrite=True (--overwrite) "
                          "to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ExportError(f"Output folder {parent!r} does not exist")
    return output.rstrip("/")


def check_arguments(fmt, output, quantize, overwrite):
    """:func:`check_mode` then :func:`check_output`; returns the output path."""
    check_mode(fmt, quantize)
    return check_output(output, overwrite, SUFFIXES[fmt])


# ---------------------------------------------------------------------------
# staging and atomic install
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def staging(output):
    """A temporary folder beside ``output`` (same filesystem, so os.replace is
    atomic), removed afterwards whatever happens."""
    parent = os.path.dirname(os.path.abspath(output))
    tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(staged, output):
    """Moves ``staged`` (file or folder) to ``output``, replacing it."""
    if os.path.isdir(staged) and os.path.lexists(output):
        old = f"{output}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, old)
        try:
            os.replace(staged, output)
        except BaseException:
            os.replace(old, output)
            raise
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
    else:
        os.replace(staged, output)


def size_bytes(path):
    """Size of a file, or of all files under a folder."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f))
                   for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


@contextlib.contextmanager
def quiet(stream="stdout"):
    """Discards ``stream`` (``"stdout"`` or ``"stderr"``): the converters
    print progress lines."""
    redirect = (contextlib.redirect_stdout if stream == "stdout"
                else contextlib.redirect_stderr)
    with open(os.devnull, "w") as devnull, redirect(devnull):
        yield


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------
def write_report(report, path):
    """Writes a report (numpy values allowed) as JSON, atomically."""
    fileio.write_json(report, path, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def format_report(report):
    """A one-screen text rendering of an export report."""
    lines = [f"{report['format']}: {report.get('path')}  "
             f"({report.get('file_size_bytes', 0) / 1e6:.2f} MB, quantize={report['quantize']}, "
             f"fused={report['fused']}, converted in {report.get('convert_seconds')} s)"]
    for kind in ("inputs", "outputs"):
        for t in report.get(kind, []):
            q = t.get("quantization")
            extra = f" scale/zero_point={q}" if q and q[0] else ""
            lines.append(f"  {kind[:-1]:6s} {t['name']!r:20s} {t.get('dtype', t.get('type'))} "
                         f"{t.get('shape')}{extra}")
    if report.get("ops"):
        lines.append("  ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(report["ops"].items())))
    if report.get("xnnpack"):
        x = report["xnnpack"]
        lines.append(f"  XNNPACK: {x['partitions']} partition(s), "
                     + ("every op delegated" if x["all_delegated"] else "some ops outside")
                     + f"; input normalization: {report.get('normalization')}")
    v = report.get("verification")
    if v:
        if "max_abs_diff" in v:
            status = {True: "PASS", False: "FAIL", None: "report only"}[v["passed"]]
            lines.append(f"  verify ({v['images']}): max |diff| {v['max_abs_diff']:.3g} "
                         f"(rel {v['rel_max_diff']:.3g}, tol {v['tolerance']:.3g}), top-1 "
                         f"agreement {v['top1_agreement']:.3f} -> {status}")
        else:
            lines.append("  checks: " + ", ".join(f"{k}={'ok' if ok else 'FAIL'}"
                                                  for k, ok in v.items()))
    if report.get("labels"):
        lines.append(f"  labels: {report['labels']} ({report.get('labels_source')})")
    m = report.get("metadata")
    if m:
        lines.append(f"  metadata: {m['name']} {m['version']}, normalization mean {m['mean']} "
                     f"std {m['std']}, labels {m['labels']} (MediaPipe / Android Studio)")
    return "\n".join(lines)
