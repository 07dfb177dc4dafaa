"""Bias correction: the mean output shift that int8 weight rounding causes,
measured on calibration images and subtracted from each layer's bias.

Used by post-training int8 export (``mobileone_tf.export.to_tflite(...,
bias_correction=True)``, ``scripts/convert.py --bias_correction``); this
module must not import :mod:`mobileone_tf.export`.
"""

from __future__ import annotations

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.checks import fused_mobileone

INT8_MAX = 127
"""TFLite's int8 weights are symmetric, narrow range: ``[-127, 127]``."""


def int8_weights(kernel, depthwise=False, per_channel=True):
    """The int8 weights TFLite's full-integer converter makes of a kernel.

    Per output channel, symmetric, narrow range: ``scale_c = max|w_c| / 127``
    and ``q = round(w / scale_c)`` (half away from zero) in ``[-127, 127]``;
    the converter stores ``q`` (int8) and ``scale_c`` (float32) and the
    kernels compute with ``q * scale_c``. Checked against converted files
    (``tests/test_bias_correction.py``): CONV_2D, DEPTHWISE_CONV_2D (the
    stem with the input normalization folded in included) and
    FULLY_CONNECTED are all quantized per output channel this way. One
    exception: where the int32 bias would overflow at scale
    ``s_in * scale_c`` (``s_in`` the input's activation scale), the
    converter widens ``scale_c`` (the rule of TFLite's
    ``AdjustWeightsForBiasScale``: about ``|b_c| / (2**30 s_in)``). That
    happens only for channels whose weights are all but zero (in Apple's S0,
    a few dead channels with ``max|w_c| < 1e-7``), so the rounding error
    ignored there is negligible. An all-zero channel gets ``scale_c = 1``
    here (its weights stay 0).

    Args:
        kernel: float array; ``Conv2D`` ``(kh, kw, in, out)``, ``Dense``
            ``(in, out)`` (channel = last axis) or ``DepthwiseConv2D``
            ``(kh, kw, C, multiplier)`` (channel = ``(C, multiplier)``,
            TFLite's ``C * multiplier`` output channels).
        depthwise: ``kernel`` is a ``DepthwiseConv2D`` kernel.
        per_channel: ``False``: one scale for the whole kernel
            (``max|w| / 127``), as TFMOT's QAT does for ``Dense`` kernels.

    Returns:
        ``(q, scale)``: int8 array of ``kernel``'s shape and float64 scales
        broadcastable against it (``q * scale`` are the weights TFLite
        computes with, to float32 rounding of the scale).

    Raises:
        ValueError: ``depthwise`` with a kernel that is not 4-D.
    """
    w = np.asarray(kernel, np.float64)
    if depthwise and w.ndim != 4:
        raise ValueError(f"A DepthwiseConv2D kernel is (kh, kw, C, multiplier); got {w.shape}")
    axes = tuple(range(w.ndim)) if not per_channel else (
        (0, 1) if depthwise else tuple(range(w.ndim - 1)))
    scale = np.abs(w).max(axis=axes, keepdims=True) / INT8_MAX
    scale[scale == 0] = 1.0
    q = np.sign(w) * np.floor(np.abs(w) / scale + 0.5)
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scale


def _corrected_layers(layers):
    """The layers whose bias absorbs the correction: every Conv2D,
    DepthwiseConv2D and Dense with a bias."""
    import keras
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return [layer for layer in layers.values()
            if isinstance(layer, kinds) and getattr(layer, "use_bias", False)]


def _rounding_shift(layer, per_tensor=()):
    """Symbolic ``mean over space of (W_q - W) * x`` of ``layer``'s input:
    ``(B, channels)``."""
    import keras
    ops = keras.ops
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    q, scale = int8_weights(kernel, depthwise,
                            per_channel=type(layer).__name__ not in per_tensor)
    eps = (q * scale - kernel).astype(np.float32)
    x = layer.input
    if isinstance(layer, keras.layers.Dense):
        y = ops.matmul(x, eps)
    elif depthwise:
        y = ops.depthwise_conv(x, eps, strides=layer.strides, padding=layer.padding,
                               data_format=layer.data_format,
                               dilation_rate=layer.dilation_rate)
    else:
        y = ops.conv(x, eps, strides=layer.strides, padding=layer.padding,
                     data_format=layer.data_format, dilation_rate=layer.dilation_rate)
    if len(y.shape) == 2:
        return y
    spatial = (1, 2) if layer.data_format == "channels_last" else (2, 3)
    return ops.mean(y, axis=spatial)


