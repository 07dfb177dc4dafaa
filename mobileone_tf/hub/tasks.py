"""KerasHub task classes for MobileOne, in KerasHub's pattern (one
``backbone_cls`` per class, as ``keras_hub/src/models/resnet``): an image
converter, a classifier preprocessor and an image classifier."""

from __future__ import annotations

import keras
import keras_hub

from mobileone_tf import models as mo_models
from mobileone_tf import state_keys as sk
from mobileone_tf.hub.backbone import MobileOneBackbone, check_preset_name
from mobileone_tf.weights.presets import EVAL_IMAGE_SIZE
from mobileone_tf.api_export import mobileone_export

SCALE = tuple(1.0 / (255.0 * s) for s in mo_models.IMAGENET_STD)
"""Converter ``scale``: RGB 0..255 -> ImageNet-normalized with ``OFFSET``."""
OFFSET = tuple(-m / s for m, s in zip(mo_models.IMAGENET_MEAN, mo_models.IMAGENET_STD))


@mobileone_export("mobileone_tf.hub")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneImageConverter(keras_hub.layers.ImageConverter):
    """Resizes RGB 0..255 images and normalizes them with ImageNet mean/std
    (``(x / 255 - mean) / std``, the ``scale``/``offset`` defaults here), as
    Apple's training and evaluation transforms do. Arguments as
    ``keras_hub.layers.ImageConverter``; ``image_size`` default ``(224, 224)``
    (the preset table's :data:`mobileone_tf.weights.presets.EVAL_IMAGE_SIZE`;
    largest centred crop of the target aspect ratio, then bilinear resize;
    Apple's evaluation resizes the short side to 256 and crops 224, i.e.
    ``crop_pct`` 0.875, which KerasHub's converter does not do)."""

    backbone_cls = MobileOneBackbone

    def __init__(self, image_size=(EVAL_IMAGE_SIZE, EVAL_IMAGE_SIZE), scale=SCALE, offset=OFFSET,
                 **kwargs):
        super().__init__(image_size=image_size, scale=scale, offset=offset, **kwargs)


@mobileone_export("mobileone_tf.hub")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """``ImageClassifierPreprocessor`` with a :class:`MobileOneImageConverter`."""

    backbone_cls = MobileOneBackbone
    image_converter_cls = MobileOneImageConverter


@mobileone_export("mobileone_tf.hub")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneImageClassifier(keras_hub.models.ImageClassifier):
    """MobileOne image classifier: ``MobileOneBackbone`` -> global average
    pool -> dropout -> dense ``"predictions"`` (Apple's head:
    ``avg_pool -> linear``), arguments as ``keras_hub.models.ImageClassifier``.
    The dense layer takes this package's ``head/kernel``, ``head/bias`` state
    (:func:`mobileone_tf.hub.load_classifier_weights`). By name:
    ``MobileOneImageClassifier.from_preset("mobileone_s0_imagenet")``
    (Apple's ImageNet weights, :mod:`mobileone_tf.hub.named_presets`)."""

    backbone_cls = MobileOneBackbone
    preprocessor_cls = MobileOneImageClassifierPreprocessor

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """KerasHub's ``from_preset``; an unknown name is refused listing
        the known ones (:func:`mobileone_tf.hub.backbone.check_preset_name`)."""
        check_preset_name(cls, preset)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


@mobileone_export("mobileone_tf.hub")
def load_classifier_weights(classifier, path):
    """Loads a MobileOne checkpoint (``.weights.h5`` or PyTorch, either form,
    see :func:`mobileone_tf.models.read_state`) into a
    :class:`MobileOneImageClassifier`: the backbone, and the ``head/*``
    entries into its ``predictions`` layer.

    Raises:
        ValueError: the file does not fit (names the keys or shapes); nothing
            is assigned then.
    """
    state, what = mo_models.read_state(path)
    if state is None:
        raise ValueError(f"{path}: not a MobileOne weights file (plain Keras weights load "
                         "with classifier.load_weights)")
    head = [state.get(sk.HEAD_KERNEL), state.get(sk.HEAD_BIAS)]
    dense = classifier.output_dense
    if head[0] is None or head[1] is None:
        raise ValueError(f"{path} holds {what} weights without a classifier "
                         f"({sk.HEAD_KERNEL}, {sk.HEAD_BIAS})")
    expected = [tuple(w.shape) for w in dense.weights]
    if [tuple(h.shape) for h in head] != expected:
        raise ValueError(f"{path}: classifier {sk.HEAD_KERNEL}, {sk.HEAD_BIAS} have shapes "
                         f"{[tuple(h.shape) for h in head]}, the model's 'predictions' layer "
                         f"{expected}")
    mo_models.assign_state(classifier.backbone, state)
    dense.set_weights(head)
    return classifier
