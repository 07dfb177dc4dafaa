"""Where int8 post-training quantization loses accuracy, layer by layer
(issue 16), and what keeping a layer in float32 buys.

:func:`sensitivity_scan` prepares the model exactly as
:func:`mobileone_tf.export.to_tflite` does for ``quantize="int8"`` (fused,
fixed shape, input normalization folded, equalized, the same calibration
images), calibrates **once** (:func:`.selective.calibrated_debugger`) and
then only re-quantizes (:func:`.selective.requantize`):

a. per-layer error of the full int8 model (:func:`layer_errors`): for every
   CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op, the TFLite
   quantization debugger's layer-wise comparison (its debug model runs each
   quantized op beside a float copy fed the *same* dequantized input, so the
   figure is the error that op adds: weight rounding and output rounding,
   not the error it inherits): ``sqnr_db = 10 log10(E[f^2] / E[(q - f)^2])``,
   ``rmse`` and ``rmse / scale`` (the TFLite guide's flag: about 0.29 =
   1/sqrt(12) is pure rounding, well above it a clipped or badly fit range).
b. a one-layer-at-a-time scan on held-out images, scored against the float
   model of the same source: ``kl`` (mean KL(float || candidate) of the
   softmax of the logits, nats), ``agreement`` (top-1 equal to the float
   model's) and ``top1`` (when the held-out folder has labels).
   ``mode="only"`` (default): only that op is int8, everything else float --
   the error the layer causes on its own, the classic sensitivity analysis
   (Nagel et al. 2021, "A White Paper on Neural Network Quantization",
   PTQ debugging steps: quantize one layer at a time), a clean difference
   from float.
   ``mode="all_but"``: that op float, everything else int8 -- directly what
   keeping it float buys, but each candidate differs from full int8 by one
   layer in 44, so the differences are small and include interactions. On
   Apple's S0 the two rankings agree only loosely (Spearman 0.48;
   ``docs/quantization_sensitivity.md``): the error is spread over the
   layers. Rank 1 is the layer to keep in float first (``only``: highest
   KL; ``all_but``: lowest KL).

Shapes: images NHWC float32 RGB 0..255 (uint8 in memory while scanning);
logits ``(N, classes)`` float32.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import warnings

import numpy as np

from mobileone_tf.export import selective, tflite
from mobileone_tf.export.common import ExportError
from mobileone_tf.export.images import describe
from mobileone_tf.export.options import export_options
from mobileone_tf.export.saved_model import write_saved_model

MODES = ("only", "all_but")
CHUNK = 64  # images converted to float32 at a time


def log_softmax(logits):
    """Row-wise log-softmax of float logits ``(N, C)`` (float64)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def score(reference, logits, labels=None):
    """``{"kl", "agreement"[, "top1"]}`` of ``logits`` against the
    ``reference`` logits (both ``(N, C)``): mean KL(softmax(reference) ||
    softmax(logits)) in nats, the fraction of equal argmaxes, and top-1
    against integer ``labels`` when given."""
    p, q = log_softmax(reference), log_softmax(logits)
    out = {"kl": float(np.mean(np.sum(np.exp(p) * (p - q), axis=1))),
           "agreement": float(np.mean(p.argmax(1) == q.argmax(1)))}
    if labels is not None:
        out["top1"] = float(np.mean(q.argmax(1) == np.asarray(labels)))
    return out


def holdout_images(source, size, max_images=None):
    """``(images uint8 (N, size, size, 3), labels or None, description)``:
    an array (its first ``max_images``) or a folder (eval transform;
    ``labels.csv`` or class subfolders give labels, else none;
    ``max_images`` spread over the listing).

    Raises:
        ExportError: no such folder; ValueError: no images / bad labels.
    """
    if not isinstance(source, (str, os.PathLike)):
        images = np.asarray(source)[:max_images]
        return np.clip(np.round(images), 0, 255).astype(np.uint8), None, f"{len(images)} given"
    from mobileone_tf import data
    folder = os.fspath(source)
    if not os.path.isdir(folder):
        raise ExportError(f"holdout_data: image folder not found: {folder!r}")
    try:
        paths, labels = data.list_examples(folder)
    except ValueError:  # no labels.csv nor class folders: unlabelled
        paths, labels = data.list_images(folder), None
    if max_images and len(paths) > max_images:
        picks = np.linspace(0, len(paths) - 1, int(max_images)).astype(int)
        paths = [paths[i] for i in picks]
        labels = None if labels is None else [labels[i] for i in picks]
    images = np.concatenate([data.load_images(paths[i:i + CHUNK], size).astype(np.uint8)
                             for i in range(0, len(paths), CHUNK)])
    return images, labels, folder


