"""The model an exporter converts: fused, rebuilt with a fixed input
``(batch_size, H, W, 3)`` named ``"image"`` (static shapes for XNNPACK, the
GPU delegate and the Neural Engine), its outputs (probabilities or logits),
the input normalization folded into the stem convolution
(:func:`fold_input_normalization`), plus what the file's outputs are called
and which class names go with them."""

from __future__ import annotations

import numpy as np

from mobileone_tf.export.common import INPUT_NAME, ExportError, check_geometry
from mobileone_tf.export.options import OUTPUTS

NORMALIZATION = "preprocessing"
"""Name of the builders' input normalization layer (a ``Rescaling``,
:func:`mobileone_tf.models.build_backbone`)."""
HEAD = "predictions"
"""Name of the builders' classifier layer (a ``Dense``)."""


def prepare_model(model, fuse=True, batch_size=1, input_size=224, outputs=None, fold=True):
    """The fused model rebuilt with a fixed input ``(batch_size, H, W, 3)``.

    Args:
        model: a MobileOne ``keras.Model`` (branched or fused); with
            ``fuse=False`` any Keras functional model with one NHWC RGB image
            input (e.g. a ``keras.applications`` baseline).
        fuse: re-parameterize a branched model (:func:`mobileone_tf.fuse`).
        batch_size: fixed batch size (>= 1).
        input_size: ``int`` (square) or ``(H, W)``; each 32..4096
            (:func:`.common.check_geometry`).
        outputs: ``None`` (the model's own top), ``"probabilities"`` or
            ``"logits"`` (:func:`set_outputs`).
        fold: fold the input normalization into the stem convolution
            (:func:`fold_input_normalization`; same function, fewer ops).

    Returns:
        A new functional ``keras.Model`` whose input is named ``"image"``
        (float32), with the weights of ``model`` (fused).

    Raises:
        ExportError: invalid batch or input size, a model whose input is
            not an RGB image (or was built for another size), or
            ``outputs`` that the model cannot give.
    """
    import keras
    from mobileone_tf import models

    b, h, w = check_geometry(batch_size, input_size)
    if len(model.inputs) != 1:
        raise ExportError(f"Expected a model with one image input; got {len(model.inputs)}")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ExportError(f"Expected a model with an NHWC RGB image input; got {shape}")
    for want, have in ((h, shape[1]), (w, shape[2])):
        if have is not None and have != want:
            raise ExportError(f"The model was built for input {shape[1:3]}; cannot export "
                              f"at {h}x{w} (build it with input_shape=(None, None, 3)).")
    if fuse and models.model_form(model) == "branched":
        model = models.fuse(model)
    inp = keras.Input(batch_shape=(b, h, w, 3), name=INPUT_NAME)
    fixed = keras.models.clone_model(model, input_tensors=inp)
    fixed.set_weights(model.get_weights())
    fixed.name = model.name
    recorded = getattr(model, "mobileone_config", None)
    if recorded:  # clone_model does not carry the recorded MobileOne configuration
        fixed.mobileone_config = {**recorded, "input_shape": [h, w, 3]}
    if outputs is not None:
        fixed = set_outputs(fixed, outputs)
    return fold_input_normalization(fixed) if fold else fixed


def _rebuild(model, replace):
    """A clone of the functional ``model`` with the layers named in
    ``replace`` (``{name: new layer}``, same weights) swapped in, the
    weights of ``model`` and its recorded MobileOne configuration."""
    import keras

    def clone(layer):
        new = replace.get(layer.name)
        return layer.__class__.from_config(layer.get_config()) if new is None else new

    out = keras.models.clone_model(model, clone_function=clone)
    out.set_weights(model.get_weights())
    out.name = model.name
    if getattr(model, "mobileone_config", None):
        out.mobileone_config = dict(model.mobileone_config)
    return out


def set_outputs(model, outputs):
    """``model`` with a classifier top that outputs ``outputs``.

    ``"logits"`` drops the softmax of the top ``Dense`` (named
    ``"predictions"``); ``"probabilities"`` gives it one (a ``Dense`` with
    ``activation="softmax"``: one SOFTMAX op after the last matrix product,
    where it costs least). Unchanged when the top already gives them.

    Raises:
        ExportError: ``outputs`` not in :data:`OUTPUTS`, or a model without
            a classifier top (features), or a top with another activation.
    """
    if outputs not in OUTPUTS:
        raise ExportError(f"outputs must be one of {OUTPUTS}; got {outputs!r}")
    have = output_name(model)
    if have == outputs:
        return model
    if have == "features":
        raise ExportError(f"outputs={outputs!r} needs a classifier top; the model outputs "
                          "features (include_top=False)")
    head = model.get_layer(HEAD)
    act = getattr(getattr(head, "activation", None), "__name__", "")
    if act not in ("softmax", "linear"):
        raise ExportError(f"The top of {model.name!r} has activation {act!r}; "
                          f"cannot export {outputs}")
    config = dict(head.get_config(), activation="softmax" if outputs == "probabilities"
                  else None)
    out = _rebuild(model, {HEAD: head.__class__.from_config(config)})
    if getattr(out, "mobileone_config", None):
        out.mobileone_config["classifier_activation"] = (
            "softmax" if outputs == "probabilities" else None)
    return out


