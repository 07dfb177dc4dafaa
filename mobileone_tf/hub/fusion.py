"""Fusing KerasHub models that hold a :class:`MobileOneBackbone`.

KerasHub backbones and tasks (``DeepLabV3Backbone``,
``DeepLabV3ImageSegmenter``, ``RetinaNetObjectDetector``,
``MobileOneImageClassifier`` ...) are functional models with their own
``__init__``: ``keras.models.clone_model`` would rebuild them as plain
``Functional`` models. The public-API way: rebuild each of them from its
config (``cls.from_config``, as ``.keras`` loading does) with the fused
backbone's config in place of the branched one, give the rebuilt backbone the
fused weights, then copy the weights of every layer outside the backbone
(same classes, same order, since the same constructor built both).
"""

from __future__ import annotations

import keras
import keras_hub

from mobileone_tf import models as mo_models
from mobileone_tf.hub.backbone import MobileOneBackbone

NESTED = ("image_encoder", "backbone")
"""Config entries through which KerasHub models hold their backbone."""


def _holds_backbone(model):
    return isinstance(model, MobileOneBackbone) or any(
        _holds_backbone(getattr(model, key, None)) for key in NESTED
        if isinstance(getattr(model, key, None), keras.Model))


def handles(model) -> bool:
    """Whether :func:`fuse_hub_model` applies: a KerasHub backbone or task
    that is or holds (through ``image_encoder``/``backbone``) a
    :class:`MobileOneBackbone`."""
    return isinstance(model, (keras_hub.models.Backbone, keras_hub.models.Task)) \
        and _holds_backbone(model)


def _copy_weights(source, target, skip_ids, where):
    """``target.layers[i].set_weights(source.layers[i].get_weights())`` for
    every layer whose weights are not all in ``skip_ids`` (the backbone's);
    nested models that share weights with the backbone are walked."""
    if len(source.layers) != len(target.layers):
        raise ValueError(f"fuse: rebuilding '{where}' gave {len(target.layers)} layers, "
                         f"the original has {len(source.layers)}")
    for s, t in zip(source.layers, target.layers):
        ids = {id(w) for w in s.weights}
        if not ids or ids <= skip_ids:
            continue
        if ids & skip_ids:
            if not isinstance(s, keras.Model):
                raise ValueError(f"fuse: layer '{s.name}' of '{where}' mixes backbone "
                                 "weights with its own")
            _copy_weights(s, t, skip_ids, f"{where}/{s.name}")
            continue
        if type(s) is not type(t):
            raise ValueError(f"fuse: layer '{s.name}' of '{where}' was rebuilt as "
                             f"{type(t).__name__}, not {type(s).__name__}")
        t.set_weights(s.get_weights())


def fuse_backbone(backbone):
    """A fused copy of a :class:`MobileOneBackbone` (branch weights folded in
    float64, :func:`mobileone_tf.models.fuse_state`); a fused backbone comes
    back as a copy with the same weights."""
    config = backbone.get_config()
    config["fused"] = True
    fused = MobileOneBackbone.from_config(config)
    mo_models.assign_state(fused, mo_models.get_state(backbone))
    return fused


def fuse_hub_model(model):
    """Returns a new model of the same KerasHub class with every MobileOne
    block fused.

    Args:
        model: a :class:`MobileOneBackbone`, or a KerasHub backbone/task that
            holds one through ``image_encoder`` or ``backbone`` (any depth:
            a segmenter holds a DeepLabV3 backbone that holds the MobileOne).

    Returns:
        A model of ``type(model)`` built from its config with the fused
        backbone; every other weight copied; the preprocessor (if any)
        rebuilt from its config. In inference mode its outputs equal the
        input model's up to float32 rounding. The input model is unchanged.

    Raises:
        ValueError: ``model`` holds no MobileOneBackbone, or its rebuild does
            not have the original's layers.
    """
    if isinstance(model, MobileOneBackbone):
        return fuse_backbone(model)
    if not handles(model):
        raise ValueError(f"fuse: {type(model).__name__} '{getattr(model, 'name', model)}' "
                         "holds no MobileOneBackbone (image_encoder / backbone)")
    config = model.get_config()
    replaced = {}
    for key in NESTED:
        nested = getattr(model, key, None)
        if key in config and isinstance(nested, keras.Model) and _holds_backbone(nested):
            replaced[key] = fuse_hub_model(nested)
            # serialized: some from_config (RetinaNetBackbone) always deserialize
            config[key] = keras.layers.serialize(replaced[key])
    fused = type(model).from_config(config)
    for key, source in replaced.items():  # the rebuilt nested models get the fused weights
        getattr(fused, key).set_weights(source.get_weights())
    skip = {id(w) for key in replaced for w in getattr(model, key).weights}
    _copy_weights(model, fused, skip, model.name)
    return fused
