"""The fused (inference) form of a MobileOne block, in standard Keras layers.

One block becomes ``[ZeroPadding2D] -> Conv2D | DepthwiseConv2D (with bias)
[-> squeeze-excite] -> ReLU``: the plain graph that TFLite, Core ML and ONNX
run (Vasu et al., CVPR 2023, Fig. 3 right; Apple's ml-mobileone
``MobileOneBlock`` with ``inference_mode=True``). The same functions build the
layers for Keras 3 and for ``tf_keras`` (QAT with TFMOT).

Padding follows PyTorch's ``padding=k//2``: explicit symmetric
``ZeroPadding2D`` + ``valid`` for stride 2 (TensorFlow's ``same`` pads
asymmetrically there), ``same`` for stride 1, where both agree.
"""

from __future__ import annotations

from mobileone_tf import state_keys as sk
from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export

FUSED_ROLES = ("pad", "conv", "se_pool", "se_reduce", "se_expand", "se_scale", "act")
"""Layer roles of a fused block; layer ``{block name}_{role}`` for each one
the block has (``pad`` only for stride 2, ``se_*`` only with squeeze-excite)."""


def conv_padding(kernel_size: int, strides: int) -> tuple:
    """``(explicit zero padding or 0, conv padding mode)`` equal to PyTorch's
    symmetric ``padding=kernel_size // 2``."""
    if kernel_size > 1 and strides > 1:
        return kernel_size // 2, "valid"
    return 0, ("same" if kernel_size > 1 else "valid")


def fused_layers(spec, keras_module=None, dtype=None) -> dict:
    """Creates (unbuilt) the standard layers of one fused block.

    Args:
        spec: a :class:`mobileone_tf.variants.BlockSpec` (or any object with
            its attributes: ``name``, ``filters``, ``kernel_size``,
            ``strides``, ``depthwise``, ``use_se``).
        keras_module: ``keras`` (default) or ``tf_keras``.
        dtype: optional dtype policy for every layer.

    Returns:
        ``{role: layer}`` for the roles in :data:`FUSED_ROLES` the block has.
    """
    if keras_module is None:
        import keras as keras_module
    L = keras_module.layers
    kw = {} if dtype is None else {"dtype": dtype}
    name = spec.name
    pad, padding = conv_padding(spec.kernel_size, spec.strides)
    out = {}
    if pad:
        out["pad"] = L.ZeroPadding2D(pad, name=f"{name}_pad", **kw)
    if spec.depthwise:
        out["conv"] = L.DepthwiseConv2D(spec.kernel_size, strides=spec.strides,
                                        padding=padding, use_bias=True,
                                        name=f"{name}_conv", **kw)
    else:
        out["conv"] = L.Conv2D(spec.filters, spec.kernel_size, strides=spec.strides,
                               padding=padding, use_bias=True, name=f"{name}_conv", **kw)
    if spec.use_se:
        out["se_pool"] = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool", **kw)
        out["se_reduce"] = L.Conv2D(variants.se_channels(spec.filters), 1, activation="relu",
                                    name=f"{name}_se_reduce", **kw)
        out["se_expand"] = L.Conv2D(spec.filters, 1, activation="sigmoid",
                                    name=f"{name}_se_expand", **kw)
        out["se_scale"] = L.Multiply(name=f"{name}_se_scale", **kw)
    out["act"] = L.ReLU(name=f"{name}_act", **kw)
    return out


@mobileone_export("mobileone_tf.layers")
def apply_fused(x, layers: dict):
    """Wires the layers of :func:`fused_layers` on NHWC tensor ``x``:
    ``(batch, H, W, in) -> (batch, ceil(H / s), ceil(W / s), filters)``."""
    if "pad" in layers:
        x = layers["pad"](x)
    x = layers["conv"](x)
    if "se_scale" in layers:
        s = layers["se_expand"](layers["se_reduce"](layers["se_pool"](x)))
        x = layers["se_scale"]([x, s])
    return layers["act"](x)


@mobileone_export("mobileone_tf.layers")
def fused_block(x, spec, keras_module=None):
    """Applies a new fused block (:func:`fused_layers`) to ``x``."""
    return apply_fused(x, fused_layers(spec, keras_module))


@mobileone_export("mobileone_tf.layers")
def fused_block_layers(layers: dict, name: str) -> list:
    """``(state key prefix, layer)`` pairs holding the weights of the fused
    block ``name``: ``reparam`` (the conv), ``se/reduce``, ``se/expand``.

    Args:
        layers: ``{layer name: layer}`` of the model.
    """
    pairs = [(sk.REPARAM, layers[f"{name}_conv"])]
    if f"{name}_se_reduce" in layers:
        pairs += [(sk.SE_REDUCE, layers[f"{name}_se_reduce"]),
                  (sk.SE_EXPAND, layers[f"{name}_se_expand"])]
    return pairs
