"""Keras 3 fused MobileOne -> ``tf_keras`` model -> TFMOT fake-quant model.

TFMOT works only with ``tf_keras``, and ``import tensorflow_model_optimization``
sets ``os.environ["TF_USE_LEGACY_KERAS"] = "1"`` for the whole process:
:func:`load_tfmot` is the one place that imports it, and restores the
variable so Keras 3 keeps working in the same process.
"""

from __future__ import annotations

import os

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.checks import fused_mobileone

PREPROCESSING = "preprocessing"
"""Name of the builders' ``Rescaling`` input normalization layer."""

SE_SCALE_SUFFIX = "_se_scale"
"""Suffix of the squeeze-excite ``Multiply`` layers (unknown to TFMOT's registry)."""


QAT_EXTRA = "qat"
"""The extra that installs TFMOT and tf_keras (``pip install 'mobileone_tf[qat]'``)."""


@mobileone_export("mobileone_tf.quantization")
class MissingExtraError(ValueError):
    """An optional dependency is not installed; the message names the extra."""


@mobileone_export("mobileone_tf.quantization")
def check_qat_dependencies():
    """Raises :class:`MissingExtraError` (one line naming the ``qat`` extra)
    when TFMOT or ``tf_keras`` is not installed; imports neither."""
    import importlib.util
    missing = [m for m in ("tensorflow_model_optimization", "tf_keras")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"quantization-aware training needs {' and '.join(missing)} (not installed): "
            f"pip install 'mobileone_tf[{QAT_EXTRA}]' (TFMOT caps absl-py below 2)")


@mobileone_export("mobileone_tf.quantization")
def load_tfmot():
    """Imports ``tf_keras`` and TFMOT, restoring ``TF_USE_LEGACY_KERAS``.

    Returns:
        ``(tf_keras, tfmot)`` modules.

    Raises:
        MissingExtraError: TFMOT or tf_keras is not installed (the ``qat`` extra).
    """
    check_qat_dependencies()
    had, old = "TF_USE_LEGACY_KERAS" in os.environ, os.environ.get("TF_USE_LEGACY_KERAS")
    try:
        import tf_keras
        import tensorflow_model_optimization as tfmot
    finally:
        if had:
            os.environ["TF_USE_LEGACY_KERAS"] = old
        else:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
    return tf_keras, tfmot


@mobileone_export("mobileone_tf.quantization")
def to_tf_keras(model, input_size=None):
    """Rebuilds a fused Keras 3 MobileOne as a ``tf_keras`` model with its weights.

    The graph is :func:`mobileone_tf.models.build_backbone` (``fused=True``)
    + ``avg_pool`` + ``predictions`` (no activation: logits), with the same
    layer names; weights are copied by layer name (``get_weights`` order is
    the same in both Keras versions, including ``DepthwiseConv2D`` whose
    weight is ``kernel`` in Keras 3 and ``depthwise_kernel`` in tf_keras).

    Args:
        model: fused Keras 3 MobileOne with a classifier (``include_top``).
        input_size: fixed square input size (pixels); default the model's
            own (``None`` dimensions are kept).

    Returns:
        ``(tf_keras_model, variant)``: ``(batch, H, W, 3)`` float32 ->
        ``(batch, classes)`` logits, and ``"s0"``..``"s4"``.

    Raises:
        ValueError: not a fused MobileOne (see
            :func:`mobileone_tf.quantization.fused_mobileone`), or no
            classifier.
    """
    from mobileone_tf import models
    info, layers = fused_mobileone(model)
    variant = info["variant"]
    if not info["include_top"] or models.HEAD_NAME not in layers:
        raise ValueError(f"QAT by distillation needs the classifier ('{models.HEAD_NAME}' "
                         "layer): build the model with include_top=True.")
    tf_keras, _ = load_tfmot()
    shape = tuple(model.input_shape[1:])
    if input_size is not None:
        shape = (int(input_size), int(input_size), shape[-1])
    inp = tf_keras.layers.Input(shape=shape, name="input")
    x = inp
    if PREPROCESSING in layers:
        x = _normalization_layer(tf_keras, layers[PREPROCESSING])(x)
    x = models.build_backbone(x, variant, tf_keras, fused=True,
                              include_preprocessing=False)
    x = models.build_head(x, tf_keras, True, None, layers[models.HEAD_NAME].units, None)
    out = tf_keras.Model(inp, x, name=f"{model.name}_tf_keras")
    for layer in out.layers:
        if not layer.weights or layer.name == PREPROCESSING:
            continue
        if layer.name not in layers:
            raise ValueError(f"Layer '{layer.name}' missing from the Keras 3 model.")
        src = layers[layer.name].get_weights()
        dst = layer.get_weights()
        if [w.shape for w in src] != [w.shape for w in dst]:
            raise ValueError(f"Layer '{layer.name}': weight shapes "
                             f"{[w.shape for w in src]} != {[w.shape for w in dst]}")
        layer.set_weights(src)
    return out, variant


