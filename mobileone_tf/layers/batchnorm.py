"""BatchNorm whose training-mode variance is computed in two passes.

Keras 3.15's torch backend computes the batch variance as
``E[x^2] - E[x]^2``; in float32 that cancels to a negative number when a
channel's mean is large against its spread, and BatchNorm then returns NaN
(seen fine-tuning MobileOne-S0 on the torch backend). TensorFlow
(``tf.nn.moments``) and JAX (``jnp.var``) already compute
``mean((x - mean)^2)``; there this layer is ``keras.layers.BatchNormalization``
unchanged.
"""

import keras
from keras import ops

from mobileone_tf.api_export import mobileone_export

_LOW_PRECISION = ("float16", "bfloat16")


@mobileone_export("mobileone_tf.layers")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` (same arguments, weights and
    inference) with the batch variance ``mean((x - mean)^2)`` on every backend
    (PyTorch's ``BatchNorm2d`` also computes it in two passes).

    Input/output: any shape, normalized over ``axis``; float16/bfloat16
    inputs are normalized in float32, as Keras does.
    """

    def call(self, inputs, training=None, mask=None):
        if (keras.backend.backend() != "torch" or not training or not self.trainable
                or mask is not None or self.synchronized):
            return super().call(inputs, training=training, mask=mask)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = ops.cast(inputs, "float32") if dtype in _LOW_PRECISION else inputs
        axis = self.axis % len(x.shape)
        axes = tuple(i for i in range(len(x.shape)) if i != axis)
        mean = ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
        mean, variance = ops.squeeze(mean, axes), ops.squeeze(variance, axes)
        m = self.momentum
        self.moving_mean.assign(ops.cast(self.moving_mean * m + mean * (1 - m),
                                         self.moving_mean.dtype))
        self.moving_variance.assign(ops.cast(self.moving_variance * m + variance * (1 - m),
                                             self.moving_variance.dtype))
        out = ops.batch_normalization(x, mean, variance, axis=axis, offset=self.beta,
                                      scale=self.gamma, epsilon=self.epsilon)
        return ops.cast(out, dtype)
