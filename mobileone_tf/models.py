"""``keras.applications``-style MobileOne builders, model-level ``fuse``, and
the flat weight "state" that porting, loading and fusing exchange.

Architecture: Apple's ml-mobileone ``MobileOne`` (see
:mod:`mobileone_tf.variants`). The branched (train-time) model is built from
:class:`mobileone_tf.layers.MobileOneBlock`; the fused (inference) model from
standard Keras layers only (:func:`mobileone_tf.layers.fused_block`), from the
same table, with the same layer names.

Model state: a flat ``{key: np.ndarray}`` dict in Keras layouts (HWIO conv
kernels, HWC1 depthwise kernels, (in, out) dense kernels):

* branched block ``B``: ``B/conv_kxk/{i}/kernel``, ``B/conv_kxk/{i}/bn/{gamma,
  beta,moving_mean,moving_variance}``, ``B/conv_scale/kernel``,
  ``B/conv_scale/bn/...``, ``B/identity/...``;
* fused block ``B``: ``B/reparam/kernel``, ``B/reparam/bias``;
* squeeze-excite (both forms): ``B/se/reduce/{kernel,bias}``,
  ``B/se/expand/{kernel,bias}``;
* classifier: ``head/kernel`` ``(features, classes)``, ``head/bias``.
"""

from __future__ import annotations

import numpy as np
import keras

from mobileone_tf import layers as mo_layers
from mobileone_tf import variants

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_NAME = "predictions"


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
        import os
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


def MobileOne(variant="s0", include_top=True, weights="imagenet", input_tensor=None,
              input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", include_preprocessing=True,
              fused=False, name=None):
    """Instantiates a MobileOne architecture (Vasu et al., CVPR 2023).

    Same signature and checks as ``keras.applications`` models, plus
    ``variant`` and ``fused``. Architecture and weights layout follow Apple's
    ml-mobileone reference.

    Args:
        variant: ``"s0"`` ... ``"s4"``.
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
        include_preprocessing: if ``True`` the model takes RGB float 0..255
            and normalizes inside (ImageNet mean/std on 0..1); if ``False`` it
            takes already normalized input (see :func:`preprocess_input`).
        fused: build the one-branch inference form directly (standard layers
            only) instead of the branched train-time form.
        name: model name, default ``"mobileone_{variant}"``.

    Returns:
        A ``keras.Model``: input NHWC float32 ``(batch, H, W, 3)``; output
        ``(batch, classes)`` probabilities or logits, or features.

    Raises:
        ValueError: for invalid arguments (unknown variant, weights,
            ``classes`` != 1000 with ImageNet weights and a top, pooling,
            activation, input shape), or weights that do not fit the model.
        FileNotFoundError: ``weights="imagenet"`` offline with nothing cached
            (the message names the file to download and where to put it).
    """
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
    model = keras.Model(inputs, x, name=name or f"mobileone_{v.name}")

    if weights == "imagenet":
        from mobileone_tf import weights as mo_weights
        load_weights(model, mo_weights.imagenet_weights_path(v.name, fused=fused))
    elif weights is not None:
        load_weights(model, weights)
    return model


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


def build_head(x, keras_module, include_top, pooling, classes, classifier_activation):
    L = keras_module.layers
    if include_top:
        x = L.GlobalAveragePooling2D(name="avg_pool")(x)
        # float32 head (softmax) under a mixed-precision policy, as the Keras
        # mixed-precision guide recommends; no change under float32
        x = L.Dense(classes, activation=classifier_activation, name=HEAD_NAME,
                    dtype="float32")(x)
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
    builder.__name__ = f"MobileOne{v.upper()}"
    builder.__doc__ = (f"Instantiates MobileOne-{v.upper()} "
                       f"(Apple top-1 {variants.VARIANTS[v].top1} %). "
                       "See :func:`MobileOne` for the arguments.")
    return builder


MobileOneS0 = _make("s0")
MobileOneS1 = _make("s1")
MobileOneS2 = _make("s2")
MobileOneS3 = _make("s3")
MobileOneS4 = _make("s4")


