"""Multi-scale features of a MobileOne model: the pyramid levels P1-P5 as a
Keras model with one output per level (timm's ``features_only=True``,
mmpretrain's ``out_indices``, KerasHub's ``pyramid_outputs``)."""

from __future__ import annotations

import keras

from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.models.info import find_mobileone, model_info


@mobileone_export("mobileone_tf.models")
def level_layers(model) -> dict:
    """``{level: layer}``: the layer of ``model`` (a MobileOne built by this
    package, either form) whose output is each pyramid level's feature map."""
    info = model_info(model)
    source = find_mobileone(model)
    out = {}
    for entry in variants.feature_info(info["variant"]):
        name = entry["block"] + ("_act" if info["fused"] else "")
        out[entry["level"]] = source.get_layer(name)
    return out


@mobileone_export("mobileone_tf", "mobileone_tf.models")
def feature_extractor(model, levels=None, name=None):
    """A model that returns the pyramid levels of a MobileOne as a dict.

    The new model shares its layers (and weights) with ``model``.

    Args:
        model: a model built by :func:`mobileone_tf.MobileOne` (branched or
            fused, any variant, any head), or one that nests such a model.
        levels: which levels, a subset of ``("P1", "P2", "P3", "P4", "P5")``
            (default: all five).
        name: name of the new model (default ``"{model name}_features"``).

    Returns:
        A ``keras.Model`` taking the MobileOne's input (NHWC float32 RGB
        0..255 with preprocessing inside) and returning ``{level: (batch,
        ceil(H / stride), ceil(W / stride), channels)}``; strides and channels
        as :func:`mobileone_tf.feature_info` gives them.

    Raises:
        ValueError: a level that does not exist (the message names it), or a
            model with no recorded MobileOne inside.
    """
    levels = list(variants.FEATURE_LEVELS if levels is None else levels)
    unknown = [level for level in levels if level not in variants.FEATURE_LEVELS]
    if unknown or not levels:
        raise ValueError(f"Unknown pyramid level(s) {unknown or levels}: expected a non-empty "
                         f"subset of {list(variants.FEATURE_LEVELS)}")
    layers = level_layers(model)
    source = find_mobileone(model)
    outputs = {level: layers[level].output for level in levels}
    return keras.Model(source.inputs[0], outputs, name=name or f"{source.name}_features")
