"""Run an exported MobileOne: a batch of images in, the model's output out.

:func:`load` opens a ``.tflite`` (LiteRT ``ai_edge_litert`` Interpreter), an
``.onnx`` (onnxruntime, CPU), a SavedModel directory (its
``serving_default`` signature) or a ``.keras`` / Keras model file, and
returns a callable ``f(images) -> outputs``:

* ``images``: float32 NHWC ``(N, H, W, 3)``, RGB 0..255 for models that
  include preprocessing (the exporter's default); any ``N`` (the callable
  splits/pads to the file's fixed batch size);
* returns float32 ``(N, classes)`` (probabilities or logits, whatever the file
  computes). Integer-quantized TFLite inputs/outputs are (de)quantized with
  the tensor's scale and zero point.

Core ML packages cannot run on Linux (``MLModel.predict`` is macOS-only);
:func:`load` runs them only on macOS.

This is the one module that runs an exported file. Also here: the TFLite
helpers every other module uses (:func:`tflite_interpreter`,
:func:`run_tflite` with input quantization / output dequantization,
:func:`quantize_input`, :func:`tflite_io`, the op census :func:`tflite_ops`
(per op with its outputs: :func:`tflite_op_list`) and
:func:`tflite_graph_report` with XNNPACK coverage), the Core ML
classifier labels (:func:`classifier_labels`) and :func:`import_coremltools`.
Nothing here imports TensorFlow at module level, nor any other
``mobileone_tf`` module.
"""

from __future__ import annotations

import os
import sys

import numpy as np


class Runner:
    """Callable wrapper: ``runner(images) -> np.ndarray`` (see module doc).

    Attributes:
        path: the file.
        kind: ``"tflite"``, ``"onnx"``, ``"saved_model"``, ``"keras"``,
            ``"coreml"``.
        batch_size: fixed batch size of the file, or ``None`` when dynamic.
        input_shape: ``(H, W, 3)``.
    """

    def __init__(self, path, kind, fn, batch_size, input_shape):
        self.path, self.kind, self._fn = str(path), kind, fn
        self.batch_size, self.input_shape = batch_size, input_shape

    def __call__(self, images):
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"Expected NHWC images (N, H, W, 3); got shape {images.shape}")
        if self.input_shape and tuple(images.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{self.path} takes images of shape {tuple(self.input_shape)}; "
                             f"got {tuple(images.shape[1:])}")
        return in_batches(self._fn, images, self.batch_size)


def in_batches(fn, images, batch_size):
    """``fn`` applied to ``images`` in chunks of a fixed ``batch_size`` (the
    last chunk padded by repeating its last image; the padding is dropped);
    ``fn(images)`` at once when ``batch_size`` is ``None``. Returns float32,
    or ``{name: float32 array}`` when ``fn`` returns a dict (a file with
    several named outputs, e.g. pyramid levels)."""
    if not batch_size:
        out = fn(images)
        return ({k: np.asarray(v, np.float32) for k, v in out.items()}
                if isinstance(out, dict) else np.asarray(out, np.float32))
    outs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
        out = fn(chunk)
        outs.append({k: np.asarray(v, np.float32)[:n] for k, v in out.items()}
                    if isinstance(out, dict) else np.asarray(out, np.float32)[:n])
    if isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)

def _kind(path):
    p = str(path).rstrip("/")
    if p.endswith(".tflite"):
        return "tflite"
    if p.endswith(".onnx"):
        return "onnx"
    if p.endswith(".mlpackage") or p.endswith(".mlmodel"):
        return "coreml"
    if p.endswith(".keras") or p.endswith(".h5"):
        return "keras"
    if os.path.isdir(p) and os.path.exists(os.path.join(p, "saved_model.pb")):
        return "saved_model"
    raise ValueError(f"Cannot tell the model format of {path!r}: expected .tflite, .onnx, "
                     ".keras, .mlpackage or a SavedModel directory (saved_model.pb).")