def logits_of(flatbuffer, images, num_threads=None):
    """The outputs of a .tflite (bytes or path) on uint8/float ``images``,
    float32 ``(N, ...)``, run :data:`CHUNK` images at a time."""
    from mobileone_tf import runtime
    interp = runtime.tflite_interpreter(flatbuffer, num_threads)
    return np.concatenate([runtime.run_tflite(interp, images[i:i + CHUNK].astype(np.float32))
                           for i in range(0, len(images), CHUNK)])


def layer_errors(debugger, images, names=None, batch_size=1):
    """Layer-wise error of ``debugger``'s full int8 model (SOFTMAX float) on
    ``images`` (whole batches of the model's batch size): ``{tensor name:
    {"sqnr_db", "rmse", "rmse_over_scale", "scale"}}`` for each quantizable
    op (see the module docstring, item a). ``names``: Keras layer names used
    to match the debugger's tensor names back to the ops; ``batch_size``:
    the model's fixed batch."""
    import tensorflow as tf
    selective.requantize(debugger)  # the default options: SOFTMAX float
    layers = selective.quantizable_layers(debugger.calibrated_model, names)
    debug_model = debugger.get_debug_quantized_model()
    b = int(batch_size)

    def batches():
        for i in range(0, len(images) - b + 1, b):
            yield [np.asarray(images[i:i + b], np.float32)]

    def signal(f, q, s, z):
        return float(np.mean(np.square(f)))

    def noise(f, q, s, z):
        return float(np.mean(np.square((q.astype(np.float32) - z) * s - f)))

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"signal": signal, "noise": noise})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        probe = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=batches,
            debug_options=options)
        probe.run()
    dump = io.StringIO()
    probe.layer_statistics_dump(dump)
    out = {}
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        if row["op_name"] not in selective.QUANTIZABLE_OPS:
            continue
        tensor = _match(row["tensor_name"], layers, names)
        noise_power, scale = float(row["noise"]), float(row["scale"])
        out[tensor] = {"sqnr_db": 10 * math.log10(float(row["signal"]) / max(noise_power, 1e-30)),
                       "rmse": math.sqrt(noise_power), "scale": scale,
                       "rmse_over_scale": math.sqrt(noise_power) / scale}
    return out


def _match(dumped, layers, names):
    """The op tensor name a debugger dump row names (the dump may drop a
    trailing digit of the tensor name)."""
    for layer in layers:
        if layer["tensor"] == dumped:
            return layer["tensor"]
    name = selective.layer_name(dumped, names) if names else None
    hits = [x["tensor"] for x in layers if (name and x["name"] == name)
            or x["tensor"].startswith(dumped)]
    return hits[0] if len(hits) == 1 else dumped


def _candidate(debugger, layer, layers, op_types, mode):
    if mode == "all_but":
        return selective.requantize(debugger, float_nodes=[layer["tensor"]])
    others = [x["tensor"] for x in layers if x["op"] == layer["op"] and x is not layer]
    return selective.requantize(debugger, float_nodes=others,
                                float_ops=[t for t in op_types if t != layer["op"]])


