"""``fuse(model)``: re-parameterize every MobileOne block of a Keras model.

Public Keras API only: ``keras.models.clone_model`` with a ``clone_function``
(every other layer is re-created from its config and gets the original's
weights) and a ``call_function`` that wires each block's deploy-time standard
layers (:meth:`mobileone_tf.layers.MobileOneBlock.fused_layers`) into the new
graph in its place. Nested models that contain blocks (a backbone inside a
segmenter or detector) are fused recursively.
"""

from __future__ import annotations

import keras

from mobileone_tf import layers as mo_layers
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.models.info import all_layers


FUSERS = []
"""``(handles, fuse)`` pairs registered by optional integrations
(:mod:`mobileone_tf.hub` registers KerasHub backbones and tasks, which
``clone_model`` would rebuild as plain functional models): :func:`fuse`
hands a model for which ``handles(model)`` is true to ``fuse(model)``."""


@mobileone_export("mobileone_tf.models")
def register_fuser(handles, fuse_function):
    """Registers ``fuse_function`` for the models for which ``handles(model)``
    is true (see :data:`FUSERS`); registering the same pair twice is a no-op."""
    if (handles, fuse_function) not in FUSERS:
        FUSERS.append((handles, fuse_function))


def _has_blocks(model) -> bool:
    return any(isinstance(layer, mo_layers.MobileOneBlock) for layer in all_layers(model))


@mobileone_export("mobileone_tf", "mobileone_tf.models")
def fuse(model):
    """Returns a new model with every :class:`MobileOneBlock` re-parameterized.

    Each block becomes ``[ZeroPadding2D] -> Conv2D | DepthwiseConv2D (bias)
    [-> squeeze-excite] -> ReLU`` with the branches folded in float64 (Vasu et
    al., CVPR 2023, Sec. 3.2), named like the layers of a model built with
    ``fused=True``; every other layer is cloned with its weights. The input
    model is never modified; a model without blocks comes back as a copy. A
    model built by :func:`mobileone_tf.MobileOne` keeps its recorded
    configuration, with ``fused=True``.

    Args:
        model: a functional or ``Sequential`` ``keras.Model`` that calls
            MobileOneBlocks directly or through nested models, or a model
            a registered fuser handles (a KerasHub backbone or task holding a
            ``mobileone_tf.hub.MobileOneBackbone``: same class back).

    Returns:
        The fused ``keras.Model`` (same inputs, outputs and name). In inference
        mode its outputs equal the input model's up to float32 rounding.

    Raises:
        ValueError: ``model`` is not a functional or Sequential Keras model
            (e.g. a subclassed model).
    """
    for handles, fuse_function in FUSERS:
        if handles(model):
            return fuse_function(model)
    if not isinstance(model, keras.Model):
        raise ValueError("fuse() expects a functional keras.Model, e.g. from "
                         f"MobileOne(...); received {type(model).__name__}.")
    clones = []  # (new layer, original): weights are copied once the new graph is built
    fused_blocks = {}

    def clone_function(layer):
        if isinstance(layer, mo_layers.MobileOneBlock):
            # functional: wired as standard layers by call_function;
            # Sequential (no call_function): the block's deploy-time model
            return layer if functional else layer.fuse()
        if isinstance(layer, keras.Model) and _has_blocks(layer):
            return fuse(layer)
        new = layer.__class__.from_config(layer.get_config())
        clones.append((new, layer))
        return new

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, mo_layers.MobileOneBlock):
            if id(layer) not in fused_blocks:  # a shared block stays shared
                fused_blocks[id(layer)] = layer.fused_layers()
            return mo_layers.apply_fused(args[0], fused_blocks[id(layer)])
        return layer(*args, **kwargs)

    functional = not isinstance(model, keras.Sequential)
    kwargs = {"call_function": call_function} if functional else {}
    try:
        fused = keras.models.clone_model(model, clone_function=clone_function, **kwargs)
    except ValueError as e:
        raise ValueError(f"fuse() could not rebuild model '{model.name}' "
                         f"({type(model).__name__}): {e}") from None
    for new, source in clones:
        if source.weights:
            new.set_weights(source.get_weights())
    fused.name = model.name
    recorded = getattr(model, "mobileone_config", None)
    if recorded:
        fused.mobileone_config = {**recorded, "fused": True}
    return fused