# ---------------------------------------------------------------------------
# Model state: flat dict of arrays (see the module docstring)
# ---------------------------------------------------------------------------
def _blocks(model):
    """{block name: MobileOneBlock} and {block name: fused conv layer}."""
    branched, fused = {}, {}
    for layer in _all_layers(model):
        if isinstance(layer, mo_layers.MobileOneBlock):
            branched[layer.name] = layer
        elif layer.name.endswith("_conv") and isinstance(
                layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            fused[layer.name[: -len("_conv")]] = layer
    return branched, fused


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def model_form(model) -> str:
    """``"branched"`` if the model has any MobileOneBlock, else ``"fused"``."""
    branched, _ = _blocks(model)
    return "branched" if branched else "fused"


def get_state(model) -> dict:
    """The model's weights as a flat state dict (module docstring)."""
    state = {}
    branched, fused = _blocks(model)
    layers = {layer.name: layer for layer in _all_layers(model)}
    for name, block in branched.items():
        state.update({f"{name}/{k}": v for k, v in block.get_state().items()})
    for name in fused:
        for prefix, layer in mo_layers.fused_block_layers(layers, name):
            for wname, value in zip(mo_layers._weight_names(layer), layer.get_weights()):
                state[f"{name}/{prefix}/{wname}"] = value
    if HEAD_NAME in layers:
        kernel, bias = layers[HEAD_NAME].get_weights()
        state["head/kernel"], state["head/bias"] = kernel, bias
    return state


def state_form(state: dict) -> str:
    if any(k.endswith("/reparam/kernel") for k in state):
        return "fused"
    if any("/conv_kxk/" in k for k in state):
        return "branched"
    raise ValueError("Not a MobileOne weight state: no '*/reparam/kernel' or "
                     f"'*/conv_kxk/*' keys (first keys: {sorted(state)[:5]})")


def split_state(state: dict) -> dict:
    """``{block or 'head': {relative key: array}}``."""
    out = {}
    for key, value in state.items():
        block, _, rest = key.partition("/")
        out.setdefault(block, {})[rest] = value
    return out


def fuse_state(state: dict, depthwise_blocks) -> dict:
    """Converts a branched state to the fused form (float64 math, float32 out).

    Args:
        state: branched model state.
        depthwise_blocks: names of the depthwise blocks.
    """
    out = {}
    for block, sub in split_state(state).items():
        if block == "head" or "reparam/kernel" in sub:
            out.update({f"{block}/{k}": v for k, v in sub.items()})
            continue
        branches = {k: v for k, v in sub.items() if not k.startswith("se/")}
        kernel, bias = mo_layers.fuse_block_state(branches, block in depthwise_blocks)
        out[f"{block}/reparam/kernel"] = kernel.astype(np.float32)
        out[f"{block}/reparam/bias"] = bias.astype(np.float32)
        out.update({f"{block}/{k}": v for k, v in sub.items() if k.startswith("se/")})
    return out


def assign_state(model, state: dict, skip_head_if_absent: bool = True):
    """Assigns a state (either form) to a model (either form).

    A fused state loads into a branched model through
    :meth:`MobileOneBlock.load_fused` (an exact-output initialisation); a
    branched state loads into a fused model by fusing it. The ``head/*``
    entries are ignored when the model has no top (``include_top=False``).

    Raises:
        ValueError: naming missing/unexpected keys or wrong shapes; the
            model is left unchanged in that case.
    """
    branched, fused = _blocks(model)
    layers = {layer.name: layer for layer in _all_layers(model)}
    form = state_form(state)
    if fused and form == "branched":
        depthwise = {n for n, layer in fused.items()
                     if isinstance(layer, keras.layers.DepthwiseConv2D)}
        state = fuse_state(state, depthwise)
    sub = split_state(state)
    blocks = set(branched) | set(fused)
    missing = sorted(blocks - set(sub))
    unexpected = sorted(set(sub) - blocks - {"head"})
    if missing or unexpected:
        raise ValueError("Weights do not match the model's blocks:"
                         + (f"\n  blocks missing from the weights: {missing}" if missing else "")
                         + (f"\n  unexpected blocks in the weights: {unexpected}"
                            if unexpected else ""))
    plan = []  # validate everything before assigning anything
    def full(name, pairs, values):  # full keys in error messages
        return ([(f"{name}/{p}", layer) for p, layer in pairs],
                {f"{name}/{k}": v for k, v in values.items()})

    for name, block in branched.items():
        values = sub[name]
        if "reparam/kernel" in values:
            plan.append(("fused-into-branched", block, values))
        else:
            plan.append(("pairs", *full(name, block._branch_layers(), values)))
    for name in fused:
        plan.append(("pairs", *full(name, mo_layers.fused_block_layers(layers, name),
                                    sub[name])))
    if HEAD_NAME in layers:
        if "head" not in sub:
            raise ValueError("The model has a classifier ('predictions') but the "
                             "weights have none (head/kernel, head/bias).")
        plan.append(("pairs", [("head", layers[HEAD_NAME])],
                     {f"head/{k}": v for k, v in sub["head"].items()}))
    elif "head" in sub and not skip_head_if_absent:
        raise ValueError("The weights have a classifier but the model has none.")
    _check_plan(plan)
    for kind, target, values in plan:
        if kind == "pairs":
            mo_layers.assign_layers(target, values)
        else:
            target.load_fused(values["reparam/kernel"], values["reparam/bias"])
            se = [p for p in target._branch_layers() if p[0].startswith("se/")]
            mo_layers.assign_layers(se, {k: v for k, v in values.items()
                                         if k.startswith("se/")}, where=target.name)


def _check_plan(plan):
    """Dry-runs every assignment so that a mismatch changes nothing."""
    errors = []
    for kind, target, values in plan:
        try:
            if kind == "pairs":
                _dry_assign(target, values)
            else:
                kernel = values["reparam/kernel"]
                w = target.conv_kxk[0].weights[0]
                if tuple(np.shape(kernel)) != tuple(w.shape):
                    raise ValueError(f"{target.name}/reparam/kernel: expected "
                                     f"{tuple(w.shape)}, got {tuple(np.shape(kernel))}")
                se = [p for p in target._branch_layers() if p[0].startswith("se/")]
                rest = {k: v for k, v in values.items() if k.startswith("se/")}
                _dry_assign(se, rest)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("\n".join(errors))


def _dry_assign(pairs, values):
    mo_layers.assign_layers(pairs, values, dry_run=True,
                            where=", ".join(layer.name for _, layer in pairs))


def load_weights(model, path):
    """Loads weights from a ``.weights.h5`` or a PyTorch checkpoint into a model.

    Files written by :mod:`mobileone_tf.porting` (they record variant and
    form) convert between the fused and branched forms as needed; other
    ``.weights.h5`` files go to Keras' ``model.load_weights``. PyTorch
    checkpoints (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``, ``.safetensors``)
    are ported on the fly.

    Raises:
        ValueError: the file does not fit the model (names the keys).
    """
    from mobileone_tf import porting
    path = str(path)
    if path.endswith(".h5"):
        state, attrs = porting.read_weights_h5(path, with_attrs=True)
        if state is None:  # a plain Keras weights file
            model.load_weights(path)
            return model
        what = f"MobileOne-{str(attrs.get('variant', '?')).upper()} ({attrs.get('form')})"
    else:
        result = porting.port_checkpoint(path)
        state = result.state
        what = f"MobileOne-{result.variant.upper()} ({result.form}, {result.layout} layout)"
    try:
        assign_state(model, state)
    except ValueError as e:
        raise ValueError(f"{path} holds {what} weights that do not fit model "
                         f"'{model.name}':\n{e}") from None
    return model


# ---------------------------------------------------------------------------
# fuse(model)
# ---------------------------------------------------------------------------
def fuse(model):
    """Returns a new model with every MobileOneBlock re-parameterized.

    The new functional model has standard Keras layers only (see
    :func:`mobileone_tf.layers.fused_block`) and the fused weights
    (computed in float64); every other layer is cloned with its weights. The
    input model is not modified; fusing a model without MobileOneBlocks
    returns a copy. Works for any functional model that calls
    MobileOneBlocks, e.g. a backbone with a custom head.

    Args:
        model: a functional ``keras.Model``.

    Returns:
        The fused ``keras.Model`` (same inputs/outputs shapes and names).

    Raises:
        ValueError: if ``model`` is not a functional Keras model.
    """
    if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential) \
            or not hasattr(model, "_run_through_graph"):
        raise ValueError("fuse() expects a functional keras.Model, e.g. from "
                         f"MobileOne(...); received {type(model).__name__}.")
    originals = {}

    def clone_function(layer):
        if isinstance(layer, mo_layers.MobileOneBlock):
            return layer  # replaced in call_function
        new = layer.__class__.from_config(layer.get_config())
        originals[id(new)] = layer
        return new

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, mo_layers.MobileOneBlock):
            spec = variants.BlockSpec(layer.name, layer.in_channels, layer.filters,
                                      layer.kernel_size, layer.strides, layer.depthwise,
                                      layer.use_se, layer.num_conv_branches)
            x = args[0]
            out = mo_layers.fused_block(x, spec, keras)
            kernel, bias = layer.fuse()
            conv = _producer(out, f"{layer.name}_conv")
            conv.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
            if layer.use_se:
                _producer(out, f"{layer.name}_se_reduce").set_weights(
                    layer.se_reduce.get_weights())
                _producer(out, f"{layer.name}_se_expand").set_weights(
                    layer.se_expand.get_weights())
            return out
        out = layer(*args, **kwargs)
        source = originals.get(id(layer))
        if source is not None and source.weights:
            layer.set_weights(source.get_weights())
        return out

    fused = keras.models.clone_model(model, clone_function=clone_function,
                                     call_function=call_function)
    fused.name = model.name
    return fused


