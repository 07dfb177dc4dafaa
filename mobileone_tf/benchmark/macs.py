"""Multiply-accumulates (MACs) counted from a built Keras 3 graph.

Convention: convolutions (incl. grouped and depthwise) and dense layers only,
``H_out * W_out * C_out * k_h * k_w * C_in / groups`` per image (batch
dimension ignored). BatchNorm, activations, pooling, padding, additions and
the squeeze-excite scaling multiply are elementwise and not counted in the
total (they are reported separately as ``elementwise``). With this convention
keras.applications MobileNetV2 counts 300.8 M MACs (Keras docs: 300 M) and
the fused MobileOne-S0 275 M (paper Table 7: 275 M).

Keras and the model code are imported inside the functions.
"""

from __future__ import annotations

import math

from mobileone_tf.api_export import mobileone_export


def _static_shape(tensor) -> tuple:
    s = tuple(tensor.shape)
    if any(d is None for d in s[1:]):
        raise ValueError(f"Layer needs static shapes to count MACs, got {s}; "
                         "build the model with a fixed input_shape.")
    return s


def _block_macs(layer, out: dict):
    """Adds a branched or fused MobileOneBlock: every conv branch, the 1x1
    scale branch, and the SE convs (BN and the identity branch are
    elementwise)."""
    o = _static_shape(layer.output)
    h, w = o[1], o[2]
    cin, cout, k = layer.in_channels, layer.filters, layer.kernel_size
    per = cin if layer.depthwise else cin * cout
    macs = h * w * per * k * k * layer.num_conv_branches
    if layer.conv_scale is not None:
        macs += h * w * per
    out["depthwise" if layer.depthwise else "conv"] += macs
    if layer.use_se:
        out["conv"] += 2 * cout * layer.se_reduce.filters
        out["elementwise"] += h * w * cout


@mobileone_export("mobileone_tf.benchmark")
def count_macs_detail(model) -> dict:
    """MACs of a built functional Keras 3 model with static spatial shapes.

    Counts ``Conv2D`` (incl. ``groups``), ``DepthwiseConv2D``, ``Dense`` and
    :class:`mobileone_tf.layers.MobileOneBlock` (every branch conv), nested
    models included, per image.

    Returns:
        dict ``{"conv": int, "depthwise": int, "dense": int, "total": int,
        "elementwise": int}``; ``total`` = conv + depthwise + dense (the
        convention of the module docstring); ``elementwise`` counts the
        squeeze-excite / ``Multiply`` products, not included in ``total``.

    Raises:
        ValueError: a counted layer has an unknown spatial size.
    """
    import keras
    from mobileone_tf.layers import MobileOneBlock
    from mobileone_tf.models import all_layers
    out = {"conv": 0, "depthwise": 0, "dense": 0, "elementwise": 0}
    for layer in all_layers(model):
        if isinstance(layer, MobileOneBlock):
            _block_macs(layer, out)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = _static_shape(layer.output)
            kh, kw = layer.kernel_size
            out["depthwise"] += h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, cout = _static_shape(layer.output)
            kh, kw, cin_per_group, _ = layer.kernel.shape
            out["conv"] += int(h) * int(w) * int(cout) * int(kh) * int(kw) * int(cin_per_group)
        elif isinstance(layer, keras.layers.Dense):
            o = _static_shape(layer.output)
            lead = math.prod(o[1:-1]) if len(o) > 2 else 1
            out["dense"] += lead * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        elif isinstance(layer, keras.layers.Multiply):
            out["elementwise"] += math.prod(_static_shape(layer.output)[1:])
    out["total"] = out["conv"] + out["depthwise"] + out["dense"]
    return out


@mobileone_export("mobileone_tf.benchmark")
def count_macs(model) -> int:
    """Total MACs per image (see :func:`count_macs_detail`)."""
    return count_macs_detail(model)["total"]