def fold_input_normalization(model):
    """``model`` with its input normalization folded into the stem convolution.

    The builders normalize in the graph: ``y = a * x + b`` per channel
    (``a = 1 / (255 std)``, ``b = -mean / std``; ``Rescaling`` layer
    ``"preprocessing"``), one MUL and one ADD whose 3-element constants make
    XNNPACK run them three floats at a time (most of the 2-13 % the default
    export lost to the bare network, issue 13). The stem is zero padding
    (PyTorch's ``padding=1``) and a 3x3 convolution, so padding the *raw*
    image with zeros would be wrong: its zeros normalize to ``b``, not 0.
    With ``p = -b / a = 255 * mean`` (``a p + b = 0``), ``y = a (x - p)``,
    and zero padding commutes with a per-channel scale, so

        conv(pad0(y), K) = conv(pad0(x - p), K * a)   (a on K's input channels)

    exactly, border pixels included. The folded graph is one ADD of ``-p``
    (its constant broadcast to ``(1, 1, W, 3)``: XNNPACK adds whole image
    rows), the zero PAD (XNNPACK fuses it into the convolution) and the stem
    convolution with the scaled kernel (same bias): no MUL.

    When the normalized image does not go (through ``ZeroPadding2D`` layers
    only) into one ``Conv2D`` alone (a branched model exported with
    ``fuse=False``), the same MUL + ADD is kept, with row-broadcast constants.

    Args:
        model: a prepared functional model (static input shape).

    Returns:
        A new model computing the same function (to float32 rounding), or
        ``model`` itself when it has no top-level ``"preprocessing"``
        ``Rescaling`` layer.
    """
    import keras
    layers = {layer.name: layer for layer in model.layers}
    pre = layers.get(NORMALIZATION)
    if not isinstance(pre, keras.layers.Rescaling):
        return model
    scale = np.broadcast_to(np.asarray(pre.scale, np.float64), (3,))
    offset = np.broadcast_to(np.asarray(pre.offset, np.float64), (3,))
    stem = _stem_conv(model, pre) if np.all(scale != 0) else None
    if stem is None:
        return _rebuild(model, {NORMALIZATION: channel_affine(offset, scale)})
    out = _rebuild(model, {NORMALIZATION: channel_affine(offset / scale)})  # -p
    layer = out.get_layer(stem.name)
    kernel, *bias = stem.get_weights()  # (kh, kw, 3, filters)
    layer.set_weights([(kernel * scale[None, None, :, None]).astype(kernel.dtype), *bias])
    return out


def normalization_form(model):
    """Where ``model`` normalizes its input: ``"folded"`` (an ADD, the scale
    in the stem convolution: :func:`fold_input_normalization`), ``"mul+add"``
    (in the graph) or ``"none"`` (no top-level ``"preprocessing"`` layer)."""
    layer = next((x for x in model.layers if x.name == NORMALIZATION), None)
    if layer is None:
        return "none"
    return "folded" if getattr(layer, "scale", 1.0) is None else "mul+add"


def _consumers(model, tensor):
    """The layers of ``model`` that read ``tensor`` (identity, not equality)."""
    import keras
    found = []
    for layer in model.layers:
        try:
            inputs = keras.tree.flatten(layer.input)
        except (AttributeError, ValueError):  # an input layer, or one used twice
            continue
        if any(t is tensor for t in inputs):
            found.append(layer)
    return found


def _stem_conv(model, pre):
    """The ``Conv2D`` (groups 1, channels last) that alone reads ``pre``'s
    output through ``ZeroPadding2D`` layers only, else ``None``."""
    import keras
    tensor = pre.output
    while True:
        users = _consumers(model, tensor)
        if len(users) != 1:
            return None
        layer = users[0]
        if isinstance(layer, keras.layers.ZeroPadding2D):
            tensor = layer.output
            continue
        plain_conv = (isinstance(layer, keras.layers.Conv2D)
                      and not isinstance(layer, keras.layers.DepthwiseConv2D)
                      and layer.groups == 1 and layer.data_format == "channels_last")
        return layer if plain_conv else None


