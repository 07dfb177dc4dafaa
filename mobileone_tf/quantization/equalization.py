"""Activation equalization: an exact float rescaling of a fused MobileOne that
makes int8 (per-tensor activation) quantization lose less.

Used by QAT (:func:`mobileone_tf.quantization.quantization_aware_training`)
and by post-training int8 export (``mobileone_tf.export.to_tflite``); this
module must not import :mod:`mobileone_tf.export`.
"""

from __future__ import annotations

import numpy as np

from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.checks import fused_mobileone


@mobileone_export("mobileone_tf.quantization")
def equalize_activations(model, images, *, min_scale=1e-2, pointwise_exponent=0.5):
    """Equalizes per-channel activation ranges in front of depthwise convs.

    int8 TFLite quantizes activations per tensor, but the fused MobileOne's
    activation channels differ in range by orders of magnitude (each
    channel's folded BatchNorm scale survives the fusion), so small channels
    get few quantization levels. For every block ``A`` (no squeeze-excite)
    followed by a depthwise block ``B``, ReLU's positive homogeneity
    (``relu(x / s) = relu(x) / s`` for ``s > 0``) lets output channel ``c``
    of ``A`` (kernel and bias) be divided by ``s_c`` and ``B``'s depthwise
    kernel channel ``c`` be multiplied by ``s_c`` without changing the float
    function (zero padding commutes). With ``s_c = r_c / max(r)`` (``r_c``
    the largest ReLU output of channel ``c`` over ``images``) every channel
    uses the whole int8 range, and neither layer's per-channel weight
    quantization loses anything. This is the data-aware form of cross-layer
    equalization (Nagel et al., "Data-Free Quantization Through Weight
    Equalization and Bias Correction", ICCV 2019, Sec. 4.1), restricted to
    the pairs where it is free.

    When ``B`` is a pointwise (1x1, non-depthwise) conv, its input channel
    ``c`` is multiplied by ``s_c`` too (still exact), with the milder
    ``s_c ** pointwise_exponent`` (0: leave those pairs alone).

    Args:
        model: fused Keras 3 MobileOne (``mobileone_tf.fuse``); not modified.
        images: float32 array ``(N, H, W, 3)`` RGB 0..255 (a few dozen
            in-domain images).
        min_scale: lower bound of ``s_c`` (dead or tiny channels are not
            blown up beyond ``1 / min_scale``).
        pointwise_exponent: exponent of ``s_c`` for pointwise ``B`` (>= 0).

    Returns:
        A new fused Keras 3 model with equal float outputs (to float32
        rounding) and the rescaled weights.

    Raises:
        ValueError: not a fused MobileOne.
    """
    import keras
    from mobileone_tf import models
    info, layers = fused_mobileone(model)
    specs = variants.block_specs(info["variant"])
    pairs = [(a, b) for a, b in zip(specs[:-1], specs[1:])
             if not a.use_se and b.in_channels == a.filters
             and (b.depthwise or pointwise_exponent > 0)]
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    # clone_model does not carry the recorded MobileOne configuration
    clone.mobileone_config = dict(model.mobileone_config)
    if not pairs:
        return clone
    probe = keras.Model(model.inputs, [layers[f"{a.name}_act"].output for a, _ in pairs])
    outs = probe.predict(np.asarray(images, np.float32),
                         batch_size=model.inputs[0].shape[0] or 16, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    cl = {layer.name: layer for layer in models.all_layers(clone)}
    for (a, b), act in zip(pairs, outs):
        r = act.reshape(-1, act.shape[-1]).max(axis=0).astype(np.float64)
        scale = np.ones_like(r) if r.max() <= 0 else np.clip(r / r.max(), min_scale, 1.0)
        scale[r <= 0] = 1.0
        if not b.depthwise:
            scale = scale ** pointwise_exponent
        ka, ba = cl[f"{a.name}_conv"].get_weights()
        out_scale = scale[None, None, :, None] if a.depthwise else scale
        cl[f"{a.name}_conv"].set_weights([(ka / out_scale).astype(ka.dtype),
                                          (ba / scale).astype(ba.dtype)])
        kb, bb = cl[f"{b.name}_conv"].get_weights()  # (k, k, C, 1) or (k, k, C, O)
        cl[f"{b.name}_conv"].set_weights([(kb * scale[None, None, :, None]).astype(kb.dtype),
                                          bb])
    return clone


def take_images(data, n):
    """The first ``n`` images of a dataset/iterable of batches as one array.

    Args:
        data: iterable of float ``(B, H, W, 3)`` batches, or of
            ``(images, labels)`` batches (labels ignored).
        n: number of images (the result has fewer if ``data`` runs out).

    Returns:
        float32 ``(min(n, available), H, W, 3)``.

    Raises:
        ValueError: ``data`` yields no batch.
    """
    out, count = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = np.asarray(x, np.float32)
        out.append(x)
        count += len(x)
        if count >= n:
            break
    if not out:
        raise ValueError("no images to equalize/calibrate with")
    return np.concatenate(out)[:n]
