"""What a model is: the recorded MobileOne configuration of a model (also
when the MobileOne is nested inside a larger model), and a flat walk over all
its layers."""

from __future__ import annotations

import keras

from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export

INFO_KEYS = ("variant", "fused", "include_top", "pooling", "classes",
             "classifier_activation", "include_preprocessing", "input_shape")


@mobileone_export("mobileone_tf.models")
def all_layers(model):
    """Every non-model layer of ``model``, depth first, nested models
    expanded (a nested model's own layers replace it)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer


@mobileone_export("mobileone_tf.models")
def find_mobileone(model):
    """The :class:`MobileOneModel` that is ``model`` or is nested in it
    (depth first), or ``None``."""
    if getattr(model, "mobileone_config", None):
        return model
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, keras.Model):
            found = find_mobileone(layer)
            if found is not None:
                return found
    return None


@mobileone_export("mobileone_tf", "mobileone_tf.models")
def model_info(model) -> dict:
    """The recorded MobileOne configuration of ``model``.

    Args:
        model: a model built by :func:`mobileone_tf.MobileOne` (or by
            :func:`mobileone_tf.fuse` from one, or loaded from ``.keras``), or
            a model that holds one as a nested layer.

    Returns:
        dict with ``variant`` (``"s0"``..``"s4"``), ``fused`` (bool), ``form``
        (``"fused"`` or ``"branched"``), ``include_top``, ``pooling``,
        ``classes`` (``None`` without a top), ``classifier_activation``,
        ``include_preprocessing``, ``input_shape`` (``[H, W, C]``, ``None``
        for a free dimension) and ``nested`` (whether the MobileOne is a layer
        of a larger model).

    Raises:
        ValueError: ``model`` is not, and does not contain, a model built by
            this package (e.g. a bare graph of MobileOneBlocks).
    """
    found = find_mobileone(model)
    if found is None:
        raise ValueError(
            f"Model '{getattr(model, 'name', model)}' has no recorded MobileOne "
            "configuration: build it with mobileone_tf.MobileOne(...) (or fuse/load one "
            "that was), or nest such a model inside yours.")
    config = found.mobileone_config
    missing = [k for k in INFO_KEYS if k not in config]
    if missing:
        raise ValueError(f"Model '{found.name}': recorded MobileOne configuration lacks "
                         f"{missing}")
    info = {k: config[k] for k in INFO_KEYS}
    info["variant"] = variants.get_variant(info["variant"]).name
    info["form"] = "fused" if info["fused"] else "branched"
    info["nested"] = found is not model
    return info