def load(path, num_threads=None, batch_size=None) -> Runner:
    """Loads an exported model and returns a :class:`Runner`.

    Args:
        path: ``.tflite``, ``.onnx``, SavedModel directory, ``.keras``, or
            ``.mlpackage`` (macOS only).
        num_threads: CPU threads for LiteRT / onnxruntime (default: theirs).
        batch_size: accepted for symmetry with evaluation code; files with a
            fixed batch size are always run at that size (inputs are split and
            padded), dynamic ones take any batch.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format.
        RuntimeError: a Core ML package on a platform other than macOS.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file: {path}")
    kind = _kind(path)
    if kind == "tflite":
        return _load_tflite(path, num_threads)
    if kind == "onnx":
        return _load_onnx(path, num_threads)
    if kind == "saved_model":
        return _load_saved_model(path)
    if kind == "keras":
        import keras
        model = keras.saving.load_model(path, compile=False)
        shape = tuple(model.input.shape)
        return Runner(path, kind, lambda x: model.predict(x, verbose=0, batch_size=32),
                      shape[0], shape[1:] if None not in shape[1:] else None)
    return _load_coreml(path)


def _load_tflite(path, num_threads):
    interp = tflite_interpreter(path, num_threads)
    shape = tuple(int(d) for d in interp.get_input_details()[0]["shape"])
    return Runner(path, "tflite", lambda x: _invoke(interp, x), shape[0], shape[1:])


def _load_onnx(path, num_threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = num_threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    name, out_names = inp.name, [o.name for o in sess.get_outputs()]
    shape = [d if isinstance(d, int) else None for d in inp.shape]

    def fn(x):
        outs = sess.run(out_names, {name: x})
        return outs[0] if len(outs) == 1 else dict(zip(out_names, outs))

    return Runner(path, "onnx", fn, shape[0], tuple(shape[1:]) if None not in shape[1:] else None)


def _load_saved_model(path):
    import tensorflow as tf
    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures["serving_default"]
    (in_name, spec), = sig.structured_input_signature[1].items()
    out_names = sorted(sig.structured_outputs)

    def fn(x):
        out = sig(**{in_name: tf.constant(x)})
        if len(out_names) == 1:
            return out[out_names[0]].numpy()
        return {k: out[k].numpy() for k in out_names}

    shape = tuple(spec.shape)
    return Runner(path, "saved_model", fn, shape[0],
                  shape[1:] if None not in shape[1:] else None)


def _load_coreml(path):
    if sys.platform != "darwin":
        raise RuntimeError("Core ML packages run only on macOS (MLModel.predict); on Linux "
                           "use scripts/verify_coreml.py for the spec-level checks.")
    ct = import_coremltools()
    from PIL import Image
    mlmodel = ct.models.MLModel(str(path))
    spec = mlmodel.get_spec()
    image_input = spec.description.input[0]
    h = image_input.type.imageType.height
    w = image_input.type.imageType.width
    probs = spec.description.predictedProbabilitiesName
    names = classifier_labels(spec) if probs else None

    def fn(x):
        rows = []
        for img in x:
            pil = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))
            out = mlmodel.predict({image_input.name: pil})
            if probs:
                rows.append([out[probs][n] for n in names])
            else:
                rows.append(np.asarray(out[spec.description.output[0].name]).reshape(-1))
        return np.asarray(rows, np.float32)

    return Runner(path, "coreml", fn, 1, (h, w, 3))


def classifier_labels(spec):
    """The class labels of a Core ML classifier spec (ML program: the
    ``classify`` op's ``classes`` list; neural network: ``*ClassLabels``)."""
    if spec.WhichOneof("Type") == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        for op in fn.block_specializations[fn.opset].operations:
            if op.type == "classify":
                values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                out = []
                for v in values:
                    t = v.immediateValue.tensor
                    out.append(t.strings.values[0] if t.strings.values
                               else int(t.ints.values[0] if t.ints.values
                                        else t.longInts.values[0]))
                return out
        return []
    nn = spec.neuralNetworkClassifier
    if nn.HasField("stringClassLabels"):
        return list(nn.stringClassLabels.vector)
    return list(nn.int64ClassLabels.vector)


def import_coremltools():
    """Imports coremltools safely after TensorFlow (returns the module).

    coremltools imports torch, whose ``torch._dynamo`` imports triton; triton
    segfaults when TensorFlow is already loaded in the process. Marking triton
    as absent (``sys.modules["triton"] = None``) makes torch skip it; nothing
    here uses triton.
    """
    if "triton" not in sys.modules:
        sys.modules["triton"] = None
    import logging
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    import coremltools as ct
    return ct


# ---------------------------------------------------------------------------
# TFLite / LiteRT
# ---------------------------------------------------------------------------
def tflite_interpreter(path_or_bytes, num_threads=None, delegates=True):
    """An allocated ``ai_edge_litert`` Interpreter of a ``.tflite`` path or
    flatbuffer bytes; ``delegates=False`` applies no default delegate
    (XNNPACK), so every builtin op stays visible in the graph."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw = ({"model_content": bytes(path_or_bytes)}
          if isinstance(path_or_bytes, (bytes, bytearray))
          else {"model_path": os.fspath(path_or_bytes)})
    if not delegates:
        kw["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(**kw, num_threads=num_threads)
    interp.allocate_tensors()
    return interp


def quantize_input(images, detail):
    """``images`` (float32, RGB 0..255) as the input tensor ``detail``
    (from ``get_input_details()``) takes them: unchanged for a float input,
    ``round(x / scale + zero_point)`` clipped to the integer range for an
    int8/uint8 input."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(images, dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(images, np.float32) / scale + zero),
                   info.min, info.max).astype(dtype)