@mobileone_export("mobileone_tf.quantization")
def correct_bias(model, images, *, batch_size=None, skip=(), return_shifts=False,
                 per_tensor=()):
    """Empirical bias correction of int8 weight rounding (fused MobileOne).

    Rounding a layer's weights to int8 (``W_q = W + eps``) shifts its
    expected pre-activation output by ``E[eps x]``, a bias the following
    ReLUs and layers do not average away. Nagel et al., "Data-Free
    Quantization Through Weight Equalization and Bias Correction" (ICCV
    2019, Sec. 4.2) subtract that expectation from the layer's bias. Here it
    is measured, not modelled: each layer's float input ``x`` (the model's
    own activations on ``images``) goes through the layer's convolution with
    kernel ``eps`` (same strides, padding, dilation; with zero padding this
    is exact, border pixels included) and the result is averaged per output
    channel over images and positions. ``W_q`` is the converter's rounding
    (:func:`int8_weights`). Every layer is corrected from float inputs
    (independently of the others); weights, activation ranges and the float
    function apart from the shift are unchanged.

    Apply it last before conversion (after
    :func:`mobileone_tf.quantization.equalize_activations`, which changes
    the weights and so the rounding).

    Args:
        model: fused Keras 3 MobileOne (:func:`mobileone_tf.fuse`), e.g. the
            export's fixed-shape model; not modified.
        images: float32 array ``(N, H, W, 3)``, RGB 0..255 at the model's
            input size (a few dozen to a few hundred calibration images;
            never the evaluation set).
        batch_size: images per forward pass (default: the model's fixed
            batch size, else 16).
        skip: names of layers left uncorrected (those the conversion keeps
            in float, e.g. ``to_tflite(float_layers=...)``).
        per_tensor: layer class names (``"DepthwiseConv2D"``, ``"Dense"``)
            whose weights the target rounds per tensor
            (``int8_weights(per_channel=False)``), e.g. the ``Dense`` layer
            of a QAT model's file
            (:data:`mobileone_tf.quantization.qat.QAT_PER_TENSOR`).
        return_shifts: also return ``{layer name: E[eps x]}`` (float64
            ``(channels,)``, the amount subtracted).

    Returns:
        A new fused Keras 3 model (``mobileone_config`` kept) whose
        Conv2D / DepthwiseConv2D / Dense biases are ``b - E[eps x]``; with
        ``return_shifts``, ``(model, shifts)``.

    Raises:
        ValueError: not a fused MobileOne
            (:func:`mobileone_tf.quantization.fused_mobileone`), no image,
            or images of another size than the model's fixed input.
    """
    import keras

    from mobileone_tf import models
    _, layers = fused_mobileone(model)
    images = np.asarray(images, np.float32)
    size = tuple(model.inputs[0].shape[1:])
    if images.ndim != 4 or not len(images) or any(
            want is not None and want != got for want, got in zip(size, images.shape[1:])):
        raise ValueError(f"bias correction needs images (N, H, W, 3) of the model's input "
                         f"size {size}; got shape {images.shape}")
    targets = [layer for layer in _corrected_layers(layers) if layer.name not in set(skip)]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    # clone_model does not carry the recorded MobileOne configuration
    clone.mobileone_config = dict(model.mobileone_config)
    shifts = {}
    if targets:
        probe = keras.Model(model.inputs, [_rounding_shift(layer, tuple(per_tensor))
                                           for layer in targets])
        b = batch_size or model.inputs[0].shape[0] or 16
        outs = probe.predict(images, batch_size=int(b), verbose=0)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        cl = {layer.name: layer for layer in models.all_layers(clone)}
        for layer, out in zip(targets, outs):
            shift = np.asarray(out, np.float64).reshape(len(images), -1).mean(axis=0)
            kernel, bias = cl[layer.name].get_weights()
            cl[layer.name].set_weights([kernel, (bias - shift.reshape(bias.shape))
                                        .astype(bias.dtype)])
            shifts[layer.name] = shift
    return (clone, shifts) if return_shifts else clone
