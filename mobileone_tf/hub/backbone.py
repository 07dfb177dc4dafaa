"""``MobileOneBackbone``: MobileOne as a KerasHub ``FeaturePyramidBackbone``.

The backbone is built from the same graph as
``mobileone_tf.MobileOne(variant, include_top=False)`` (its layers, names and
weights layout), so :func:`mobileone_tf.models.load_weights`,
:func:`mobileone_tf.models.assign_state`, :func:`mobileone_tf.model_info` and
:func:`mobileone_tf.feature_extractor` work on it unchanged, and any KerasHub
head that takes an ``image_encoder`` with ``pyramid_outputs`` (DeepLabV3,
RetinaNet) takes it.

Fine-tuning controls (mmpretrain's ``frozen_stages`` / ``norm_eval``):
``freeze_stages=N`` freezes the stem and stages 1..N; ``norm_eval=True``
keeps every BatchNorm of the backbone in inference mode during ``fit`` (its
moving statistics never change). Keras semantics: a BatchNormalization with
``trainable=False`` runs in inference mode, so its gamma/beta are frozen too
(mmpretrain keeps training them).
"""

from __future__ import annotations

import os

import keras
import keras_hub

from mobileone_tf import models as mo_models
from mobileone_tf import layers as mo_layers
from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")
"""Layer-name prefixes of the stem and the four stages (Table 7 of the paper)."""


def stage_of(layer_name):
    """Index of the stage a backbone layer belongs to (0: stem, 1..4), or
    ``None`` (the preprocessing and input layers)."""
    for i, prefix in enumerate(STAGES):
        if layer_name == prefix or layer_name.startswith(prefix + "_"):
            return i
    return None


def batchnorm_layers(layer):
    """The BatchNormalization layers of a backbone layer: a MobileOneBlock's
    branch BatchNorms, or the layer itself."""
    if isinstance(layer, mo_layers.MobileOneBlock):
        return [bn for bn in (*layer.bn_kxk, layer.bn_scale, layer.identity) if bn is not None]
    return [layer] if isinstance(layer, keras.layers.BatchNormalization) else []


def apply_finetuning(model, freeze_stages=0, norm_eval=False):
    """Freezes the stem and the first ``freeze_stages`` stages of a MobileOne
    (``trainable=False``: no weight of theirs changes in ``fit``), and with
    ``norm_eval`` sets every BatchNorm to ``trainable=False`` (inference mode:
    moving statistics and affine parameters kept).

    Args:
        model: a MobileOne model or :class:`MobileOneBackbone` (either form;
            the fused form has no BatchNorm, so ``norm_eval`` changes nothing
            there).
        freeze_stages: 0 (nothing frozen) .. 4 (stem and all stages), or -1
            (nothing frozen; mmpretrain's default).

    Raises:
        ValueError: ``freeze_stages`` outside -1..4.
    """
    if int(freeze_stages) != freeze_stages or not -1 <= freeze_stages <= 4:
        raise ValueError("freeze_stages must be an integer in -1..4 (0: nothing frozen, "
                         f"N: stem + stages 1..N). Received: freeze_stages={freeze_stages}")
    for layer in model.layers:
        stage = stage_of(layer.name)
        if stage is None:
            continue
        if freeze_stages > 0 and stage <= freeze_stages:
            layer.trainable = False
        if norm_eval:
            for bn in batchnorm_layers(layer):
                bn.trainable = False
    return model


def check_preset_name(cls, preset):
    """Refuses a ``from_preset`` argument that is neither a local path, a
    handle (``kaggle://``, ``hf://``, ...) nor a name in ``cls.presets``
    (KerasHub's own error lists no names).

    Raises:
        ValueError: naming ``preset`` and listing ``cls.presets``.
    """
    if isinstance(preset, str) and "://" not in preset and not os.path.exists(preset) \
            and preset not in cls.presets:
        raise ValueError(f"unknown preset {preset!r} for {cls.__name__}: not a local preset "
                         "folder, not a handle (kaggle://, hf://) and not a known name; known "
                         f"names: {', '.join(sorted(cls.presets)) or 'none registered'}")


