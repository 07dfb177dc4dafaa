"""Deployment export of MobileOne: TFLite/LiteRT, Core ML, ONNX, SavedModel.

Every exporter takes a Keras MobileOne (branched or fused), re-parameterizes
it with :func:`mobileone_tf.fuse` (unless ``fuse=False``), rebuilds it with a
fixed input ``(batch_size, input_size, input_size, 3)`` (static shapes for
XNNPACK, the GPU delegate and the Neural Engine), writes the file atomically
(temporary path then ``os.replace``; an existing output is kept unless
``overwrite=True``; nothing is left at the output path on failure) and, with
``verify=True`` (default), checks the file against the fused Keras model
before moving it into place.

Tensor contract of the exported files (the defaults of :func:`mobileone_tf.MobileOne`):

* input ``"image"``: float32 NHWC ``(batch, H, W, 3)``, RGB 0..255; the
  ImageNet normalization ``(x / 255 - mean) / std`` is part of the graph (the
  "preprocessing" Rescaling layer: one MUL and one ADD at the input). It is
  kept rather than folded into the stem convolution because the stem pads
  with zeros *after* normalization: folding would change the border pixels.
  int8 TFLite with ``int8_io`` takes int8 (or uint8) with the tensor's
  scale / zero point (see :func:`to_tflite`).
* output ``"probabilities"`` (softmax top), ``"logits"`` (top without
  activation) or ``"features"`` (no top): float32 ``(batch, classes)``.
  Core ML classifiers output ``classLabel`` (string) and ``classLabelProbs``
  (class name -> probability).

Verification (``report["verification"]``): float32 TFLite / ONNX / SavedModel
must match the fused Keras model within ``1e-4 * max|output|`` with the same
top-1 on every image, else :class:`ExportVerificationError` is raised and
nothing is written; float16 / dynamic / int8 report the top-1 agreement and
max difference. Core ML is checked at spec level (Linux cannot run it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import sys
import time
import uuid

import numpy as np

from mobileone_tf import fileio

FORMATS = ("tflite", "coreml", "onnx", "saved_model")
QUANTIZE_MODES = {
    "tflite": ("none", "float16", "dynamic", "int8"),
    "coreml": ("none", "float32", "int8", "palettize4"),
    "onnx": ("none",),
    "saved_model": ("none",),
}
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


def import_coremltools():
    """Imports coremltools safely after TensorFlow.

    coremltools imports torch, whose ``torch._dynamo`` imports triton; triton
    segfaults when TensorFlow is already loaded in the process (measured with
    TF 2.21 / torch 2.14). Marking triton as absent (``sys.modules["triton"] =
    None``) makes torch skip it; nothing here uses triton.
    """
    if "triton" not in sys.modules:
        sys.modules["triton"] = None
    import logging
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct
    return ct


# ---------------------------------------------------------------------------
# model preparation
# ---------------------------------------------------------------------------
def prepare_model(model, fuse=True, batch_size=1, input_size=224):
    """The fused model rebuilt with a fixed input ``(batch_size, H, W, 3)``.

    Args:
        model: a MobileOne ``keras.Model`` (branched or fused).
        fuse: re-parameterize a branched model (:func:`mobileone_tf.fuse`).
        batch_size: fixed batch size (>= 1).
        input_size: ``int`` (square) or ``(H, W)``; each at least 32.

    Returns:
        A new functional ``keras.Model`` whose input is named ``"image"``.

    Raises:
        ExportError: invalid batch or input size, or a model whose input is
            not an RGB image.
    """
    import keras
    from mobileone_tf import models

    if int(batch_size) != batch_size or batch_size < 1:
        raise ExportError(f"batch_size must be a positive integer; got {batch_size!r}")
    h, w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if h != w:
        raise ExportError(f"Only square input sizes are supported; got {input_size!r}")
    if min(h, w) < 32:
        raise ExportError(f"input_size must be at least 32 (5 stride-2 stages); got {input_size!r}")
    if len(model.inputs) != 1:
        raise ExportError(f"Expected a model with one image input; got {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ExportError(f"Expected a model with an NHWC RGB image input; got {shape}")
    for want, have in ((h, shape[1]), (w, shape[2])):
        if have is not None and have != want:
            raise ExportError(f"The model was built for input {shape[1:3]}; cannot export "
                              f"at {h}x{w} (build it with input_shape=(None, None, 3)).")
    if fuse and models.model_form(model) == "branched":
        model = models.fuse(model)
    inp = keras.Input(batch_shape=(int(batch_size), int(h), int(w), 3), name=INPUT_NAME)
    fixed = keras.models.clone_model(model, input_tensors=inp)
    fixed.set_weights(model.get_weights())
    fixed.name = model.name
    return fixed


def output_name(model):
    """``"probabilities"``, ``"logits"`` or ``"features"`` for the model's output."""
    layer = model.layers[-1]
    if layer.name != "predictions":
        return "features"
    act = getattr(layer, "activation", None)
    return "probabilities" if getattr(act, "__name__", "") == "softmax" else "logits"


