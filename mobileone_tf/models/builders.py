"""``keras.applications``-style MobileOne builders.

Architecture: Apple's ml-mobileone ``MobileOne`` (Vasu et al., CVPR 2023,
Table 7; the table is :mod:`mobileone_tf.variants`). The branched
(train-time) model is built from :class:`mobileone_tf.layers.MobileOneBlock`,
the fused (inference) model from standard Keras layers only
(:func:`mobileone_tf.layers.fused_block`), from the same table, with the same
layer names. Every model is a :class:`MobileOneModel`: a functional model that
records its variant, form and head options in its config (and in ``.keras``
files), so nothing downstream guesses them from kernel shapes.
"""

from __future__ import annotations

import os

import keras

from mobileone_tf import layers as mo_layers
from mobileone_tf import state_keys, variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.models.state import load_weights
from mobileone_tf.weights import presets

mobileone_export("mobileone_tf.models")("IMAGENET_MEAN")
IMAGENET_MEAN = presets.IMAGENET_MEAN
mobileone_export("mobileone_tf.models")("IMAGENET_STD")
IMAGENET_STD = presets.IMAGENET_STD
mobileone_export("mobileone_tf.models")("HEAD_NAME")
HEAD_NAME = state_keys.HEAD_LAYER


def _validate(variant, include_top, weights, input_shape, pooling, classes,
              classifier_activation):
    v = variants.get_variant(variant)
    if not (weights in {"imagenet", None} or isinstance(weights, (str, bytes))
            or hasattr(weights, "__fspath__")):
        raise ValueError(
            "The `weights` argument should be either `None` (random "
            "initialization), `imagenet` (pre-training on ImageNet), or the "
            f"path to the weights file to be loaded. Received: weights={weights}")
    if weights not in {"imagenet", None}:
        if not os.path.exists(weights):
            raise ValueError(
                "The `weights` argument should be either `None` (random "
                "initialization), `imagenet` (pre-training on ImageNet), or the "
                f"path to the weights file to be loaded. Received: weights={weights} "
                "(no such file)")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            'If using `weights="imagenet"` with `include_top=True`, `classes` '
            f"should be 1000. Received: classes={classes}")
    if include_top and (int(classes) != classes or classes < 1):
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes}")
    if pooling not in (None, "avg", "max"):
        raise ValueError("`pooling` must be one of None, 'avg', 'max'. "
                         f"Received: pooling={pooling}")
    if weights is not None and include_top and classifier_activation not in {None, "softmax"} \
            and not callable(classifier_activation):
        keras.activations.get(classifier_activation)  # raises for unknown names
    if weights is not None and include_top and classifier_activation not in {None, "softmax"}:
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the "
            "`classifier_activation` argument when using pretrained weights, "
            f"with `include_top=True`. Received: {classifier_activation}")
    if input_shape is not None:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError("`input_shape` must be (height, width, channels). "
                             f"Received: input_shape={input_shape}")
        if weights is not None and input_shape[-1] != 3:
            raise ValueError("The input must have 3 channels (RGB) with pretrained "
                             f"weights. Received: input_shape={input_shape}")
        for dim in input_shape[:2]:
            if dim is not None and dim < 32:
                raise ValueError("Input size must be at least 32x32 (5 stride-2 "
                                 f"stages). Received: input_shape={input_shape}")
    return v, input_shape