def channel_affine(offset, scale=None, name=NORMALIZATION):
    """A Keras layer computing ``x * scale + offset`` per channel (``scale``
    ``None``: ``x + offset``), float32 NHWC in and out, with its constants
    broadcast to ``(1, 1, W, C)`` when the width is static (XNNPACK then
    runs the ADD/MUL over whole image rows instead of 3 floats at a time)."""
    return _channel_affine_class()(offset=offset, scale=scale, name=name)


_CLASSES = {}


def _channel_affine_class():
    if "ChannelAffine" in _CLASSES:
        return _CLASSES["ChannelAffine"]
    import keras

    @keras.saving.register_keras_serializable(package="mobileone_tf")
    class ChannelAffine(keras.layers.Layer):
        """``x * scale + offset`` per channel (see :func:`channel_affine`)."""

        def __init__(self, offset, scale=None, **kwargs):
            super().__init__(**kwargs)
            self.offset = [float(v) for v in np.ravel(offset)]
            self.scale = None if scale is None else [float(v) for v in np.ravel(scale)]

        def _constant(self, values, shape):
            c = np.asarray(values, np.float32)
            if len(shape) == 4 and shape[2] is not None:
                c = np.broadcast_to(c, (1, 1, int(shape[2]), c.size)).copy()
            return keras.ops.convert_to_tensor(c, dtype=self.compute_dtype)

        def call(self, inputs):
            x = keras.ops.cast(inputs, self.compute_dtype)
            if self.scale is not None:
                x = x * self._constant(self.scale, inputs.shape)
            return x + self._constant(self.offset, inputs.shape)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "offset": self.offset, "scale": self.scale}

    _CLASSES["ChannelAffine"] = ChannelAffine
    return ChannelAffine


NAMED_OUTPUTS = {"logits": "logits", "class_map": "class_map",
                 "segmentation_output": "logits", "detections": "detections"}
"""Last-layer names that name a dense-prediction output: a deploy model's
``"logits"``/``"class_map"`` (:func:`mobileone_tf.segmentation.deploy_model`),
KerasHub's segmenter head ``"segmentation_output"`` (logits), a detector's
raw ``"detections"`` (:func:`mobileone_tf.hub.raw_detections_model`)."""


def output_names(model):
    """The names of the model's outputs, in the order of ``model.outputs``:
    the keys of a dict-output model (a :func:`mobileone_tf.feature_extractor`:
    ``"P1"``..``"P5"``, sorted as Keras flattens them), otherwise
    ``[output_name(model)]``."""
    if isinstance(model.output, dict):
        return sorted(model.output)
    return [output_name(model)]


def output_name(model):
    """``"probabilities"``, ``"logits"`` (classifier or per-pixel),
    ``"class_map"`` or ``"features"`` for the model's output (one output)."""
    if isinstance(model.output, dict):
        raise ExportError(f"{model.name} has {len(model.output)} outputs "
                          f"{sorted(model.output)}; use output_names()")
    layer = model.layers[-1]
    if layer.name in NAMED_OUTPUTS:
        return NAMED_OUTPUTS[layer.name]
    if layer.name != "predictions":
        return "features"
    act = getattr(layer, "activation", None)
    return "probabilities" if getattr(act, "__name__", "") == "softmax" else "logits"


def num_classes(model):
    """Classes of a classifier's ``(batch, classes)`` output; ``None`` for features."""
    if isinstance(model.output, dict):
        return None
    shape = tuple(model.output.shape)
    return int(shape[-1]) if len(shape) == 2 and output_name(model) != "features" else None


def class_names(model, names=None):
    """``(labels, source)`` for a classifier; ``(None, None)`` for features.

    ``names`` given: their strings (source ``"given"``); else the ImageNet
    names for a 1000-class top (:func:`mobileone_tf.models.imagenet_class_index`,
    source ``"imagenet"``), else the class indices (``"indices"``, with the
    reason when the ImageNet names could not be had).

    Raises:
        ExportError: ``names`` does not have one entry per class.
    """
    n = num_classes(model)
    if n is None:
        return None, None
    if names is not None:
        names = [str(c) for c in names]
        if len(names) != n:
            raise ExportError(f"class_names has {len(names)} entries; the model has {n} classes")
        return names, "given"
    if n == 1000:
        from mobileone_tf import models
        try:
            return [name for _, name in models.imagenet_class_index()], "imagenet"
        except (OSError, ValueError) as e:  # no class list cached and no network
            return [str(i) for i in range(n)], f"indices (ImageNet class names unavailable: {e})"
    return [str(i) for i in range(n)], "indices"


def keras_io(fixed):
    """``(inputs, outputs)`` tensor descriptions (name, dtype, shape) of the
    prepared model, as the float32 files have them."""
    return ([{"name": INPUT_NAME, "dtype": "float32", "shape": list(fixed.input.shape)}],
            [{"name": name, "dtype": "float32", "shape": list(tensor.shape)}
             for name, tensor in zip(output_names(fixed), fixed.outputs)])