def num_classes(model):
    shape = tuple(model.output.shape)
    return int(shape[-1]) if len(shape) == 2 and output_name(model) != "features" else None


def _class_names(model, class_names):
    n = num_classes(model)
    if n is None:
        return None, None
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(names) != n:
            raise ExportError(f"class_names has {len(names)} entries; the model has {n} classes")
        return names, "given"
    if n == 1000:
        try:
            from mobileone_tf import weights as mo_weights
            return [name for _, name in mo_weights.imagenet_class_index()], "imagenet"
        except Exception as e:  # module not available or no class list cached
            return [str(i) for i in range(n)], f"indices (ImageNet class names unavailable: {e})"
    return [str(i) for i in range(n)], "indices"


# ---------------------------------------------------------------------------
# images: verification set and representative dataset
# ---------------------------------------------------------------------------
def list_images(folder):
    """Image files under ``folder`` (recursive, sorted): :func:`mobileone_tf.data.list_images`."""
    from mobileone_tf import data
    return [os.fspath(p) for p in data.list_images(folder)]


def load_image(path, size, crop_pct=0.875):
    """The project's eval transform (:func:`mobileone_tf.data.pil_eval_transform`:
    torchvision's bilinear short-side resize to ``size / crop_pct`` then centre
    crop); float32 ``(size, size, 3)`` RGB 0..255."""
    from mobileone_tf import data
    if not np.isscalar(size):
        if size[0] != size[1]:
            raise ExportError(f"Only square input sizes are supported; got {size}")
        size = size[0]
    return np.asarray(data.pil_eval_transform(os.fspath(path), int(size), crop_pct), np.float32)


