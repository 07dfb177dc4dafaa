"""Selective int8 quantization: one calibration, then any set of layers kept
in float32.

TFLite's public way to quantize only part of a graph is
``tf.lite.experimental.QuantizationDebugger`` (TFLite guide "Inspecting
Quantization Errors with Quantization Debugger", selective quantization):
built from a converter, it calibrates **once** and keeps the calibrated
model (``debugger.calibrated_model``); every later
``get_nondebug_quantized_model()`` only re-runs the MLIR quantizer on that
model with the current ``debugger.options`` (``denylisted_ops``: op types,
``denylisted_nodes``: output tensor names), in ~0.1-1 s and without reading
the representative dataset again (``tests/test_sensitivity.py`` counts the
reads). A denylisted op runs in float32 between a DEQUANTIZE and a QUANTIZE.

Layers are named by their Keras layer name (``stage3_4_conv``; the
converter writes it into the op's output tensor name, e.g.
``mobileone_s0_1/stage3_4_act_1/Relu;mobileone_s0_1/stage3_4_conv_1/convolution``),
or by that TFLite tensor name. Quantizable ops: CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED (the ones carrying weights; 44 in a fused S0).

Per-layer 16-bit activations inside an int8 model are not offered: the
converter has no mixed int8 / int16x8 mode (TFLite guide: "the quantization
debugger and selective quantization currently only work for full-integer
quantization with int8 activations"; tensorflow/tensorflow#61720: "Mixed
precision post training quantization is currently not supported in
TFLite"). Whole-model 16x8 is ``to_tflite(quantize="int16x8")``.
"""

from __future__ import annotations

import re
import warnings

from mobileone_tf.export.common import ExportError

QUANTIZABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
FLOAT_OPS = ("SOFTMAX",)  # XNNPACK has no int8 softmax (issue 13): always float


def fully_quantized(int8):
    """Whether the file's input/output are integer: ``int8`` (an
    :class:`.options.Int8Options` or ``None``) asks for int8 or uint8 I/O."""
    return int8 is not None and int8.int8_io != "float"


def calibrated_debugger(converter, dataset, int8=None):
    """A ``tf.lite.experimental.QuantizationDebugger`` built from an int8
    ``converter`` (``Optimize.DEFAULT``, ``representative_dataset`` set):
    calibrates once; its options keep SOFTMAX float (``denylisted_ops``) so
    that XNNPACK takes the whole graph (QUANTIZE or an int8 input, int8
    layers, DEQUANTIZE, float SOFTMAX, then QUANTIZE for an int8 output when
    ``int8.int8_io`` is ``"int8"``). ``dataset``: the debug dataset (a
    generator factory of input lists), read only by ``debugger.run()``;
    ``int8``: the :class:`.options.Int8Options` (``None``: float I/O)."""
    import tensorflow as tf
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(FLOAT_OPS), fully_quantize=fully_quantized(int8))
    with warnings.catch_warnings():  # it opens its debug model with tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        return tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=dataset, debug_options=options)


def requantize(debugger, int8=None, *, float_nodes=(), float_ops=FLOAT_OPS):
    """The int8 flatbuffer (bytes) of ``debugger``'s calibrated model with
    the ops writing ``float_nodes`` (TFLite tensor names) and every op of the
    types ``float_ops`` left in float32, integer I/O as ``int8`` says
    (:func:`fully_quantized`). No recalibration."""
    import tensorflow as tf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(float_ops), denylisted_nodes=list(float_nodes),
            fully_quantize=fully_quantized(int8))
    return debugger.get_nondebug_quantized_model()


def keras_layer_names(model):
    """``{name: TFLite op}`` of the Conv2D / DepthwiseConv2D / Dense layers
    of ``model`` (nested models expanded), the layers that become
    quantizable ops, in model order."""
    import keras

    from mobileone_tf import models
    kinds = ((keras.layers.DepthwiseConv2D, "DEPTHWISE_CONV_2D"),
             (keras.layers.Conv2D, "CONV_2D"), (keras.layers.Dense, "FULLY_CONNECTED"))
    return {layer.name: next(op for kind, op in kinds if isinstance(layer, kind))
            for layer in models.all_layers(model)
            if isinstance(layer, tuple(kind for kind, _ in kinds))}