BASE_DOCSTRING = """Instantiates {name} (Vasu et al., "MobileOne: An Improved One
    millisecond Mobile Backbone", CVPR 2023; Apple's ImageNet-1k top-1: {top1} %).

    Same signature and checks as ``keras.applications`` models, plus
    ``fused``. Architecture and weights layout follow Apple's ml-mobileone
    reference. The model records its variant, form and head options in its
    config (:func:`mobileone_tf.models.model_info`).

    Args:{variant_arg}
        include_top: whether to include the global-average-pool + dense
            classifier ("predictions").
        weights: ``None`` (random initialization), ``"imagenet"`` (Apple's
            released ImageNet-1k weights, see :mod:`mobileone_tf.weights`), or
            the path to a ``.weights.h5`` (ported or saved by Keras) or a
            PyTorch checkpoint (Apple, timm or mmpretrain layout).
        input_tensor: optional Keras tensor to use as image input.
        input_shape: ``(height, width, 3)``, default ``(None, None, 3)``;
            height/width at least 32.
        pooling: with ``include_top=False``: ``None`` (4D NHWC feature map
            output, stride 32), ``"avg"`` or ``"max"`` (2D output).
        classes: number of classes with ``include_top=True``; must be 1000
            with ``weights="imagenet"``.
        classifier_activation: activation of the top layer (``None`` returns
            logits); ``None`` or ``"softmax"`` with pretrained weights.
        include_preprocessing: if ``True`` the model takes RGB float32 0..255
            and normalizes inside (ImageNet mean/std on 0..1); if ``False`` it
            takes already normalized input (see :func:`preprocess_input`).
        fused: build the one-branch inference form directly (standard layers
            only) instead of the branched train-time form.
        name: model name, default ``"{default_name}"``.

    Returns:
        A :class:`MobileOneModel` (a functional ``keras.Model``): input NHWC
        float32 ``(batch, H, W, 3)``; output ``(batch, classes)``
        probabilities or logits, or features.

    Raises:
        ValueError: for invalid arguments (unknown variant, weights,
            ``classes`` != 1000 with ImageNet weights and a top, pooling,
            activation, input shape), or weights that do not fit the model.
        FileNotFoundError: ``weights="imagenet"`` offline with nothing cached
            (the message names the file to download and where to put it).
    """


