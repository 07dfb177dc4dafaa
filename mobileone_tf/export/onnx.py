"""ONNX export with ``tf2onnx`` (static batch), verified with onnxruntime."""

from __future__ import annotations

import collections
import os

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import prepare
from mobileone_tf.export.common import (INPUT_NAME, ExportError, check_arguments, quiet,
                                        staging)
from mobileone_tf.export.job import check_classes, start
from mobileone_tf.export.metadata import read_labels


def check_options(output, *, quantize="none", overwrite=False, opset=17, labels=None,
                  batch_size=1, input_size=224, **_):
    """The cheap argument checks of :func:`to_onnx`; returns the output path."""
    output = check_arguments("onnx", output, quantize, overwrite, batch_size, input_size)
    if labels is not None:
        read_labels(labels)
    if int(opset) != opset or not 9 <= opset <= 18:
        raise ExportError(f"opset must be an integer in 9..18 (tf2onnx 1.17); got {opset!r}")
    return output


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
def to_onnx(model, output, *, opset=17, batch_size=1, input_size=224, fuse=True,
            overwrite=False, verify=True, verify_data=None, report_path=None,
            class_names=None, quantize="none", outputs=None, fold=True, labels=None):
    """Exports ONNX with ``tf2onnx`` (static batch; ``labels.txt`` beside it).

    Input ``"image"`` float32 NHWC ``(B, H, W, 3)`` RGB 0..255; output
    ``"probabilities"``/``"logits"``/``"features"`` float32 ``(B, C)``.

    Args:
        model: MobileOne ``keras.Model``; with ``fuse=False`` any functional
            model with one NHWC RGB image input.
        output: ``*.onnx`` path.
        opset: ONNX opset (tf2onnx 1.17 supports 9..18; default 17).
        verify: compare with the fused Keras model in onnxruntime (CPU),
            strict (``verify=False`` skips, e.g. for benchmark files).
        outputs, fold: see :func:`.prepare.prepare_model`.
        labels: a text file of class names, one per line, for
            ``labels.txt`` (replaces ``class_names``).
        others: see :func:`.tflite.to_tflite` (an existing ``labels.txt``
            beside the output needs ``overwrite``).

    Returns:
        ``(path, report)`` with ``opset``, ``ops`` (node op type counts),
        ``inputs``, ``outputs``.

    Raises:
        ExportError, ExportVerificationError.
    """
    import onnx
    output = check_options(output, quantize=quantize, overwrite=overwrite, opset=opset,
                           labels=labels, batch_size=batch_size, input_size=input_size)
    class_names = check_classes(model, output, overwrite, labels, class_names)
    job = start("onnx", model, output, quantize=quantize, fuse=fuse, batch_size=batch_size,
                input_size=input_size, names=class_names, outputs=outputs, fold=fold)
    job.report["opset"] = int(opset)
    with staging(output) as tmp:
        staged = os.path.join(tmp, "model.onnx")
        proto = onnx_proto(job.fixed, opset)
        onnx.save(proto, staged)
        job.converted(ops=dict(collections.Counter(n.op_type for n in proto.graph.node)),
                      inputs=[_value(v) for v in proto.graph.input],
                      outputs=[_value(v) for v in proto.graph.output])
        return job.finish(staged, verify=verify, verify_data=verify_data, strict=True,
                          report_path=report_path)


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