def layer_name(tensor, names):
    """The Keras layer of ``names`` that a TFLite tensor name comes from (a
    path component equal to it, or to it plus the tracing suffix ``_N``);
    ``None`` when none fits."""
    parts = {c for piece in tensor.split(";") for c in piece.split("/")}
    exact = [n for n in names if n in parts]
    if exact:
        return max(exact, key=len)
    near = [n for n in names if any(re.fullmatch(re.escape(n) + r"_\d+", c) for c in parts)]
    return max(near, key=len) if near else None


def quantizable_layers(flatbuffer, names=None):
    """The CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED ops of a .tflite
    (path or bytes), in execution order: a list of ``{"name", "op",
    "tensor", "shape", "dtype"}`` with ``shape``/``dtype`` those of its
    output (NHWC) and ``name`` the Keras layer of ``names`` (a list, or
    :func:`keras_layer_names`' dict) it comes from: the one in its tensor name,
    else the one layer of its kind no other op took (a graph output tensor
    is named ``StatefulPartitionedCall:0``), else the tensor name.

    Denylisting goes by the names of the *calibrated* model
    (``debugger.calibrated_model``): the quantized file may rename an
    output (``StatefulPartitionedCall:01``)."""
    from mobileone_tf import runtime
    names = dict(names) if isinstance(names, dict) else dict.fromkeys(names or ())
    layers = [{"name": layer_name(op["outputs"][0]["name"], names), "op": op["op"],
               "tensor": op["outputs"][0]["name"], "shape": op["outputs"][0]["shape"],
               "dtype": op["outputs"][0]["dtype"]}
              for op in runtime.tflite_op_list(flatbuffer) if op["op"] in QUANTIZABLE_OPS]
    seen = [layer["name"] for layer in layers]
    for op in QUANTIZABLE_OPS:
        lost = [x for x in layers if x["op"] == op and x["name"] is None]
        free = [n for n, kind in names.items() if kind == op and n not in seen]
        if len(lost) == 1 and len(free) == 1:
            lost[0]["name"] = free[0]
    seen = [layer["name"] for layer in layers]
    for layer in layers:
        if layer["name"] is None or seen.count(layer["name"]) > 1:
            layer["name"] = layer["tensor"]
    return layers


def check_float_layers(float_layers, names=None):
    """The cheap check of ``float_layers`` (before calibration): a list of
    strings, each a Keras layer of ``names`` (when given) or a TFLite tensor
    name (holds a ``/``; checked after calibration by :func:`float_nodes`).

    Raises:
        ExportError: naming ``float_layers`` (``--float_layers``) and the value.
    """
    if isinstance(float_layers, str) or not all(isinstance(n, str) and n
                                                for n in float_layers):
        raise ExportError("float_layers (--float_layers) must be a list of layer names; "
                          f"got {float_layers!r}")
    for name in float_layers:
        if names is not None and name not in names and "/" not in name:
            raise ExportError(f"float_layers (--float_layers): unknown layer {name!r}; "
                              f"quantizable layers: {_listing(names)}")


def float_nodes(float_layers, layers):
    """TFLite output tensor names of ``float_layers`` (layer or tensor
    names) among ``layers`` (:func:`quantizable_layers`).

    Raises:
        ExportError: a name that is no quantizable layer (named).
    """
    check_float_layers(float_layers)
    by_name = {layer["name"]: layer["tensor"] for layer in layers}
    by_name.update({layer["tensor"]: layer["tensor"] for layer in layers})
    for name in float_layers:
        if name not in by_name:
            raise ExportError(f"float_layers (--float_layers): unknown layer {name!r}; "
                              f"quantizable layers: {_listing([x['name'] for x in layers])}")
    return [by_name[name] for name in float_layers]


def _listing(names, n=6):
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def int8_with_float_layers(debugger, int8, names=None):
    """``(flatbuffer, [{"name", "op", "tensor"}])``: the int8 model of
    ``debugger`` with ``int8.float_layers`` (Keras layer or tensor names; see
    :func:`float_nodes`) in float32, and those layers; ``int8``: the
    :class:`.options.Int8Options`."""
    layers = quantizable_layers(debugger.calibrated_model, names)
    nodes = float_nodes(int8.float_layers, layers)
    kept = [{k: layer[k] for k in ("name", "op", "tensor")}
            for layer in layers if layer["tensor"] in nodes]
    return requantize(debugger, int8, float_nodes=nodes), kept
