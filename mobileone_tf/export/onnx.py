"""ONNX export with ``tf2onnx`` (static batch), verified with onnxruntime."""

from __future__ import annotations

import collections
import os

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import prepare
from mobileone_tf.export.common import INPUT_NAME, quiet, staging
from mobileone_tf.export.job import check_classes, check_export, start
from mobileone_tf.export.options import export_options


def check_options(output, options):
    """The cheap argument checks of :func:`to_onnx` (:func:`.job.check_export`);
    returns the output path."""
    return check_export("onnx", output, options)


def onnx_proto(fixed, opset=17):
    """The checked ``onnx.ModelProto`` of a prepared model: input ``"image"``,
    output named by :func:`.prepare.output_name`."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    spec = [tf.TensorSpec(tuple(fixed.input.shape), tf.float32, name=INPUT_NAME)]
    with quiet():
        proto, _ = tf2onnx.convert.from_keras(fixed, input_signature=spec, opset=int(opset))
    for index, name in enumerate(prepare.output_names(fixed)):
        _rename_output(proto, name, index)
    onnx.checker.check_model(proto)
    return proto


@mobileone_export("mobileone_tf.export")
def to_onnx(model, output, options=None, *, class_names=None, **keywords):
    """Exports ONNX with ``tf2onnx`` (static batch; ``labels.txt`` beside it).

    Input ``"image"`` float32 NHWC ``(B, H, W, 3)`` RGB 0..255; output
    ``"probabilities"``/``"logits"``/``"features"`` float32 ``(B, C)``.

    Args:
        model: MobileOne ``keras.Model``; with ``fuse=False`` any functional
            model with one NHWC RGB image input.
        output: ``*.onnx`` path.
        options: an :class:`.options.ExportOptions`, ``keywords`` replacing
            its fields (as :func:`.tflite.to_tflite`): ``opset`` (tf2onnx
            1.17 supports 9..18; default 17); ``verify``: compare with the
            fused Keras model in onnxruntime (CPU), strict (``False`` skips,
            e.g. for benchmark files); ``labels``: a text file of class
            names, one per line, for ``labels.txt`` (replaces
            ``class_names``); the others as for :func:`.tflite.to_tflite`
            (an existing ``labels.txt`` beside the output needs ``overwrite``).

    Returns:
        ``(path, report)`` with ``opset``, ``ops`` (node op type counts),
        ``inputs``, ``outputs``.

    Raises:
        ExportError, ExportVerificationError; TypeError: an unknown keyword.
    """
    import onnx
    options = export_options(options, **keywords)
    output = check_options(output, options)
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names)
    job = start("onnx", model, output, options, names=class_names)
    job.report["opset"] = int(options.opset)
    with staging(output) as tmp:
        staged = os.path.join(tmp, "model.onnx")
        proto = onnx_proto(job.fixed, options.opset)
        onnx.save(proto, staged)
        job.converted(ops=dict(collections.Counter(n.op_type for n in proto.graph.node)),
                      inputs=[_value(v) for v in proto.graph.input],
                      outputs=[_value(v) for v in proto.graph.output])
        return job.finish(staged, options, strict=True)


def _rename_output(proto, name, index=0):
    old = proto.graph.output[index].name
    if old == name:
        return
    for node in proto.graph.node:
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = name
        for i, o in enumerate(node.input):
            if o == old:
                node.input[i] = name
    proto.graph.output[index].name = name


def _value(v):
    import onnx
    t = v.type.tensor_type
    return {"name": v.name,
            "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name,
            "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in t.shape.dim]}