def _normalization_layer(tf_keras, rescaling):
    """The ``Rescaling`` normalization as a 1x1 ``DepthwiseConv2D`` (same name).

    ``y = x * scale + offset`` per channel; TFMOT quantizes a depthwise conv
    natively (int8 weights per channel, int32 bias), so the int8 model takes
    raw 0..255 pixels and normalizes in integer arithmetic.
    """
    cfg = rescaling.get_config()
    scale = np.broadcast_to(np.asarray(cfg["scale"], np.float32), (3,))
    offset = np.broadcast_to(np.asarray(cfg["offset"], np.float32), (3,))
    layer = tf_keras.layers.DepthwiseConv2D(1, use_bias=True, name=PREPROCESSING)
    layer.build((None, None, None, 3))
    layer.set_weights([scale.reshape(1, 1, 3, 1).copy(), offset.copy()])
    layer.trainable = False
    return layer


def _output_quantize_config(tfmot):
    """A ``QuantizeConfig`` class that quantizes only a layer's output.

    Same scheme as TFMOT's default 8-bit output config: one per-tensor
    asymmetric 8-bit ``MovingAverageQuantizer`` (moving-average min/max), no
    weight or activation quantizer.
    """
    qk = tfmot.quantization.keras

    class OutputQuantizeConfig(qk.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [qk.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputQuantizeConfig


@mobileone_export("mobileone_tf.quantization")
def quantize(tf_keras_model):
    """Wraps a fused ``tf_keras`` MobileOne for QAT (fake-quant, 8-bit default scheme).

    Conv/Dense weights get TFMOT's default int8 scheme (per-channel symmetric
    for convolutions); the SE ``Multiply`` (``*_se_scale``) gets an
    output-only 8-bit quantizer (moving-average min/max) since TFMOT's
    registry does not know it. The input normalization (a 1x1 depthwise conv,
    see :func:`to_tf_keras`) is quantized natively, so the int8 model takes
    0..255 pixels.

    Args:
        tf_keras_model: from :func:`to_tf_keras` (not modified).

    Returns:
        The quantized ``tf_keras.Model`` (same inputs/outputs).
    """
    tf_keras, tfmot = load_tfmot()
    qk = tfmot.quantization.keras
    output_config = _output_quantize_config(tfmot)

    def annotate(layer):
        if layer.name.endswith(SE_SCALE_SUFFIX):
            return qk.quantize_annotate_layer(layer, quantize_config=output_config())
        return qk.quantize_annotate_layer(layer) if not isinstance(
            layer, tf_keras.layers.InputLayer) else layer

    annotated = tf_keras.models.clone_model(tf_keras_model, clone_function=annotate)
    annotated.set_weights(tf_keras_model.get_weights())
    with qk.quantize_scope({output_config.__name__: output_config}):
        return qk.quantize_apply(annotated)
