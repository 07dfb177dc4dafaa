"""TensorFlow SavedModel export (one ``serving_default`` signature); also the
intermediate form the TFLite converter reads."""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import prepare
from mobileone_tf.export.common import INPUT_NAME, quiet, staging
from mobileone_tf.export.job import check_export, start
from mobileone_tf.export.options import export_options


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


def check_options(output, options):
    """The cheap argument checks of :func:`to_saved_model`
    (:func:`.job.check_export`); returns the output.

    Raises:
        ExportError: see :func:`to_saved_model`; a ``labels`` file (a
            SavedModel carries no class names: not silently ignored).
    """
    return check_export("saved_model", output, options)


@mobileone_export("mobileone_tf.export")
def to_saved_model(model, output, options=None, **keywords):
    """Exports a TensorFlow SavedModel (``serving_default`` signature).

    Args:
        model: MobileOne ``keras.Model`` (branched models are fused first).
        output: SavedModel directory to create.
        options: an :class:`.options.ExportOptions`, ``keywords`` replacing
            its fields (as :func:`.tflite.to_tflite`): ``batch_size``,
            ``input_size``, ``fuse``, ``outputs``, ``fold``
            (:func:`.prepare.prepare_model`); ``overwrite`` (replace an
            existing ``output``); ``verify`` (compare with the fused Keras
            model, strict, float32) on ``verify_data`` (image folder or float32
            array ``(N, H, W, 3)``; default: 8 generated images);
            ``report_path`` (also write the report as JSON there);
            ``quantize``: ``"none"`` only; ``labels`` must be ``None`` (a
            SavedModel carries no class names: a file is refused, not ignored).

    Returns:
        ``(path, report)``.

    Raises:
        ExportError, ExportVerificationError; TypeError: an unknown keyword.
    """
    options = export_options(options, **keywords)
    output = check_options(output, options)
    job = start("saved_model", model, output, options, labels=False)
    with staging(output) as tmp:
        staged = os.path.join(tmp, "saved_model")
        write_saved_model(job.fixed, staged)
        inputs, outputs = prepare.keras_io(job.fixed)
        job.converted(inputs=inputs, outputs=outputs, signature="serving_default")
        return job.finish(staged, options, strict=True)
