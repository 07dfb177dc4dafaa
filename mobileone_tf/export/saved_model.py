"""TensorFlow SavedModel export (one ``serving_default`` signature); also the
intermediate form the TFLite converter reads."""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import prepare
from mobileone_tf.export.common import INPUT_NAME, ExportError, check_arguments, quiet, staging
from mobileone_tf.export.job import start


def write_saved_model(fixed, path):
    """Writes ``fixed`` as a SavedModel with one ``serving_default``
    signature ``{"image": (B, H, W, 3) float32} -> {output_name: (B, C)}``,
    or one entry per output of a dict-output model (pyramid levels ``"P3"``
    ...: :func:`.prepare.output_names`) (``keras.export.ExportArchive``, as
    ``model.export``)."""
    import keras
    import tensorflow as tf
    archive = keras.export.ExportArchive()
    archive.track(fixed)
    names = prepare.output_names(fixed)

    def serve(image):
        out = fixed(image, training=False)
        return {name: out[name] for name in names} if isinstance(out, dict) \
            else {names[0]: out}

    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec(tuple(fixed.input.shape), tf.float32, name=INPUT_NAME)])
    with quiet():
        archive.write_out(path)


def check_options(output, *, quantize="none", overwrite=False, labels=None, batch_size=1,
                  input_size=224, **_):
    """The cheap argument checks of :func:`to_saved_model`; returns the output.

    Raises:
        ExportError: see :func:`to_saved_model`; a ``labels`` file (a
            SavedModel carries no class names: not silently ignored).
    """
    if labels is not None:
        raise ExportError(f"labels file {labels} (--labels): a SavedModel carries no class "
                          "names (--labels is for tflite, coreml and onnx)")
    return check_arguments("saved_model", output, quantize, overwrite, batch_size, input_size)


@mobileone_export("mobileone_tf.export")
def to_saved_model(model, output, *, batch_size=1, input_size=224, fuse=True,
                   overwrite=False, verify=True, verify_data=None, report_path=None,
                   quantize="none", outputs=None, fold=True, labels=None):
    """Exports a TensorFlow SavedModel (``serving_default`` signature).

    Args:
        model: MobileOne ``keras.Model`` (branched models are fused first).
        output: SavedModel directory to create.
        batch_size, input_size, fuse: see :func:`.prepare.prepare_model`.
        overwrite: replace an existing ``output``.
        verify: compare with the fused Keras model (strict, float32).
        verify_data: image folder or float32 array ``(N, H, W, 3)`` for
            verification (default: 8 generated images).
        report_path: also write the report as JSON there.
        quantize: ``"none"`` only.
        outputs, fold: see :func:`.prepare.prepare_model`.
        labels: must be ``None`` (a SavedModel carries no class names; a
            file is refused, not ignored).

    Returns:
        ``(path, report)``.

    Raises:
        ExportError, ExportVerificationError.
    """
    output = check_options(output, quantize=quantize, overwrite=overwrite, labels=labels,
                           batch_size=batch_size, input_size=input_size)
    job = start("saved_model", model, output, quantize=quantize, fuse=fuse,
                batch_size=batch_size, input_size=input_size, labels=False, outputs=outputs,
                fold=fold)
    with staging(output) as tmp:
        staged = os.path.join(tmp, "saved_model")
        write_saved_model(job.fixed, staged)
        inputs, outputs = prepare.keras_io(job.fixed)
        job.converted(inputs=inputs, outputs=outputs, signature="serving_default")
        return job.finish(staged, verify=verify, verify_data=verify_data, strict=True,
                          report_path=report_path)
