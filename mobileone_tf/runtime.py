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
        b = self.batch_size
        if not b:
            return np.asarray(self._fn(images), np.float32)
        outs = []
        for start in range(0, len(images), b):
            chunk = images[start:start + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, 0)])
            outs.append(np.asarray(self._fn(chunk), np.float32)[:n])
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
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(path), num_threads=num_threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]

    def fn(x):
        q_scale, q_zero = inp["quantization"]
        if np.issubdtype(inp["dtype"], np.integer):
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / q_scale + q_zero), info.min, info.max)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if np.issubdtype(out["dtype"], np.integer):
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.copy()

    shape = tuple(int(d) for d in inp["shape"])
    return Runner(path, "tflite", fn, shape[0], shape[1:])


def _load_onnx(path, num_threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = num_threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    name, out_name = inp.name, sess.get_outputs()[0].name
    shape = [d if isinstance(d, int) else None for d in inp.shape]

    def fn(x):
        return sess.run([out_name], {name: x})[0]

    return Runner(path, "onnx", fn, shape[0], tuple(shape[1:]) if None not in shape[1:] else None)


def _load_saved_model(path):
    import tensorflow as tf
    loaded = tf.saved_model.load(str(path))
    sig = loaded.signatures["serving_default"]
    (in_name, spec), = sig.structured_input_signature[1].items()
    out_name = sorted(sig.structured_outputs)[0]

    def fn(x):
        return sig(**{in_name: tf.constant(x)})[out_name].numpy()

    shape = tuple(spec.shape)
    return Runner(path, "saved_model", fn, shape[0],
                  shape[1:] if None not in shape[1:] else None)


def _load_coreml(path):
    if sys.platform != "darwin":
        raise RuntimeError("Core ML packages run only on macOS (MLModel.predict); on Linux "
                           "use scripts/verify_coreml.py for the spec-level checks.")
    from mobileone_tf.export import import_coremltools
    ct = import_coremltools()
    from PIL import Image
    mlmodel = ct.models.MLModel(str(path))
    spec = mlmodel.get_spec()
    image_input = spec.description.input[0]
    h = image_input.type.imageType.height
    w = image_input.type.imageType.width
    probs = spec.description.predictedProbabilitiesName
    names = _classifier_labels(spec) if probs else None

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


def _classifier_labels(spec):
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
