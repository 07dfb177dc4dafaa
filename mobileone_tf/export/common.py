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

import numpy as np

from mobileone_tf import fileio
from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.export")("FORMATS")
FORMATS = ("tflite", "coreml", "onnx", "saved_model")
mobileone_export("mobileone_tf.export")("QUANTIZE_MODES")
QUANTIZE_MODES = {
    "tflite": ("none", "float16", "dynamic", "int8", "int16x8"),
    "coreml": ("none", "float32", "int8", "palettize4"),
    "onnx": ("none",),
    "saved_model": ("none",),
}
SUFFIXES = {"tflite": (".tflite",), "coreml": (".mlpackage",), "onnx": (".onnx",),
            "saved_model": None}
FILE_FORMATS = ("tflite", "onnx")
"""Formats whose output is one file (the others write a folder)."""
LABELS_FILE = "labels.txt"
mobileone_export("mobileone_tf.export")("INPUT_NAME")
INPUT_NAME = "image"
mobileone_export("mobileone_tf.export")("COREML_LABEL")
COREML_LABEL = "classLabel"
mobileone_export("mobileone_tf.export")("COREML_PROBS")
COREML_PROBS = "classLabelProbs"
AUTHOR = "mobileone_tf (Keras port of Apple's ml-mobileone)"
DEFAULT_LICENSE = ("Apple sample-code licence (ml-mobileone) for Apple's released "
                   "weights; Apache-2.0 for the mobileone_tf code")
RTOL = 1e-4
# TFLite builtin ops a fused MobileOne may contain (tests assert this set).
FUSED_TFLITE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "MEAN", "AVERAGE_POOL_2D",
                    "FULLY_CONNECTED", "MUL", "ADD", "LOGISTIC", "SOFTMAX",
                    "QUANTIZE", "DEQUANTIZE"}


@mobileone_export("mobileone_tf.export")
class ExportError(ValueError):
    """Bad export arguments (unknown format/mode, missing data, existing output)."""


@mobileone_export("mobileone_tf.export")
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


def check_output(output, overwrite, suffixes, is_file=False):
    """The output path without a trailing slash.

    Args:
        is_file: the output is one file (TFLite, ONNX): an existing folder at
            that path is refused even with ``overwrite``.

    Raises:
        ExportError: wrong suffix, an existing output without ``overwrite``,
            a folder where a file goes, a missing or unwritable parent
            folder (each names the path).
    """
    output = os.fspath(output)
    if suffixes and not output.rstrip("/").endswith(suffixes):
        raise ExportError(f"Output {output!r} should end with {' or '.join(suffixes)}")
    if is_file and os.path.isdir(output):
        raise ExportError(f"Output {output!r} (--output) is an existing folder; a "
                          f"{os.path.splitext(output.rstrip('/'))[1]} file cannot replace it "
                          "(remove the folder or choose another path)")
    if os.path.lexists(output) and not overwrite:
        raise ExportError(f"Output {output!r} exists; pass overwrite=True (--overwrite) "
                          "to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ExportError(f"Output folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"Output folder {parent!r} is not writable")
    return output.rstrip("/")


MIN_INPUT_SIZE = 32
"""Smallest input side: five stride-2 stages."""
MAX_INPUT_SIZE = 4096
"""Largest input side (and ``MAX_INPUT_SIZE ** 2`` the most pixels of one
batch): the export holds full-size activations in memory several times
(conversion, verification); MobileOne's stem output alone is 0.8 GB (S0) to
1.1 GB (S4) at 4096 x 4096, and 10000 x 10000 ran past 9 GB."""


def check_geometry(batch_size, input_size):
    """``(batch_size, H, W)`` as ints.

    Raises:
        ExportError: batch size not a positive integer, a side below
            :data:`MIN_INPUT_SIZE` (five stride-2 stages) or above
            :data:`MAX_INPUT_SIZE`, or a batch of more than
            ``MAX_INPUT_SIZE ** 2`` pixels (memory). ``(H, W)`` may be
            non-square (e.g. a segmenter's 360x480). Messages name the flag.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ExportError(f"batch_size (--batch_size) must be a positive integer; "
                          f"got {batch_size!r}")
    h, w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if any(isinstance(d, bool) or int(d) != d for d in (h, w)):
        raise ExportError(f"input_size (--input_size) must be whole pixels; got {input_size!r}")
    if min(h, w) < MIN_INPUT_SIZE:
        raise ExportError(f"input_size (--input_size) must be at least {MIN_INPUT_SIZE} "
                          f"(5 stride-2 stages); got {input_size!r}")
    if max(h, w) > MAX_INPUT_SIZE:
        raise ExportError(
            f"input_size (--input_size) must be at most {MAX_INPUT_SIZE} pixels per side: the "
            "export holds full-size activations in memory several times (the stem output "
            f"alone is about 0.8 GB at {MAX_INPUT_SIZE}x{MAX_INPUT_SIZE}); got {input_size!r}")
    if batch_size * h * w > MAX_INPUT_SIZE ** 2:
        raise ExportError(
            f"batch_size x input_size = {int(batch_size)} x {int(h)}x{int(w)} is "
            f"{int(batch_size) * int(h) * int(w):,} pixels per batch; at most "
            f"{MAX_INPUT_SIZE}x{MAX_INPUT_SIZE} = {MAX_INPUT_SIZE ** 2:,} (memory: see "
            "--input_size); lower --batch_size or --input_size")
    return int(batch_size), int(h), int(w)


def labels_path(output):
    """Where ``labels.txt`` goes: beside ``output``."""
    return os.path.join(os.path.dirname(os.path.abspath(output)), LABELS_FILE)


def _same_text(path, text):
    try:
        if os.path.getsize(path) != len(text.encode("utf-8")):
            return False
        with open(path, encoding="utf-8") as f:
            return f.read() == text
    except (OSError, UnicodeDecodeError):
        return False


def check_labels_output(output, overwrite, names=None):
    """Refuses to replace an existing ``labels.txt`` beside ``output``
    unless ``overwrite`` or it already holds exactly ``names`` (one per
    line: several exports of one model side by side share it); returns its
    path.

    Raises:
        ExportError: it exists with other content (without ``overwrite``)
            or is a folder (both name it).
    """
    path = labels_path(output)
    if os.path.isdir(path):
        raise ExportError(f"{path} is a folder; the class names of {output} are written "
                          f"there as a file (remove it or choose another output folder)")
    if os.path.lexists(path) and not overwrite and not (
            names is not None and _same_text(path, "\n".join(names) + "\n")):
        raise ExportError(f"{path} exists with other class names than {output}'s; pass "
                          "overwrite=True (--overwrite) to replace it, or choose another "
                          "output folder")
    return path


# ---------------------------------------------------------------------------
# staging and atomic install
# ---------------------------------------------------------------------------
staging = fileio.staging_dir
"""The staging folder of an output (:func:`mobileone_tf.fileio.staging_dir`)."""
remove_stale_staging = fileio.remove_stale_staging


def install(staged, output):
    """Moves ``staged`` (file or folder) to ``output``, replacing it: a file
    with ``os.replace``, a folder with :func:`mobileone_tf.fileio.install_dir`."""
    if os.path.isdir(staged):
        fileio.install_dir(staged, output, overwrite=True)
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


@mobileone_export("mobileone_tf.export")
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
    if isinstance(m, str):  # skipped, and why
        lines.append(f"  metadata: {m}")
    elif m:
        lines.append(f"  metadata: {m['name']} {m['version']}, normalization mean {m['mean']} "
                     f"std {m['std']}, labels {m['labels']} (MediaPipe / Android Studio)")
    return "\n".join(lines)