def _equalized(fixed, calibration_data, n=64):
    """:func:`mobileone_tf.quantization.equalize_activations` of a fused
    MobileOne on ``n`` calibration images; ``fixed`` itself for other models."""
    from mobileone_tf import quantization
    try:
        quantization.infer_variant(fixed)
    except ValueError:
        return fixed   # not a fused MobileOne (e.g. a custom head): export as is
    size = tuple(fixed.inputs[0].shape[1:3])
    b = int(fixed.inputs[0].shape[0])
    images = np.concatenate(list(image_batches(calibration_data, size, b, max(1, n // b))))
    return quantization.equalize_activations(fixed, images)


def image_batches(folder, size, batch_size, max_batches):
    """Yields float32 ``(batch_size, H, W, 3)`` batches (0..255) from a folder.

    Uses :func:`mobileone_tf.data.image_folder_dataset` when available, else
    this module's PIL loader (same eval transform).

    Raises:
        ExportError: missing folder or no images in it.
    """
    if not folder or not os.path.isdir(folder):
        raise ExportError(f"Image folder not found: {folder!r}")
    paths = list_images(folder)
    if not paths:
        raise ExportError(f"No image files under {folder!r}")
    # Spread the picks over the folder (class folders are sorted).
    n = min(len(paths), batch_size * max_batches)
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]
    for start in range(0, n - batch_size + 1, batch_size):
        yield np.stack([load_image(p, size) for p in picks[start:start + batch_size]])


def generated_images(n, size, seed=0):
    """``n`` smooth random RGB images (float32 0..255): low-frequency noise
    upsampled, so that they look like image content rather than white noise."""
    import tensorflow as tf
    h, w = (size, size) if np.isscalar(size) else size
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    img = tf.image.resize(low, (h, w), method="bicubic").numpy()
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.float32)


def verification_images(verify_data, size, n=8):
    if verify_data:
        return np.concatenate(list(image_batches(verify_data, size, 1, n)))
    return generated_images(n, size)


# ---------------------------------------------------------------------------
# atomic output
# ---------------------------------------------------------------------------
def _check_output(output, overwrite, suffixes):
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


@contextlib.contextmanager
def _staging(output):
    """A temporary folder beside ``output`` (same filesystem, so os.replace is
    atomic), removed afterwards whatever happens."""
    parent = os.path.dirname(os.path.abspath(output))
    tmp = os.path.join(parent, f".{os.path.basename(output)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(staged, output):
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


def _finish(staged, output, labels, report, report_path=None):
    if labels is not None:
        labels_path = os.path.join(os.path.dirname(os.path.abspath(output)), "labels.txt")
        staged_labels = staged + ".labels.txt"
        with open(staged_labels, "w") as f:
            f.write("\n".join(labels) + "\n")
        _install(staged, output)
        os.replace(staged_labels, labels_path)
        report["labels"] = labels_path
    else:
        _install(staged, output)
    report["path"] = output
    report["file_size_bytes"] = _size(output)
    if report_path:
        write_report(report, report_path)
    return output, report


def _size(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f))
                   for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def write_report(report, path):
    fileio.write_json(report, path, default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------
def compare(reference, outputs, strict, rtol=RTOL):
    """Compares exported outputs with the Keras reference.

    Returns:
        dict: ``num_images``, ``max_abs_diff``, ``max_abs_reference``,
        ``rel_max_diff``, ``top1_agreement`` (fraction), ``tolerance``
        (``rtol * max|reference|``), ``strict``, ``passed``.
    """
    reference = np.asarray(reference, np.float64)
    outputs = np.asarray(outputs, np.float64)
    diff = float(np.abs(reference - outputs).max())
    ref_max = float(np.abs(reference).max())
    agree = float(np.mean(reference.argmax(-1) == outputs.argmax(-1)))
    tol = rtol * ref_max
    passed = diff <= tol and agree == 1.0
    return {"num_images": int(len(reference)), "max_abs_diff": diff,
            "max_abs_reference": ref_max, "rel_max_diff": diff / max(ref_max, 1e-12),
            "top1_agreement": agree, "tolerance": tol, "strict": strict,
            "passed": bool(passed) if strict else None}


def _verify_runner(fixed, path, verify_data, strict, n_images=8):
    from mobileone_tf import runtime
    size = tuple(fixed.input.shape[1:3])
    images = verification_images(verify_data, size, n_images)
    reference = fixed.predict(images, batch_size=int(fixed.input.shape[0]), verbose=0)
    outputs = runtime.load(path)(images)
    result = compare(reference, outputs, strict)
    result["images"] = verify_data or f"{len(images)} generated images"
    if strict and not result["passed"]:
        raise ExportVerificationError(
            f"{os.path.basename(path)} does not match the fused Keras model: max |diff| "
            f"{result['max_abs_diff']:.3g} (tolerance {result['tolerance']:.3g}), top-1 "
            f"agreement {result['top1_agreement']:.3f}. Nothing was written.")
    return result


def _io(fixed):
    return ([{"name": INPUT_NAME, "dtype": "float32", "shape": list(fixed.input.shape)}],
            [{"name": output_name(fixed), "dtype": "float32", "shape": list(fixed.output.shape)}])


def _base_report(fmt, fixed, quantize, fuse, start):
    from mobileone_tf import models
    return {"format": fmt, "model": fixed.name, "form": models.model_form(fixed),
            "fused": bool(fuse), "quantize": quantize,
            "batch_size": int(fixed.input.shape[0]),
            "input_size": [int(d) for d in fixed.input.shape[1:3]],
            "convert_seconds": None, "_start": start}


def _done(report):
    report["convert_seconds"] = round(time.time() - report.pop("_start"), 2)
    return report


def _check_mode(fmt, quantize):
    if quantize not in QUANTIZE_MODES[fmt]:
        raise ExportError(f"quantize={quantize!r} is not valid for {fmt}; expected one of "
                          f"{QUANTIZE_MODES[fmt]}")


# ---------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------
def _export_archive(fixed, path):
    """``model.export``-style SavedModel with one ``serving_default``
    signature ``{"image": (B, H, W, 3) float32} -> {output_name: (B, C)}``."""
    import keras
    import tensorflow as tf
    archive = keras.export.ExportArchive()
    archive.track(fixed)
    name = output_name(fixed)

    def serve(image):
        return {name: fixed(image, training=False)}

    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec(tuple(fixed.input.shape), tf.float32, name=INPUT_NAME)])
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        archive.write_out(path)


def to_saved_model(model, output, *, batch_size=1, input_size=224, fuse=True,
                   overwrite=False, verify=True, verify_data=None, report_path=None,
                   quantize="none"):
    """Exports a TensorFlow SavedModel (``serving_default`` signature).

    Args:
        model: MobileOne ``keras.Model`` (branched models are fused first).
        output: SavedModel directory to create.
        batch_size, input_size, fuse: see :func:`prepare_model`.
        overwrite: replace an existing ``output``.
        verify: compare with the fused Keras model (strict, float32).
        verify_data: folder of images for verification (default: 8
            generated images).
        report_path: also write the report as JSON there.

    Returns:
        ``(path, report)``.

    Raises:
        ExportError, ExportVerificationError.
    """
    _check_mode("saved_model", quantize)
    output = _check_output(output, overwrite, None)
    fixed = prepare_model(model, fuse, batch_size, input_size)
    report = _base_report("saved_model", fixed, quantize, fuse, time.time())
    with _staging(output) as tmp:
        staged = os.path.join(tmp, "saved_model")
        _export_archive(fixed, staged)
        _done(report)
        report["inputs"], report["outputs"] = _io(fixed)
        report["signature"] = "serving_default"
        if verify:
            report["verification"] = _verify_runner(fixed, staged, verify_data, True)
        return _finish(staged, output, None, report, report_path)


# ---------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------
def tflite_ops(path_or_bytes):
    """Counter of builtin op names in a .tflite (no delegate applied)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw = ({"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes)
          else {"model_path": str(path_or_bytes)})
    interp = Interpreter(
        **kw, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return dict(collections.Counter(op["op_name"] for op in interp._get_ops_details()))


def tflite_io(path):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(path))
    sig = interp.get_signature_runner("serving_default")
    details = []
    for kind, d in (("inputs", sig.get_input_details()), ("outputs", sig.get_output_details())):
        details.append([{"name": name, "dtype": np.dtype(v["dtype"]).name,
                         "shape": [int(s) for s in v["shape"]],
                         "quantization": [float(v["quantization"][0]),
                                          int(v["quantization"][1])]}
                        for name, v in d.items()])
    return details


def to_tflite(model, output, *, quantize="none", calibration_data=None,
              calibration_steps=100, int8_io=False, batch_size=1, input_size=224,
              fuse=True, overwrite=False, verify=True, verify_data=None,
              report_path=None, class_names=None, equalize=True):
    """Exports a TFLite / LiteRT flatbuffer (and ``labels.txt`` beside it).

    Conversion goes through a SavedModel (``TFLiteConverter.from_saved_model``,
    signature ``serving_default``: input ``"image"``, output
    ``"probabilities"``/``"logits"``/``"features"``).

    Args:
        model: MobileOne ``keras.Model``.
        output: ``*.tflite`` path.
        quantize: ``"none"`` (float32), ``"float16"`` (float16 weights,
            float32 compute on CPU), ``"dynamic"`` (dynamic-range int8
            weights), ``"int8"`` (full-integer PTQ with a representative
            dataset from ``calibration_data``).
        calibration_data: folder of images (recursive) for ``"int8"``; the
            eval transform (resize short side, centre crop) is applied.
        calibration_steps: number of representative batches (of
            ``batch_size`` images).
        equalize: with ``"int8"`` and a fused MobileOne, first rescale the
            weights with :func:`mobileone_tf.quantization.equalize_activations`
            (64 calibration images; the float function is unchanged). Measured
            on Apple's S0, 400 imagenet-val-1300 images: int8 top-1 0.6875
            without, 0.7725 with (float 0.7825).
        int8_io: with ``"int8"``: ``False`` keeps float32 input/output;
            ``True``/``"int8"`` makes them int8, ``"uint8"`` uint8 (the input
            then takes ``pixel / scale + zero_point``: read the tensor's
            quantization).
        batch_size, input_size, fuse: see :func:`prepare_model`.
        overwrite, verify, verify_data, report_path: see :func:`to_saved_model`.
        class_names: labels for ``labels.txt`` (default: ImageNet names for a
            1000-class top).

    Returns:
        ``(path, report)``; the report has ``ops`` (builtin op counts),
        ``inputs``/``outputs`` (name, dtype, shape, quantization) and
        ``verification``.

    Raises:
        ExportError: invalid mode, missing calibration data, existing output.
        ExportVerificationError: float32 file does not match Keras.
    """
    import tensorflow as tf
    _check_mode("tflite", quantize)
    if int8_io not in (False, True, "int8", "uint8"):
        raise ExportError(f"int8_io must be False, True, 'int8' or 'uint8'; got {int8_io!r}")
    if int8_io and quantize != "int8":
        raise ExportError("int8_io requires quantize='int8'")
    if quantize == "int8":
        if not calibration_data:
            raise ExportError("quantize='int8' needs calibration_data (--calibration_data DIR): "
                              "a folder of representative images (never the evaluation set)")
        next(image_batches(calibration_data, 32, 1, 1))  # raises for empty/missing folders
        if int(calibration_steps) < 1:
            raise ExportError(f"calibration_steps must be >= 1; got {calibration_steps}")
    output = _check_output(output, overwrite, (".tflite",))
    fixed = prepare_model(model, fuse, batch_size, input_size)
    labels, labels_source = _class_names(fixed, class_names)
    report = _base_report("tflite", fixed, quantize, fuse, time.time())
    source = fixed
    if quantize == "int8" and equalize:
        source = _equalized(fixed, calibration_data)
        report["equalized"] = source is not fixed
    with _staging(output) as tmp:
        sm = os.path.join(tmp, "saved_model")
        _export_archive(source, sm)
        converter = tf.lite.TFLiteConverter.from_saved_model(sm, ["serving_default"])
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "int8":
            size = tuple(fixed.input.shape[1:3])
            b = int(fixed.input.shape[0])

            def representative_dataset():
                for batch in image_batches(calibration_data, size, b, int(calibration_steps)):
                    yield {INPUT_NAME: batch}

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                io_type = tf.uint8 if int8_io == "uint8" else tf.int8
                converter.inference_input_type = io_type
                converter.inference_output_type = io_type
            report["calibration"] = {"data": os.fspath(calibration_data),
                                     "steps": int(calibration_steps),
                                     "int8_io": int8_io or False}
        flatbuffer = converter.convert()
        staged = os.path.join(tmp, "model.tflite")
        with open(staged, "wb") as f:
            f.write(flatbuffer)
        _done(report)
        report["ops"] = tflite_ops(staged)
        report["inputs"], report["outputs"] = tflite_io(staged)
        report["labels_source"] = labels_source
        if verify:
            report["verification"] = _verify_runner(fixed, staged, verify_data,
                                                    strict=quantize == "none")
        return _finish(staged, output, labels, report, report_path)


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------
def to_onnx(model, output, *, opset=17, batch_size=1, input_size=224, fuse=True,
            overwrite=False, verify=True, verify_data=None, report_path=None,
            class_names=None, quantize="none"):
    """Exports ONNX with ``tf2onnx`` (static batch; ``labels.txt`` beside it).

    Input ``"image"`` float32 NHWC ``(B, H, W, 3)`` RGB 0..255; output
    ``"probabilities"``/``"logits"``/``"features"``. Verified with
    onnxruntime (CPU).

    Args:
        opset: ONNX opset (tf2onnx 1.17 supports up to 18; default 17).
        others: see :func:`to_tflite`.

    Returns:
        ``(path, report)`` with ``ops`` (node op types), ``inputs``, ``outputs``.

    Raises:
        ExportError, ExportVerificationError.
    """
    import tensorflow as tf
    _check_mode("onnx", quantize)
    if int(opset) != opset or not 9 <= opset <= 18:
        raise ExportError(f"opset must be an integer in 9..18 (tf2onnx 1.17); got {opset!r}")
    output = _check_output(output, overwrite, (".onnx",))
    fixed = prepare_model(model, fuse, batch_size, input_size)
    labels, labels_source = _class_names(fixed, class_names)
    report = _base_report("onnx", fixed, quantize, fuse, time.time())
    report["opset"] = int(opset)
    import onnx
    import tf2onnx
    with _staging(output) as tmp:
        staged = os.path.join(tmp, "model.onnx")
        spec = [tf.TensorSpec(tuple(fixed.input.shape), tf.float32, name=INPUT_NAME)]
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            proto, _ = tf2onnx.convert.from_keras(fixed, input_signature=spec,
                                                  opset=int(opset))
        _rename_onnx_output(proto, output_name(fixed))
        onnx.checker.check_model(proto)
        onnx.save(proto, staged)
        _done(report)
        report["ops"] = dict(collections.Counter(n.op_type for n in proto.graph.node))
        report["inputs"] = [_onnx_value(v) for v in proto.graph.input]
        report["outputs"] = [_onnx_value(v) for v in proto.graph.output]
        report["labels_source"] = labels_source
        if verify:
            report["verification"] = _verify_runner(fixed, staged, verify_data, True)
        return _finish(staged, output, labels, report, report_path)


def _rename_onnx_output(proto, name):
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = name
        for i, o in enumerate(node.input):
            if o == old:
                node.input[i] = name
    proto.graph.output[0].name = name


def _onnx_value(v):
    import onnx
    t = v.type.tensor_type
    return {"name": v.name, "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name,
            "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in t.shape.dim]}


# ---------------------------------------------------------------------------
# Core ML
# ---------------------------------------------------------------------------
def to_coreml(model, output, *, quantize="none", batch_size=1, input_size=224, fuse=True,
              overwrite=False, verify=True, verify_data=None, report_path=None,
              class_names=None, minimum_deployment_target="iOS16", author=AUTHOR,
              license=DEFAULT_LICENSE, version=None, description=None):
    """Exports a Core ML ML program (``.mlpackage``).

    The input is an ``ImageType`` ``"image"`` (RGB, ``H x W``, scale 1, bias
    0: the model normalizes inside, so ImageType's single scalar scale is not
    needed and the per-channel ImageNet std stays exact). A model with a top
    gets a ``ClassifierConfig`` (outputs ``classLabel`` and
    ``classLabelProbs``); a features model outputs ``"features"``.

    Args:
        quantize: ``"none"`` (float16 compute, the Core ML default),
            ``"float32"``, ``"int8"`` (``linear_quantize_weights``, symmetric
            per-channel int8 weights), ``"palettize4"`` (4-bit k-means
            palettization).
        minimum_deployment_target: ``"iOS16"`` (default), ``"iOS17"``,
            ``"iOS18"``, ``"macOS13"``...
        class_names: classifier labels (default: ImageNet names for 1000
            classes, else indices).
        author, license, version, description: metadata.
        others: see :func:`to_tflite`. ``verify`` runs :func:`check_coreml`
            (spec-level checks; Linux cannot run Core ML).

    Returns:
        ``(path, report)``.

    Raises:
        ExportError; ExportVerificationError if a spec check fails.
    """
    _check_mode("coreml", quantize)
    output = _check_output(output, overwrite, (".mlpackage",))
    ct = import_coremltools()
    target = getattr(ct.target, minimum_deployment_target, None)
    if target is None:
        raise ExportError(f"Unknown minimum_deployment_target {minimum_deployment_target!r}")
    fixed = prepare_model(model, fuse, batch_size, input_size)
    labels, labels_source = _class_names(fixed, class_names)
    report = _base_report("coreml", fixed, quantize, fuse, time.time())
    b, h, w = (int(d) for d in fixed.input.shape[:3])
    pipeline = ct.PassPipeline.DEFAULT
    # Keep the input normalization as mul/add: otherwise coremltools turns it
    # into a batch_norm op, which would hide real (unfused) BatchNorms.
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    kwargs = {}
    if labels is not None:
        kwargs["classifier_config"] = ct.ClassifierConfig(labels)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        mlmodel = ct.convert(
            fixed,
            inputs=[ct.ImageType(name=INPUT_NAME, shape=(b, h, w, 3), scale=1.0,
                                 bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB)],
            convert_to="mlprogram", minimum_deployment_target=target,
            compute_precision=(ct.precision.FLOAT32 if quantize == "float32"
                               else ct.precision.FLOAT16),
            pass_pipeline=pipeline, **kwargs)
    spec = mlmodel.get_spec()
    outs = [o.name for o in spec.description.output]
    if labels is not None:
        if spec.description.predictedProbabilitiesName != COREML_PROBS:
            ct.utils.rename_feature(spec, spec.description.predictedProbabilitiesName,
                                    COREML_PROBS)
    elif outs[0] != "features":
        ct.utils.rename_feature(spec, outs[0], "features")
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir,
                                skip_model_load=True)
    opt = ct.optimize.coreml
    if quantize == "int8":
        mlmodel = opt.linear_quantize_weights(mlmodel, config=opt.OptimizationConfig(
            global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric")))
    elif quantize == "palettize4":
        mlmodel = opt.palettize_weights(mlmodel, config=opt.OptimizationConfig(
            global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=4)))
    from mobileone_tf import __version__
    mlmodel.author = author
    mlmodel.license = license
    mlmodel.version = version or f"mobileone_tf {__version__}"
    mlmodel.short_description = description or (
        f"MobileOne {fixed.name} (re-parameterized), {h}x{w} RGB image -> "
        + ("ImageNet-1k class" if labels_source == "imagenet" else output_name(fixed)))
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {w}x{h} (pixel values 0..255; ImageNet normalization is inside the model)")
    if labels is not None:
        mlmodel.output_description[COREML_LABEL] = "Most likely class"
        mlmodel.output_description[COREML_PROBS] = (
            "Probability of every class" if output_name(fixed) == "probabilities"
            else "Score (logit) of every class")
    else:
        mlmodel.output_description["features"] = f"Features {tuple(fixed.output.shape)}"
    mlmodel.user_defined_metadata["com.mobileone_tf.quantize"] = quantize
    mlmodel.user_defined_metadata["com.mobileone_tf.fused"] = str(bool(fuse))
    with _staging(output) as tmp:
        staged = os.path.join(tmp, "model.mlpackage")
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            mlmodel.save(staged)
        _done(report)
        report["labels_source"] = labels_source
        if verify:
            check = check_coreml(staged, keras_model=fixed if fuse else None,
                                 class_names=labels,
                                 check_weights=quantize in ("none", "float32"))
            report.update({k: check[k] for k in ("inputs", "outputs", "ops")})
            report["verification"] = check["checks"]
            failed = [k for k, v in check["checks"].items() if v is False]
            if failed:
                raise ExportVerificationError(
                    f"Core ML spec checks failed: {failed}. Nothing was written.")
        return _finish(staged, output, None, report, report_path)


def _mil_ops(spec):
    fn = spec.mlProgram.functions["main"]
    ops = []

    def walk(block):
        for op in block.operations:
            ops.append(op)
            for b in op.blocks:
                walk(b)

    walk(fn.block_specializations[fn.opset])
    return ops


def check_coreml(path, keras_model=None, class_names=None, check_weights=True):
    """Spec-level checks of an exported ``.mlpackage`` (runs on Linux).

    Reloads the package and checks: ML program; input ``"image"`` is an RGB
    ``ImageType`` of the model's size with no scale/bias op in front of the
    normalization (ImageType scale 1, bias 0); classifier labels (when
    ``class_names``) and output names; no ``batch_norm`` op (fully fused);
    and, with ``keras_model`` and ``check_weights``, that every Conv2D /
    DepthwiseConv2D kernel of the Keras model appears as a conv weight equal
    to it at float16 precision.

    Returns:
        dict with ``checks`` (name -> bool), ``inputs``, ``outputs``, ``ops``.
    """
    ct = import_coremltools()
    from mobileone_tf import runtime
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    checks = {}
    checks["ml_program"] = spec.WhichOneof("Type") == "mlProgram"
    inp = spec.description.input[0]
    it = inp.type.imageType
    checks["input_is_rgb_image"] = (inp.name == INPUT_NAME and inp.type.WhichOneof("Type")
                                    == "imageType" and it.colorSpace == it.RGB)
    if keras_model is not None:
        checks["input_size"] = [it.height, it.width] == [int(d) for d in
                                                         keras_model.input.shape[1:3]]
    ops = _mil_ops(spec)
    op_types = dict(collections.Counter(op.type for op in ops if op.type != "const"))
    checks["no_batch_norm"] = "batch_norm" not in op_types
    # ImageType scale 1 / bias 0: the first non-const op must be the model's
    # own normalization (cast/mul by 1/(255*std)), with no extra scale/bias op.
    first = [op.type for op in ops if op.type != "const"][:3]
    checks["image_scale_1_bias_0"] = first.count("mul") <= 1 and "sub" not in first and \
        first.count("add") <= 1
    outs = [o.name for o in spec.description.output]
    if class_names is not None:
        checks["classifier_outputs"] = (spec.description.predictedFeatureName == COREML_LABEL
                                        and spec.description.predictedProbabilitiesName
                                        == COREML_PROBS)
        checks["classifier_labels"] = [str(c) for c in runtime._classifier_labels(spec)] == \
            [str(c) for c in class_names]
    if keras_model is not None and check_weights:
        checks["conv_weights_fp16_equal"] = _conv_weights_match(ct, mlmodel, keras_model)
    return {"checks": checks, "ops": op_types,
            "inputs": [{"name": inp.name, "type": "ImageType RGB",
                        "shape": [1, it.height, it.width, 3]}],
            "outputs": [{"name": n, "type": spec.description.output[i].type.WhichOneof("Type")}
                        for i, n in enumerate(outs)],
            "metadata": {"author": spec.description.metadata.author,
                         "license": spec.description.metadata.license,
                         "version": spec.description.metadata.versionString,
                         "description": spec.description.metadata.shortDescription}}


def _conv_weights_match(ct, mlmodel, keras_model):
    import keras
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        meta = ct.optimize.coreml.get_weights_metadata(mlmodel, weight_threshold=1)
    by_shape = collections.defaultdict(list)
    for m in meta.values():
        by_shape[tuple(m.val.shape)].append(np.asarray(m.val, np.float32))
    for layer in keras_model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        k = layer.get_weights()[0]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            oihw = np.transpose(k, (2, 3, 0, 1))  # (kh,kw,C,1) -> (C,1,kh,kw)
        else:
            oihw = np.transpose(k, (3, 2, 0, 1))
        want = oihw.astype(np.float16).astype(np.float32)
        if not any(np.array_equal(v, want) or
                   np.allclose(v, oihw, rtol=2 ** -10, atol=1e-7)
                   for v in by_shape.get(oihw.shape, [])):
            return False
    return True


# ---------------------------------------------------------------------------
# one entry point
# ---------------------------------------------------------------------------
EXPORTERS = {"tflite": to_tflite, "coreml": to_coreml, "onnx": to_onnx,
             "saved_model": to_saved_model}


def export(model, output, format, **kwargs):
    """Dispatches to ``to_{format}``.

    Raises:
        ExportError: unknown format.
    """
    if format not in EXPORTERS:
        raise ExportError(f"Unknown format {format!r}; expected one of {FORMATS}")
    return EXPORTERS[format](model, output, **kwargs)


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
    return "\n".join(lines)