def dequantize_output(values, detail):
    """Output tensor values as float32: ``(q - zero_point) * scale`` for an
    integer output tensor ``detail``, a float32 copy otherwise."""
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        scale, zero = detail["quantization"]
        return (values.astype(np.float32) - zero) * scale
    return np.array(values, np.float32)


def _invoke(interp, batch):
    """One invoke; the output array, or ``{signature output name: array}``
    for a file with several outputs."""
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], quantize_input(batch, inp))
    interp.invoke()
    details = interp.get_output_details()
    if len(details) == 1:
        return dequantize_output(interp.get_tensor(details[0]["index"]), details[0])
    by_index = {d["index"]: d for d in details}
    names = interp.get_signature_list()["serving_default"]["outputs"]
    runner_outputs = interp.get_signature_runner("serving_default").get_output_details()
    return {name: dequantize_output(interp.get_tensor(runner_outputs[name]["index"]),
                                    by_index[runner_outputs[name]["index"]])
            for name in names}


def run_tflite(interpreter_or_model, images, num_threads=None):
    """Runs a TFLite model on float32 NHWC images ``(N, H, W, 3)`` (RGB 0..255).

    Args:
        interpreter_or_model: an allocated Interpreter, a ``.tflite`` path or
            flatbuffer bytes.
        images: any ``N``; split and padded to the file's fixed batch size.
        num_threads: LiteRT threads when a path/bytes is given.

    Returns:
        float32 ``(N, ...)`` outputs; int8/uint8 inputs are quantized and
        outputs dequantized with the tensors' own scale and zero point.
    """
    interp = interpreter_or_model
    if not hasattr(interp, "invoke"):
        interp = tflite_interpreter(interp, num_threads)
    images = np.asarray(images, np.float32)
    batch = int(interp.get_input_details()[0]["shape"][0])
    return in_batches(lambda x: _invoke(interp, x), images, batch)