def _producer(tensor, layer_name):
    """Finds the layer called ``layer_name`` upstream of a symbolic tensor."""
    seen = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        history = getattr(t, "_keras_history", None)
        if history is None:
            continue
        op = history.operation
        if id(op) in seen:
            continue
        seen.add(id(op))
        if op.name == layer_name:
            return op
        node = op._inbound_nodes[history.node_index]
        stack.extend(node.input_tensors)
    raise KeyError(layer_name)


# ---------------------------------------------------------------------------
# Input/output helpers in keras.applications style
# ---------------------------------------------------------------------------
def preprocess_input(x, data_format=None, include_preprocessing=True):
    """Prepares RGB images for a MobileOne model.

    Models built with ``include_preprocessing=True`` (the default) normalize
    inside, so this is a pass-through (as for ``keras.applications``
    MobileNetV3/ConvNeXt): pass RGB values in 0..255. For models built with
    ``include_preprocessing=False`` pass ``include_preprocessing=False`` here
    to apply the ImageNet normalization: ``(x / 255 - mean) / std`` with
    mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (Keras' ``"torch"``
    mode).

    Args:
        x: float array/tensor ``(..., H, W, 3)`` RGB in 0..255.
    """
    if include_preprocessing:
        return x
    return keras.applications.imagenet_utils.preprocess_input(
        x, data_format=data_format, mode="torch")


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions: like ``keras.applications`` ``decode_predictions``.

    Args:
        preds: ``(batch, 1000)`` probabilities or logits.
        top: how many classes per image.

    Returns:
        A list (per image) of ``(synset, class_name, score)`` tuples, best
        first.

    Raises:
        ValueError: if ``preds`` is not ``(batch, 1000)``.
    """
    from mobileone_tf import weights as mo_weights
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError("`decode_predictions` expects a batch of predictions "
                         "(i.e. a 2D array of shape (samples, 1000)). "
                         f"Received array with shape: {preds.shape}")
    index = mo_weights.imagenet_class_index()
    results = []
    for row in preds:
        order = np.argsort(row)[::-1][:top]
        results.append([(index[i][0], index[i][1], float(row[i])) for i in order])
    return results
