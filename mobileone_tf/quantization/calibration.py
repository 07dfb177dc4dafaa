"""Activation-range calibration of a TFMOT fake-quant model before QAT, and
freezing those ranges during QAT."""

from __future__ import annotations

import contextlib

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.quantization.tfkeras import load_tfmot

_RANGE_SUFFIXES = ("_min", "_max")


def _is_range_variable(variable) -> bool:
    return variable.name.split("/")[-1].split(":")[0].endswith(_RANGE_SUFFIXES)


@mobileone_export("mobileone_tf.quantization")
def calibrate_ranges(qat_model, images, steps=10):
    """Sets the activation quantizers' ranges from data before QAT.

    TFMOT's ``MovingAverageQuantizer`` starts every activation range at
    ``[-6, 6]`` and moves it by an EMA with a fixed decay of 0.999, i.e. by
    0.1 % per training step. MobileOne's fused activations span tens to
    hundreds, so without calibration the first few hundred QAT steps clip
    them hard. This runs ``steps`` batches forward in training mode with the
    EMA decay replaced by ``k / (k + 1)`` at batch ``k`` (a running mean of
    the per-batch min/max, the quantity TFMOT's EMA estimates), and resets the
    input ``QuantizeLayer`` (an all-values min/max, also initialised at -6/6)
    so it covers exactly the observed input range (widened to include 0).
    Weights are not touched.

    Args:
        qat_model: from :func:`mobileone_tf.quantization.quantize` (modified
            in place).
        images: ``tf.data.Dataset`` of float32 ``(B, H, W, 3)`` images (or
            ``(images, labels)``), or an iterable of such arrays.
        steps: number of batches (>= 1).

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``steps < 1`` or no batch in ``images``.
    """
    import tensorflow as tf
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    if steps < 1:
        raise ValueError(f"calibration steps must be >= 1, got {steps}")
    _, tfmot = load_tfmot()
    quantizer_class = tfmot.quantization.keras.quantizers.MovingAverageQuantizer
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            for w in layer.weights:
                if _is_range_variable(w):
                    w.assign(tf.zeros_like(w))
    count = tf.Variable(0.0, trainable=False)
    original = quantizer_class.__call__

    def running_mean_call(self, inputs, training, weights, **kwargs):
        return quant_ops.MovingAvgQuantize(
            inputs, weights["min_var"], weights["max_var"],
            ema_decay=count / (count + 1.0), is_training=training,
            num_bits=self.num_bits, per_channel=self.per_axis,
            symmetric=self.symmetric, narrow_range=self.narrow_range)

    quantizer_class.__call__ = running_mean_call
    try:
        forward = tf.function(lambda x: qat_model(x, training=True))
        n = 0
        for batch in images:
            if n >= steps:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(tf.cast(x, tf.float32))
            count.assign_add(1.0)
            n += 1
    finally:
        quantizer_class.__call__ = original
    if n == 0:
        raise ValueError("calibrate_ranges: the image source yielded no batch")
    return n


@contextlib.contextmanager
def frozen_ranges():
    """Within the block, TFMOT's activation quantizers keep their ranges.

    TFMOT's ``MovingAverageQuantizer`` (activations) and ``AllValuesQuantizer``
    (the input ``QuantizeLayer``) update their ``min``/``max`` variables in
    every training step; inside this block they are called with
    ``training=False``: the fake quantization uses the stored (e.g.
    calibrated, :func:`calibrate_ranges`) range unchanged, and gradients still
    pass straight through to the weights. Weight quantizers keep tracking the
    weights. The switch is made when the graph is traced, so the whole
    ``fit`` (which traces its train function) must run inside the block.
    Jacob et al. (CVPR 2018, Sec. 3.2) freeze ranges late in training;
    here they are frozen from the start, at their calibrated values.
    """
    _, tfmot = load_tfmot()
    quantizers = tfmot.quantization.keras.quantizers
    classes = (quantizers.MovingAverageQuantizer, quantizers.AllValuesQuantizer)
    originals = {cls: cls.__call__ for cls in classes}

    def freeze(original):
        def call(self, inputs, training, weights, **kwargs):
            return original(self, inputs, False, weights, **kwargs)
        return call

    for cls, original in originals.items():
        cls.__call__ = freeze(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original