def tflite_io(path_or_bytes):
    """``(inputs, outputs)`` of the ``serving_default`` signature: lists of
    ``{"name", "dtype", "shape", "quantization": [scale, zero_point]}``."""
    interp = tflite_interpreter(path_or_bytes, delegates=False)
    sig = interp.get_signature_runner("serving_default")
    return tuple([{"name": name, "dtype": np.dtype(v["dtype"]).name,
                   "shape": [int(s) for s in v["shape"]],
                   "quantization": [float(v["quantization"][0]), int(v["quantization"][1])]}
                  for name, v in d.items()]
                 for d in (sig.get_input_details(), sig.get_output_details()))


def _ops_details(interp):
    # The interpreter's only op census; no public equivalent in ai_edge_litert.
    return interp._get_ops_details()  # noqa: SLF001


def _count(ops):
    counts = {}
    for op in ops:
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def tflite_ops(path_or_bytes):
    """``{builtin op name: count}`` of a .tflite (no delegate applied)."""
    return _count(_ops_details(tflite_interpreter(path_or_bytes, delegates=False)))


def tflite_op_list(path_or_bytes):
    """The ops of a .tflite in execution order (no delegate applied): a list
    of ``{"op": builtin name, "outputs": [{"name", "dtype", "shape"}]}``
    (``dtype`` a numpy name such as ``"int8"``, ``shape`` NHWC ints)."""
    interp = tflite_interpreter(path_or_bytes, delegates=False)
    tensors = interp.get_tensor_details()
    return [{"op": op["op_name"],
             "outputs": [{"name": tensors[i]["name"], "dtype": np.dtype(tensors[i]["dtype"]).name,
                          "shape": [int(s) for s in tensors[i]["shape"]]}
                         for i in op["outputs"] if i >= 0]}
            for op in _ops_details(interp)]


def tflite_graph_report(path_or_bytes, num_threads=1):
    """Op census, float ops and XNNPACK coverage of a TFLite model.

    Returns:
        dict: ``ops`` (``{op: count}``, no delegate), ``float_ops`` (sorted
        names of ops other than QUANTIZE/DEQUANTIZE with a float32 output:
        empty for a full-integer model), ``output_step`` (one quantization
        step of the output: its scale, or the scale of the tensor a final
        DEQUANTIZE reads; 0.0 for a float model), ``delegate_partitions``
        (DELEGATE nodes after the default XNNPACK delegate), ``all_delegated``
        (one partition reads the graph input and writes the graph output)
        and ``undelegated_ops`` (``{}`` when one partition covers the graph,
        else ``{"unknown": -1}``).
    """
    plain = tflite_interpreter(path_or_bytes, num_threads, delegates=False)
    ops, tensors = _ops_details(plain), plain.get_tensor_details()
    float_ops = {op["op_name"] for op in ops
                 if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
                 and any(np.dtype(tensors[i]["dtype"]) == np.float32
                         for i in op["outputs"] if i >= 0)}
    out = plain.get_output_details()[0]
    if np.issubdtype(np.dtype(out["dtype"]), np.integer):
        step = float(out["quantization"][0])
    else:
        step = next((float(tensors[op["inputs"][0]]["quantization"][0]) for op in ops
                     if op["op_name"] == "DEQUANTIZE" and out["index"] in op["outputs"]), 0.0)
    # XNNPACK keeps the replaced nodes in the list and appends DELEGATE nodes
    # that say which tensors they consume and produce.
    xnn = tflite_interpreter(path_or_bytes, num_threads)
    delegates = [d for d in _ops_details(xnn) if d["op_name"] == "DELEGATE"]
    graph_in = {d["index"] for d in xnn.get_input_details()}
    graph_out = {d["index"] for d in xnn.get_output_details()}
    whole = any(graph_in <= set(map(int, d["inputs"])) and
                graph_out <= set(map(int, d["outputs"])) for d in delegates)
    return {"ops": _count(ops), "float_ops": sorted(float_ops), "output_step": step,
            "delegate_partitions": len(delegates),
            "undelegated_ops": {} if whole else {"unknown": -1},
            "all_delegated": len(delegates) == 1 and whole}
