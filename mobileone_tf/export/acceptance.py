"""Acceptance figures of the exported S0 on real images.

Builds MobileOne-S0 from Apple's fused checkpoint (the package's own porter,
:func:`mobileone_tf.models.load_weights`), exports TFLite float32 / float16 /
dynamic / int8 (PTQ calibrated on a separate folder) and ONNX at 224x224, and
evaluates every file and the fused Keras model on a labelled set
(``labels.csv`` or class folders) with the same eval transform, reporting
top-1 and the number of images whose top-1 differs from Keras. Behind
``scripts/export_acceptance.py``; the README's deploy table comes from it.
"""

from __future__ import annotations

import os
import time

import numpy as np

from mobileone_tf.export.api import export
from mobileone_tf.export.common import write_report

SIZE = 224
JOBS = {
    "tflite": ("tflite", {"quantize": "none"}),
    "tflite_float16": ("tflite", {"quantize": "float16"}),
    "tflite_dynamic": ("tflite", {"quantize": "dynamic"}),
    "tflite_int8": ("tflite", {"quantize": "int8"}),
    "onnx": ("onnx", {}),
}
DEFAULT_FORMATS = ("tflite", "tflite_float16", "tflite_int8", "onnx")


def build_s0(checkpoint):
    """Fused MobileOne-S0 (``input_shape=(None, None, 3)``) with the weights
    of ``checkpoint`` (Apple's ``mobileone_s0.pth.tar`` or any file
    :func:`mobileone_tf.models.load_weights` reads)."""
    from mobileone_tf import models
    model = models.MobileOne("s0", weights=None, fused=True, input_shape=(None, None, 3))
    models.load_weights(model, os.fspath(checkpoint))
    return model


def labelled(eval_data, limit=0):
    """``(paths, labels)`` of a labelled folder (``labels.csv`` or class
    folders, labels checked against 1000 classes); the first ``limit``
    (0: all). ``labels`` is an int array."""
    from mobileone_tf import data
    paths, labels = data.list_examples(eval_data, num_classes=1000)
    if limit:
        paths, labels = paths[:limit], labels[:limit]
    return paths, np.asarray(labels)


def predict_all(fn, paths, batch=50, size=SIZE):
    """``fn`` (float32 images ``(B, size, size, 3)`` RGB 0..255 -> outputs)
    on the eval-transformed images of ``paths``, ``batch`` at a time."""
    from mobileone_tf import data
    return np.concatenate([fn(data.load_images(paths[i:i + batch], size))
                           for i in range(0, len(paths), batch)])


def run_acceptance(checkpoint, eval_data, workdir, *, calibration_data=None,
                   calibration_steps=100, limit=0, formats=DEFAULT_FORMATS,
                   report_path=None, progress=None):
    """Exports Apple's S0 to ``formats`` (keys of :data:`JOBS`) under
    ``workdir`` and scores each file and the Keras model on ``eval_data``.

    Args:
        calibration_data: image folder for int8 PTQ (never the eval set).
        progress: optional ``callable(name, figures)`` called as each result
            arrives.

    Returns:
        dict: ``keras`` (``top1``, ``seconds``); per format ``top1``,
        ``top1_differs_from_keras``, ``file_mb``, ``convert_and_verify_s``,
        ``eval_s``, ``verification``; ``num_images``.

    Raises:
        ValueError: unknown format name, bad data (named), or export errors.
    """
    from mobileone_tf import runtime
    unknown = [f for f in formats if f not in JOBS]
    if unknown:
        raise ValueError(f"Unknown formats {unknown}; expected some of {sorted(JOBS)}")
    os.makedirs(workdir, exist_ok=True)
    model = build_s0(checkpoint)
    paths, labels = labelled(eval_data, limit)
    t = time.time()
    keras_top1 = predict_all(lambda x: model.predict(x, verbose=0), paths).argmax(-1)
    results = {"keras": {"top1": float(np.mean(keras_top1 == labels)),
                         "seconds": round(time.time() - t, 1)}}
    if progress:
        progress("keras", results["keras"])
    for name in formats:
        fmt, kw = JOBS[name]
        if kw.get("quantize") == "int8":
            kw = dict(kw, calibration_data=calibration_data,
                      calibration_steps=calibration_steps)
        out = os.path.join(workdir, f"s0_{name}.{fmt}")
        t = time.time()
        _, report = export(model, out, fmt, overwrite=True, input_size=SIZE,
                           class_names=[str(i) for i in range(1000)], **kw)
        convert_s = round(time.time() - t, 1)
        t = time.time()
        top1 = predict_all(runtime.load(out), paths).argmax(-1)
        results[name] = {
            "top1": float(np.mean(top1 == labels)),
            "top1_differs_from_keras": int(np.sum(top1 != keras_top1)),
            "file_mb": round(report["file_size_bytes"] / 1e6, 2),
            "convert_and_verify_s": convert_s, "eval_s": round(time.time() - t, 1),
            "verification": report.get("verification")}
        if progress:
            progress(name, {k: v for k, v in results[name].items() if k != "verification"})
    results["num_images"] = len(paths)
    if report_path:
        write_report(results, report_path)
    return results
