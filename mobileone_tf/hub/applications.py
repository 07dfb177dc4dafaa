"""A ``keras.applications`` model as a KerasHub ``FeaturePyramidBackbone``
(the baseline encoders of the segmentation task: MobileNetV3Large beside
MobileOne-S0, same DeepLabV3 head).

Pyramid level ``Pn`` (stride ``2**n``) is the last block output (a layer
named ``*_add`` or ``*project_bn``) at that stride, and ``P5`` the model's
output: for MobileNetV3Large ``expanded_conv_add`` (16 channels),
``expanded_conv_2_add`` (24), ``expanded_conv_5_add`` (40),
``expanded_conv_11_add`` (112) and the final 960-channel map, the block ends
torchvision's and timm's MobileNetV3 feature extractors use.
"""

from __future__ import annotations

import keras
import keras_hub

from mobileone_tf.api_export import mobileone_export

BLOCK_ENDS = ("_add", "project_bn")


@mobileone_export("mobileone_tf.hub")
def pyramid_layer_names(model, size=224):
    """``{level: layer name}`` for ``P1``..``P4`` of a ``keras.applications``
    model built for ``size`` x ``size`` input (see module docstring).

    Raises:
        ValueError: a level has no block output.
    """
    names = {}
    for layer in model.layers:
        shape = layer.output.shape if hasattr(layer, "output") else ()
        if len(shape) == 4 and shape[1] and layer.name.endswith(BLOCK_ENDS):
            stride = size // shape[1]
            if stride in (2, 4, 8, 16):
                names[f"P{stride.bit_length() - 1}"] = layer.name
    missing = [f"P{i}" for i in range(1, 5) if f"P{i}" not in names]
    if missing:
        raise ValueError(f"{model.name}: no block output (layer named *{BLOCK_ENDS}) for "
                         f"pyramid level(s) {missing}")
    return names


@mobileone_export("mobileone_tf.hub")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class ApplicationBackbone(keras_hub.models.FeaturePyramidBackbone):
    """``keras.applications.<application>(include_top=False)`` with
    ``pyramid_outputs`` ``"P1".."P5"``.

    Args:
        application: a ``keras.applications`` builder name, e.g.
            ``"MobileNetV3Large"``.
        image_shape: ``(height, width, 3)``.
        weights: ``None`` or ``"imagenet"`` or a file, passed to the builder
            (``"imagenet"`` downloads into the Keras cache unless the file is
            already there); not part of the config (``.keras`` files hold the
            weights; :meth:`from_config` ignores a ``"weights"`` entry).
        builder_kwargs: other keyword arguments of the builder (e.g.
            ``{"include_preprocessing": True}``: input RGB 0..255).

    Raises:
        ValueError: an unknown application, or one without block outputs at
            strides 2..16.
    """

    def __init__(self, application="MobileNetV3Large", image_shape=(None, None, 3),
                 weights=None, builder_kwargs=None, dtype=None, **kwargs):
        builder = getattr(keras.applications, str(application), None)
        if not callable(builder):
            raise ValueError(f"unknown keras.applications model {application!r}")
        builder_kwargs = dict(builder_kwargs or {})
        probe = builder(include_top=False, weights=None, input_shape=(224, 224, 3),
                        **builder_kwargs)
        names = pyramid_layer_names(probe)
        del probe
        try:
            model = builder(include_top=False, weights=weights,
                            input_shape=tuple(image_shape), **builder_kwargs)
        except Exception as e:  # keras' get_file raises a bare Exception offline
            if weights != "imagenet" or "fetch" not in str(e).lower():
                raise
            raise OSError(f"{application} ImageNet weights could not be downloaded ({e}); on "
                          "a machine without access, put the Keras weights file named in "
                          "the URL into ~/.keras/models (or $KERAS_HOME/models)") from None
        pyramid = {level: model.get_layer(name).output for level, name in sorted(names.items())}
        pyramid["P5"] = model.outputs[0]
        super().__init__(inputs=model.inputs[0], outputs=model.outputs[0], dtype=dtype,
                         **kwargs)
        self.application = str(application)
        self.image_shape = tuple(image_shape)
        self.builder_kwargs = builder_kwargs
        self.pyramid_outputs = pyramid

    def get_config(self):
        config = super().get_config()
        config.update({"application": self.application, "image_shape": self.image_shape,
                       "builder_kwargs": dict(self.builder_kwargs)})
        return config

    @classmethod
    def from_config(cls, config):
        """The backbone of ``config``; a ``"weights"`` entry (a file name or
        ``"imagenet"`` in a tampered preset) is ignored: nothing is opened or
        downloaded while building from a configuration."""
        return super().from_config({k: v for k, v in config.items() if k != "weights"})