@mobileone_export("mobileone_tf.models")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneModel(keras.Model):
    """A functional MobileOne model that records how it was built.

    ``mobileone_config`` holds ``variant``, ``fused``, ``include_top``,
    ``pooling``, ``classes``, ``classifier_activation``,
    ``include_preprocessing`` and ``input_shape``; it is part of
    ``get_config()`` (key ``"mobileone"``), so ``.keras`` files keep it.
    Build it with :func:`MobileOne`; the constructor is the functional one.
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        self.mobileone_config = dict(kwargs.pop("mobileone", None) or {})
        super().__init__(inputs, outputs, name=name, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["mobileone"] = dict(self.mobileone_config)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        recorded = config.pop("mobileone", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.mobileone_config = dict(recorded or {})
        return model


def _activation_name(activation):
    if activation is None or isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", str(activation))


@mobileone_export("mobileone_tf", "mobileone_tf.models")
def MobileOne(variant="s0", include_top=True, weights="imagenet", input_tensor=None,
              input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", include_preprocessing=True,
              fused=False, name=None):
    v, input_shape = _validate(variant, include_top, weights, input_shape, pooling,
                               classes, classifier_activation)
    if input_shape is None:
        input_shape = (None, None, 3)
    if input_tensor is None:
        img_input = keras.layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = keras.layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor
    x = build_backbone(img_input, v, keras, fused=fused,
                       include_preprocessing=include_preprocessing)
    x = build_head(x, keras, include_top, pooling, classes, classifier_activation)
    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None \
        else img_input
    config = {"variant": v.name, "fused": bool(fused), "include_top": bool(include_top),
              "pooling": None if include_top else pooling,
              "classes": int(classes) if include_top else None,
              "classifier_activation": _activation_name(classifier_activation)
              if include_top else None,
              "include_preprocessing": bool(include_preprocessing),
              "input_shape": [None if d is None else int(d) for d in img_input.shape[1:]]}
    model = MobileOneModel(inputs, x, name=name or f"mobileone_{v.name}", mobileone=config)

    if weights is not None:
        if weights == "imagenet":
            from mobileone_tf import weights as mo_weights
            weights = mo_weights.imagenet_weights_path(v.name, fused=fused)
        load_weights(model, weights)
    return model


MobileOne.__doc__ = BASE_DOCSTRING.format(
    name="a MobileOne model", top1="71.4-79.4 for S0-S4", default_name="mobileone_{variant}",
    variant_arg="""
        variant: ``"s0"`` ... ``"s4"`` (case-insensitive).""")


@mobileone_export("mobileone_tf.models")
def build_backbone(x, variant, keras_module=keras, fused=False,
                   include_preprocessing=True):
    """Applies the MobileOne stem and stages to NHWC tensor ``x``.

    With ``keras_module=tf_keras`` only ``fused=True`` is supported (the
    branched block is a Keras 3 layer); this is how QAT rebuilds the graph.
    """
    v = variants.get_variant(variant)
    L = keras_module.layers
    if include_preprocessing:
        x = L.Rescaling(scale=[1.0 / (255.0 * s) for s in IMAGENET_STD],
                        offset=[-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)],
                        name="preprocessing")(x)
    for spec in variants.block_specs(v, in_channels=3):
        if fused:
            x = mo_layers.fused_block(x, spec, keras_module)
        else:
            if keras_module is not keras:
                raise ValueError("The branched model is Keras 3 only; "
                                 "use fused=True with tf_keras.")
            x = mo_layers.MobileOneBlock(
                spec.filters, spec.kernel_size, spec.strides, spec.depthwise,
                spec.num_conv_branches, spec.use_se, name=spec.name)(x)
    return x


@mobileone_export("mobileone_tf.models")
def build_head(x, keras_module, include_top, pooling, classes, classifier_activation):
    L = keras_module.layers
    if include_top:
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        # float32 head (softmax) under a mixed-precision policy, as the Keras
        # mixed-precision guide recommends; the policy's dtype otherwise
        # (float32, or float64 for the gradient checks of tests/backend_cases.py)
        policy = keras_module.mixed_precision.global_policy()
        mixed = policy.compute_dtype != policy.variable_dtype
        x = L.Dense(classes, activation=classifier_activation, name=HEAD_NAME,
                    dtype="float32" if mixed else None)(x)
    elif pooling == "avg":
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = L.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def _make(v):
    def builder(include_top=True, weights="imagenet", input_tensor=None,
                input_shape=None, pooling=None, classes=1000,
                classifier_activation="softmax", include_preprocessing=True,
                fused=False, name=None):
        return MobileOne(v, include_top=include_top, weights=weights,
                         input_tensor=input_tensor, input_shape=input_shape,
                         pooling=pooling, classes=classes,
                         classifier_activation=classifier_activation,
                         include_preprocessing=include_preprocessing,
                         fused=fused, name=name)
    builder.__name__ = builder.__qualname__ = f"MobileOne{v.upper()}"
    builder.__doc__ = BASE_DOCSTRING.format(
        name=f"MobileOne-{v.upper()}", top1=variants.VARIANTS[v].top1,
        variant_arg="", default_name=f"mobileone_{v}")
    return builder


MobileOneS0 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s0"))
MobileOneS1 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s1"))
MobileOneS2 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s2"))
MobileOneS3 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s3"))
MobileOneS4 = mobileone_export("mobileone_tf", "mobileone_tf.models")(_make("s4"))




@mobileone_export("mobileone_tf", "mobileone_tf.models")
def preprocess_input(x, data_format=None, include_preprocessing=True):
    """Prepares RGB images for a MobileOne model (``keras.applications`` style).

    Models built with ``include_preprocessing=True`` (the default) normalize
    inside, so this is a pass-through (as for ``keras.applications``
    MobileNetV3/ConvNeXt): pass RGB values in 0..255. For models built with
    ``include_preprocessing=False`` pass ``include_preprocessing=False`` here
    to apply the ImageNet normalization ``(x / 255 - mean) / std`` with mean
    (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (Keras' ``"torch"``
    mode).

    Args:
        x: float array or tensor ``(..., H, W, 3)``, RGB 0..255.
        data_format: as in ``keras.applications``.
        include_preprocessing: how the model was built.

    Returns:
        ``x`` unchanged, or normalized float32.
    """
    if include_preprocessing:
        return x
    return keras.applications.imagenet_utils.preprocess_input(
        x, data_format=data_format, mode="torch")