def sensitivity_scan(model, calibration_data, holdout_data, *, mode="only",
                     calibration_steps=100, equalize=True, batch_size=1, input_size=224,
                     fuse=True, max_images=None, error_images=64, num_threads=None,
                     progress=None):
    """Per-layer int8 error table and one-layer-at-a-time scan (module
    docstring) of a MobileOne (or, with ``fuse=False``, any one-image-input
    classifier).

    Args:
        model: Keras model; its logits are compared (a softmax top is dropped).
        calibration_data: folder or float array, as for ``to_tflite``
            (``calibration_steps`` batches, equalized unless ``equalize=False``).
        holdout_data: folder (``labels.csv`` / class folders give top-1) or
            array of held-out *training-side* images: never an evaluation set.
        mode: ``"only"`` or ``"all_but"``.
        max_images: held-out images used (spread over the folder; all when
            ``None``); ``error_images``: of those, how many feed (a).
        num_threads: LiteRT threads; ``progress``: ``callable(str)`` or None.

    Returns:
        dict: ``mode``, ``calibration``, ``holdout`` (``data``, ``images``,
        ``labelled``), ``float`` and ``int8`` scores, ``seconds``
        (``calibrate``, ``requantize`` mean, ``scan``) and ``layers``: one dict per
        quantizable op in graph order (``name``, ``op``, ``tensor``, ``shape``,
        ``sqnr_db``, ``rmse``, ``rmse_over_scale``, ``scale``, ``kl``,
        ``agreement``[, ``top1``], ``rank``).

    Raises:
        ExportError: bad ``mode``, missing folders, too few images.
    """
    import time

    from mobileone_tf import runtime
    from mobileone_tf.export import prepare
    if mode not in MODES:
        raise ExportError(f"mode must be one of {MODES}; got {mode!r}")
    tflite.check_options("scan.tflite", export_options(
        quantize="int8", overwrite=True, calibration_data=calibration_data,
        calibration_steps=calibration_steps))
    say = progress or (lambda _: None)
    outputs = "logits" if prepare.output_name(model) == "probabilities" else None
    reference = prepare.prepare_model(model, fuse, batch_size, input_size, outputs=outputs,
                                      fold=False)
    fixed = prepare.fold_input_normalization(reference)
    names = selective.keras_layer_names(fixed)
    images, labels, described = holdout_images(holdout_data, input_size, max_images)
    source, calibration = tflite.quantization_inputs(fixed, calibration_data,
                                                     calibration_steps, equalize)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        write_saved_model(source, saved)
        float_model = tflite.tflite_converter(saved, "none").convert()
        debugger = selective.calibrated_debugger(
            tflite.tflite_converter(saved, "int8", calibration, batch_size), None)
    seconds = {"calibrate": round(time.time() - start, 1)}
    say(f"calibrated on {len(calibration)} images in {seconds['calibrate']} s")
    reference_logits = logits_of(float_model, images, num_threads)
    full = selective.requantize(debugger)
    layers = selective.quantizable_layers(debugger.calibrated_model, names)
    report = {"mode": mode, "equalized": source is not fixed,
              "calibration": {"data": describe(calibration_data, len(calibration)),
                              "images": len(calibration)},
              "holdout": {"data": str(described), "images": len(images),
                          "labelled": labels is not None},
              "float": score(reference_logits, reference_logits, labels),
              "int8": score(reference_logits, logits_of(full, images, num_threads), labels)}
    errors = layer_errors(debugger, images[:error_images].astype(np.float32), names,
                          batch_size)
    op_types = sorted({op["op"] for op in runtime.tflite_op_list(full)}
                      - {"QUANTIZE", "DEQUANTIZE"})
    start, spent = time.time(), 0.0
    for i, layer in enumerate(layers):
        layer.update(errors.get(layer["tensor"], {}))
        t = time.time()
        candidate = _candidate(debugger, layer, layers, op_types, mode)
        spent += time.time() - t
        layer.update(score(reference_logits, logits_of(candidate, images, num_threads), labels))
        say(f"{i + 1}/{len(layers)} {layer['name']}: kl {layer['kl']:.5f} "
            f"agreement {layer['agreement']:.4f}")
    order = sorted(layers, key=lambda x: x["kl"], reverse=mode == "only")
    for rank, layer in enumerate(order, 1):
        layer["rank"] = rank
        layer.pop("dtype", None)
    seconds.update(requantize=round(spent / max(len(layers), 1), 2),
                   scan=round(time.time() - start, 1))
    report.update(seconds=seconds, layers=layers)
    return report


def markdown(report):
    """The scan report as a markdown table (graph order), with a header
    line of the float / full int8 scores."""
    labelled = report["holdout"]["labelled"]
    lines = [(f"Held-out: {report['holdout']['data']} ({report['holdout']['images']} images); "
              f"calibration: {report['calibration']['data']} "
              f"({report['calibration']['images']} images); scan mode `{report['mode']}`."),
             "", "| model | KL vs float | top-1 agreement |" + (" top-1 |" if labelled else ""),
             "|---|---|---|" + ("---|" if labelled else "")]
    for key in ("float", "int8"):
        s = report[key]
        lines.append(f"| {key} | {s['kl']:.5f} | {s['agreement']:.4f} |"
                     + (f" {s['top1']:.4f} |" if labelled else ""))
    head = ("| rank | layer | op | output | SQNR dB | RMSE/scale | KL | agreement |"
            + (" top-1 |" if labelled else ""))
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for x in report["layers"]:
        lines.append(
            f"| {x['rank']} | {x['name']} | {x['op']} | {'x'.join(map(str, x['shape'][1:]))} | "
            f"{x.get('sqnr_db', float('nan')):.1f} | {x.get('rmse_over_scale', float('nan')):.2f} "
            f"| {x['kl']:.5f} | {x['agreement']:.4f} |"
            + (f" {x['top1']:.4f} |" if labelled else ""))
    return "\n".join(lines) + "\n"
