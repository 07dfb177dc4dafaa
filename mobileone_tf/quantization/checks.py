"""Which Keras 3 models the quantization code accepts: a fused MobileOne."""

from __future__ import annotations


def fused_mobileone(model):
    """The recorded configuration and the layers of a fused Keras 3 MobileOne.

    The configuration is the one the package's builders record in the model
    (:func:`mobileone_tf.models.model_info`); nothing is guessed from shapes.

    Args:
        model: a ``keras.Model`` built by :func:`mobileone_tf.MobileOne` and
            re-parameterized with :func:`mobileone_tf.fuse`.

    Returns:
        ``(info, layers)``: the ``model_info`` dict (``variant``,
        ``include_top``, ``include_preprocessing``, ...) and
        ``{layer name: layer}`` over all layers.

    Raises:
        ValueError: not a ``keras.Model``, not a MobileOne ("Not a fused
            MobileOne model"), branched (call :func:`mobileone_tf.fuse`), or a
            larger model the MobileOne is nested in (the rebuilt graphs would
            drop the other layers).
    """
    import keras
    from mobileone_tf import models
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a Keras 3 keras.Model, got {type(model).__name__}.")
    try:
        info = models.model_info(model)
    except ValueError as e:
        raise ValueError(f"Not a fused MobileOne model ({e}). Build it with "
                         "mobileone_tf.MobileOne(...) and mobileone_tf.fuse().") from e
    if not info["fused"]:
        raise ValueError("Quantization (QAT, equalization, bias correction) works on the fused "
                         "(deployed) graph: call mobileone_tf.fuse(model) first (the model "
                         "is branched).")
    if info["nested"]:
        raise ValueError(f"Model '{model.name}' holds the MobileOne as a nested layer: "
                         "quantize the MobileOne model itself "
                         "(mobileone_tf.models.find_mobileone(model)).")
    return info, {layer.name: layer for layer in models.all_layers(model)}