@mobileone_export("mobileone_tf.hub")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneBackbone(keras_hub.models.FeaturePyramidBackbone):
    """MobileOne (Vasu et al., CVPR 2023) as a KerasHub feature-pyramid backbone.

    Args:
        variant: ``"s0"`` .. ``"s4"``.
        fused: build the one-branch inference form (standard layers only)
            instead of the branched train-time form.
        include_preprocessing: normalize inside the model (input RGB 0..255);
            default ``False`` as in KerasHub, where the image converter
            (:class:`MobileOneImageConverter`) scales and offsets.
        image_shape: ``(height, width, 3)``; ``None`` for a free dimension.
        freeze_stages: stem + stages 1..N frozen (0 or -1: none), see
            :func:`apply_finetuning`.
        norm_eval: keep every BatchNorm in inference mode while training.
        weights: optional weights file loaded after construction (a
            ``.weights.h5`` ported or saved by this package, or a PyTorch
            checkpoint of Apple/timm/mmpretrain layout, see
            :func:`mobileone_tf.models.load_weights`); not part of the config
            (:meth:`from_config` ignores a ``"weights"`` entry: building
            from a configuration never opens a file; a preset's or
            ``.keras`` file's own weights are loaded afterwards).
        dtype: KerasHub dtype policy.

    Output: the stride-32 map ``(batch, ceil(H/32), ceil(W/32), C5)``;
    ``pyramid_outputs``: ``{"P1": stride 2, ..., "P5": stride 32}`` NHWC
    float maps with the channels of :func:`mobileone_tf.feature_info`.

    Presets by name (``MobileOneBackbone.presets``: Apple's checkpoints,
    :mod:`mobileone_tf.hub.named_presets`):
    ``MobileOneBackbone.from_preset("mobileone_s0_imagenet")``.

    Raises:
        ValueError: unknown variant, bad ``freeze_stages``, weights that do
            not fit (the model is unchanged then).
    """

    def __init__(self, variant="s0", fused=False, include_preprocessing=False,
                 image_shape=(None, None, 3), freeze_stages=0, norm_eval=False,
                 weights=None, dtype=None, **kwargs):
        image_shape = tuple(image_shape)
        # the layers take ``dtype`` (e.g. "mixed_float16"), as KerasHub's do
        policy = keras.config.dtype_policy()
        if dtype is not None:
            keras.config.set_dtype_policy(dtype)
        try:
            inner = mo_models.MobileOne(variant, include_top=False, weights=None,
                                        input_shape=image_shape, fused=fused,
                                        include_preprocessing=include_preprocessing)
        finally:
            keras.config.set_dtype_policy(policy)
        pyramid = {level: layer.output
                   for level, layer in mo_models.level_layers(inner).items()}
        super().__init__(inputs=inner.inputs[0], outputs=inner.outputs[0], dtype=dtype, **kwargs)
        self.mobileone_config = dict(inner.mobileone_config)
        self.variant = variants.get_variant(variant).name
        self.fused = bool(fused)
        self.include_preprocessing = bool(include_preprocessing)
        self.image_shape = image_shape
        self.freeze_stages = int(freeze_stages)
        self.norm_eval = bool(norm_eval)
        self.pyramid_outputs = pyramid
        apply_finetuning(self, freeze_stages, norm_eval)
        if weights is not None:
            mo_models.load_weights(self, weights)

    def get_config(self):
        config = super().get_config()
        config.update({"variant": self.variant, "fused": self.fused,
                       "include_preprocessing": self.include_preprocessing,
                       "image_shape": self.image_shape, "freeze_stages": self.freeze_stages,
                       "norm_eval": self.norm_eval})
        return config

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """KerasHub's ``from_preset``; an unknown name is refused listing
        the known ones (:func:`check_preset_name`)."""
        check_preset_name(cls, preset)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    @classmethod
    def from_config(cls, config):
        """The backbone of ``config`` (``get_config``'s keys); a ``"weights"``
        entry (a file name in a tampered preset) is ignored, never opened."""
        return super().from_config({k: v for k, v in config.items() if k != "weights"})
