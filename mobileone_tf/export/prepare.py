"""The model an exporter converts: fused, rebuilt with a fixed input
``(batch_size, H, W, 3)`` named ``"image"`` (static shapes for XNNPACK, the
GPU delegate and the Neural Engine), plus what the file's outputs are called
and which class names go with them."""

from __future__ import annotations

import numpy as np

from mobileone_tf.export.common import INPUT_NAME, ExportError


def check_geometry(batch_size, input_size):
    """``(batch_size, H, W)`` as ints.

    Raises:
        ExportError: batch size not a positive integer, a non-square input
            size, or a side below 32 (five stride-2 stages).
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ExportError(f"batch_size must be a positive integer; got {batch_size!r}")
    h, w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if h != w:
        raise ExportError(f"Only square input sizes are supported; got {input_size!r}")
    if min(h, w) < 32:
        raise ExportError(f"input_size must be at least 32 (5 stride-2 stages); got {input_size!r}")
    return int(batch_size), int(h), int(w)


def prepare_model(model, fuse=True, batch_size=1, input_size=224):
    """The fused model rebuilt with a fixed input ``(batch_size, H, W, 3)``.

    Args:
        model: a MobileOne ``keras.Model`` (branched or fused); with
            ``fuse=False`` any Keras functional model with one NHWC RGB image
            input (e.g. a ``keras.applications`` baseline).
        fuse: re-parameterize a branched model (:func:`mobileone_tf.fuse`).
        batch_size: fixed batch size (>= 1).
        input_size: ``int`` (square) or ``(H, W)``; each at least 32.

    Returns:
        A new functional ``keras.Model`` whose input is named ``"image"``
        (float32), with the weights of ``model`` (fused).

    Raises:
        ExportError: invalid batch or input size, or a model whose input is
            not an RGB image (or was built for another size).
    """
    import keras
    from mobileone_tf import models

    b, h, w = check_geometry(batch_size, input_size)
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
    inp = keras.Input(batch_shape=(b, h, w, 3), name=INPUT_NAME)
    fixed = keras.models.clone_model(model, input_tensors=inp)
    fixed.set_weights(model.get_weights())
    fixed.name = model.name
    recorded = getattr(model, "mobileone_config", None)
    if recorded:  # clone_model does not carry the recorded MobileOne configuration
        fixed.mobileone_config = {**recorded, "input_shape": [h, w, 3]}
    return fixed


def output_name(model):
    """``"probabilities"``, ``"logits"`` or ``"features"`` for the model's output."""
    layer = model.layers[-1]
    if layer.name != "predictions":
        return "features"
    act = getattr(layer, "activation", None)
    return "probabilities" if getattr(act, "__name__", "") == "softmax" else "logits"


def num_classes(model):
    """Classes of a classifier's ``(batch, classes)`` output; ``None`` for features."""
    shape = tuple(model.output.shape)
    return int(shape[-1]) if len(shape) == 2 and output_name(model) != "features" else None


def class_names(model, names=None):
    """``(labels, source)`` for a classifier; ``(None, None)`` for features.

    ``names`` given: their strings (source ``"given"``); else the ImageNet
    names for a 1000-class top (:func:`mobileone_tf.models.imagenet_class_index`,
    source ``"imagenet"``), else the class indices (``"indices"``, with the
    reason when the ImageNet names could not be had).

    Raises:
        ExportError: ``names`` does not have one entry per class.
    """
    n = num_classes(model)
    if n is None:
        return None, None
    if names is not None:
        names = [str(c) for c in names]
        if len(names) != n:
            raise ExportError(f"class_names has {len(names)} entries; the model has {n} classes")
        return names, "given"
    if n == 1000:
        from mobileone_tf import models
        try:
            return [name for _, name in models.imagenet_class_index()], "imagenet"
        except (OSError, ValueError) as e:  # no class list cached and no network
            return [str(i) for i in range(n)], f"indices (ImageNet class names unavailable: {e})"
    return [str(i) for i in range(n)], "indices"


def keras_io(fixed):
    """``(inputs, outputs)`` tensor descriptions (name, dtype, shape) of the
    prepared model, as the float32 files have them."""
    return ([{"name": INPUT_NAME, "dtype": "float32", "shape": list(fixed.input.shape)}],
            [{"name": output_name(fixed), "dtype": "float32", "shape": list(fixed.output.shape)}])

