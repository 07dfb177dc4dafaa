"""MobileOne's re-parameterizable block and its fused, standard-layer form.

``MobileOneBlock`` is the train-time block of the paper (Vasu et al.,
"MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023, Fig. 3,
Sec. 3.2) and of Apple's reference ``MobileOneBlock`` (ml-mobileone):

    y = ReLU(SE(sum_i BN_i(Conv_kxk_i(x)) + BN_s(Conv_1x1(x)) + BN_id(x)))

with ``num_conv_branches`` (k) parallel kxk branches, the 1x1 "scale" branch
when ``kernel_size > 1`` and the BatchNorm-only identity ("skip") branch when
input and output channels match and the stride is 1. Every branch is linear in
inference mode, so the sum folds into one convolution with bias
(:meth:`MobileOneBlock.fuse`, RepVGG-style, Sec. 3.2 of the paper).

Numerics follow PyTorch so that ported weights give the same logits:
symmetric zero padding ``kernel_size // 2`` (explicit ``ZeroPadding2D`` +
``valid`` for stride 2, where TensorFlow's ``same`` pads asymmetrically;
``same`` for stride 1, where both agree), BatchNorm epsilon 1e-5 and momentum
0.9 (PyTorch's 0.1).

Tensors are NHWC float32 unless the dtype policy says otherwise.
"""

from __future__ import annotations

import numpy as np
import keras

from mobileone_tf import variants

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
_BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")


def _padding(kernel_size: int, strides: int) -> tuple:
    """(explicit pad or 0, conv padding) reproducing PyTorch ``padding=k//2``."""
    if kernel_size > 1 and strides > 1:
        return kernel_size // 2, "valid"
    return 0, ("same" if kernel_size > 1 else "valid")


def fold_batchnorm(kernel, bn: dict, depthwise: bool, epsilon: float = BN_EPSILON):
    """Folds an inference-mode BatchNorm into the preceding bias-free conv.

    Args:
        kernel: conv kernel, Keras layout: ``(kh, kw, in, out)`` for a
            ``Conv2D``, ``(kh, kw, channels, 1)`` for a ``DepthwiseConv2D``.
        bn: dict with ``gamma``, ``beta``, ``moving_mean``,
            ``moving_variance`` (each shape ``(out,)``).
        depthwise: whether ``kernel`` is a depthwise kernel.
        epsilon: the BatchNorm epsilon.

    Returns:
        ``(kernel, bias)`` as float64 arrays: ``kernel * gamma / std`` and
        ``beta - mean * gamma / std`` with ``std = sqrt(var + eps)``.
    """
    kernel = np.asarray(kernel, np.float64)
    gamma, beta, mean, var = (np.asarray(bn[k], np.float64) for k in _BN_KEYS)
    t = gamma / np.sqrt(var + epsilon)
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    return kernel * t.reshape(shape), beta - mean * t


def identity_kernel(channels: int, kernel_size: int, depthwise: bool):
    """The kxk kernel that maps each channel to itself (float64)."""
    c = kernel_size // 2
    if depthwise:
        kernel = np.zeros((kernel_size, kernel_size, channels, 1))
        kernel[c, c, :, 0] = 1.0
    else:
        kernel = np.zeros((kernel_size, kernel_size, channels, channels))
        kernel[c, c, np.arange(channels), np.arange(channels)] = 1.0
    return kernel


def fuse_block_state(state: dict, depthwise: bool, epsilon: float = BN_EPSILON):
    """Fuses one branched block's weights into a single kernel and bias.

    Args:
        state: the block's branch weights as produced by
            :meth:`MobileOneBlock.get_state` (keys ``conv_kxk/{i}/kernel``,
            ``conv_kxk/{i}/bn/{gamma,...}``, optional ``conv_scale/...`` and
            ``identity/{gamma,...}``).
        depthwise: whether the block is depthwise.

    Returns:
        ``(kernel, bias)`` float64, kernel in the layout of the kxk branches.
        The 1x1 scale kernel is zero-padded to kxk and the identity branch
        expressed as a kernel, as in Apple's ``_get_kernel_bias``.
    """
    num = len({k.split("/")[1] for k in state if k.startswith("conv_kxk/")})
    if num == 0:
        raise ValueError("Block state has no conv_kxk branch: keys "
                         f"{sorted(state)}")
    kernel = bias = 0.0
    for i in range(num):
        k, b = fold_batchnorm(state[f"conv_kxk/{i}/kernel"],
                              _bn(state, f"conv_kxk/{i}/bn"), depthwise, epsilon)
        kernel, bias = kernel + k, bias + b
    ksize = kernel.shape[0]
    if "conv_scale/kernel" in state:
        k, b = fold_batchnorm(state["conv_scale/kernel"],
                              _bn(state, "conv_scale/bn"), depthwise, epsilon)
        p = (ksize - k.shape[0]) // 2
        kernel = kernel + np.pad(k, ((p, p), (p, p), (0, 0), (0, 0)))
        bias = bias + b
    if "identity/gamma" in state:
        channels = kernel.shape[2]
        k, b = fold_batchnorm(identity_kernel(channels, ksize, depthwise),
                              _bn(state, "identity"), depthwise, epsilon)
        kernel, bias = kernel + k, bias + b
    return kernel, bias


def unfuse_block_state(kernel, bias, num_conv_branches: int, has_scale: bool,
                       has_identity: bool, depthwise: bool,
                       epsilon: float = BN_EPSILON) -> dict:
    """Branched-block weights whose fused form is exactly ``(kernel, bias)``.

    The fused kernel goes into the first kxk branch with an identity
    BatchNorm (mean 0, variance ``1 - eps``, gamma 1, beta = ``bias``); every
    other branch outputs zero (zero kernels; the identity BatchNorm has
    gamma 0 and beta 0). Inference outputs equal the fused block's. This is an
    *initialisation* (e.g. to fine-tune from Apple's fused release), not the
    original training-time weights, which are not recoverable from a fused
    checkpoint.
    """
    kernel = np.asarray(kernel, np.float32)
    bias = np.asarray(bias, np.float32)
    out = bias.shape[0]

    def bn(beta, gamma=1.0):
        return {"gamma": np.full(out, gamma, np.float32),
                "beta": np.asarray(beta, np.float32) * np.ones(out, np.float32),
                "moving_mean": np.zeros(out, np.float32),
                "moving_variance": np.full(out, 1.0 - epsilon, np.float32)}

    state = {}

    def put(prefix, values):
        for k, v in values.items():
            state[f"{prefix}/{k}"] = v

    for i in range(num_conv_branches):
        state[f"conv_kxk/{i}/kernel"] = kernel if i == 0 else np.zeros_like(kernel)
        put(f"conv_kxk/{i}/bn", bn(bias if i == 0 else 0.0))
    if has_scale:
        shape = (1, 1) + kernel.shape[2:]
        state["conv_scale/kernel"] = np.zeros(shape, np.float32)
        put("conv_scale/bn", bn(0.0))
    if has_identity:
        put("identity", bn(0.0, gamma=0.0))
    return state


def _bn(state: dict, prefix: str) -> dict:
    return {k: state[f"{prefix}/{k}"] for k in _BN_KEYS}


def _bn_layer(name):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


@keras.saving.register_keras_serializable(package="mobileone_tf")
class MobileOneBlock(keras.layers.Layer):
    """Train-time (branched) MobileOne block, re-parameterizable by :meth:`fuse`.

    Matches ``MobileOneBlock`` of Apple's ml-mobileone (``inference_mode=False``)
    and timm's ``byobnet.MobileOneBlock``.

    Args:
        filters: output channels. For a depthwise block it must equal the
            input channels.
        kernel_size: square kernel size of the conv branches (3 or 1 in
            MobileOne).
        strides: 1 or 2.
        depthwise: ``True`` for the depthwise (groups = channels) form,
            ``False`` for a dense conv (the pointwise form when
            ``kernel_size == 1``).
        num_conv_branches: k, the number of parallel kxk conv+BN branches.
        use_se: apply squeeze-excite (``int(C * 0.0625)`` bottleneck) to the
            branch sum before the ReLU.

    Call arguments:
        inputs: ``(batch, height, width, in_channels)`` NHWC tensor.
        training: BatchNorm mode.

    Returns:
        ``(batch, ceil(height / strides), ceil(width / strides), filters)``.

    Raises:
        ValueError: on non-positive sizes, strides other than 1/2, or a
            depthwise block whose ``filters`` differ from its input channels.
    """

    def __init__(self, filters, kernel_size=3, strides=1, depthwise=False,
                 num_conv_branches=1, use_se=False, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("filters", filters), ("kernel_size", kernel_size),
                           ("num_conv_branches", num_conv_branches)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer. "
                                 f"Received: {arg}={value}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.depthwise = bool(depthwise)
        self.num_conv_branches = int(num_conv_branches)
        self.use_se = bool(use_se)
        self.in_channels = None

    # -- construction -----------------------------------------------------
    def _conv(self, kernel_size, padding, name):
        if self.depthwise:
            return keras.layers.DepthwiseConv2D(
                kernel_size, strides=self.strides, padding=padding,
                use_bias=False, name=name, dtype=self.dtype_policy)
        return keras.layers.Conv2D(
            self.filters, kernel_size, strides=self.strides, padding=padding,
            use_bias=False, name=name, dtype=self.dtype_policy)

    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        if self.depthwise and in_channels != self.filters:
            raise ValueError(
                f"Depthwise MobileOneBlock '{self.name}' needs filters == input "
                f"channels; got filters={self.filters}, input channels={in_channels}")
        if self.use_se and variants.se_channels(self.filters) < 1:
            raise ValueError(
                f"MobileOneBlock '{self.name}': squeeze-excite needs at least 16 "
                f"channels (bottleneck int(C * 0.0625)); got filters={self.filters}")
        self.in_channels = in_channels
        pad, padding = _padding(self.kernel_size, self.strides)
        self.pad = keras.layers.ZeroPadding2D(pad, name="pad") if pad else None
        self.conv_kxk = [self._conv(self.kernel_size, padding, f"conv_kxk_{i}")
                         for i in range(self.num_conv_branches)]
        self.bn_kxk = [_bn_layer(f"bn_kxk_{i}") for i in range(self.num_conv_branches)]
        padded = input_shape
        if pad:
            padded = (input_shape[0],
                      None if input_shape[1] is None else input_shape[1] + 2 * pad,
                      None if input_shape[2] is None else input_shape[2] + 2 * pad,
                      in_channels)
        for conv, bn in zip(self.conv_kxk, self.bn_kxk):
            conv.build(padded)
            bn.build(conv.compute_output_shape(padded))
        out_shape = self.compute_output_shape(input_shape)
        self.conv_scale = self.bn_scale = None
        if self.kernel_size > 1:
            self.conv_scale = self._conv(1, "valid", "conv_scale")
            self.bn_scale = _bn_layer("bn_scale")
            self.conv_scale.build(input_shape)
            self.bn_scale.build(out_shape)
        self.identity = None
        if in_channels == self.filters and self.strides == 1:
            self.identity = _bn_layer("identity")
            self.identity.build(input_shape)
        self.se_reduce = self.se_expand = None
        if self.use_se:
            rd = variants.se_channels(self.filters)
            self.se_reduce = keras.layers.Conv2D(rd, 1, activation="relu",
                                                 name="se_reduce", dtype=self.dtype_policy)
            self.se_expand = keras.layers.Conv2D(self.filters, 1, activation="sigmoid",
                                                 name="se_expand", dtype=self.dtype_policy)
            self.se_reduce.build((None, 1, 1, self.filters))
            self.se_expand.build((None, 1, 1, rd))
        super().build(input_shape)

    def call(self, inputs, training=None):
        x = self.pad(inputs) if self.pad is not None else inputs
        out = None
        for conv, bn in zip(self.conv_kxk, self.bn_kxk):
            y = bn(conv(x), training=training)
            out = y if out is None else out + y
        if self.conv_scale is not None:
            out = out + self.bn_scale(self.conv_scale(inputs), training=training)
        if self.identity is not None:
            out = out + self.identity(inputs, training=training)
        if self.use_se:
            s = keras.ops.mean(out, axis=(1, 2), keepdims=True)
            out = out * self.se_expand(self.se_reduce(s))
        return keras.ops.relu(out)

    def compute_output_shape(self, input_shape):
        def size(n):
            return None if n is None else -(-int(n) // self.strides)
        return (input_shape[0], size(input_shape[1]), size(input_shape[2]),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, depthwise=self.depthwise,
                      num_conv_branches=self.num_conv_branches, use_se=self.use_se)
        return config

    # -- weights as arrays ---------------------------------------------------
    def _branch_layers(self):
        """(state key prefix, layer) for every weight-holding sublayer."""
        self._require_built()
        pairs = []
        for i, (conv, bn) in enumerate(zip(self.conv_kxk, self.bn_kxk)):
            pairs += [(f"conv_kxk/{i}", conv), (f"conv_kxk/{i}/bn", bn)]
        if self.conv_scale is not None:
            pairs += [("conv_scale", self.conv_scale), ("conv_scale/bn", self.bn_scale)]
        if self.identity is not None:
            pairs.append(("identity", self.identity))
        if self.use_se:
            pairs += [("se/reduce", self.se_reduce), ("se/expand", self.se_expand)]
        return pairs

    def _require_built(self):
        if not self.built:
            raise ValueError(f"MobileOneBlock '{self.name}' is not built yet: "
                             "call it on an input first.")

    def get_state(self) -> dict:
        """All branch weights as numpy arrays keyed ``conv_kxk/0/kernel``,
        ``conv_kxk/0/bn/gamma``, ..., ``conv_scale/...``, ``identity/...``,
        ``se/reduce/kernel``... (Keras layouts: HWIO, depthwise HWC1)."""
        state = {}
        for prefix, layer in self._branch_layers():
            for name, value in zip(_weight_names(layer), layer.get_weights()):
                state[f"{prefix}/{name}"] = value
        return state

    def set_state(self, state: dict):
        """Inverse of :meth:`get_state`.

        Raises:
            ValueError: naming missing or unexpected keys, or wrong shapes.
        """
        assign_layers(self._branch_layers(), state, where=self.name)

    def fuse(self):
        """The single equivalent kernel and bias of the inference-mode block.

        Returns:
            ``(kernel, bias)`` float64 numpy arrays: kernel
            ``(k, k, in, filters)`` (dense) or ``(k, k, channels, 1)``
            (depthwise), bias ``(filters,)``. SE weights are not part of it
            (they are copied as they are).
        """
        state = {k: v for k, v in self.get_state().items() if not k.startswith("se/")}
        return fuse_block_state(state, self.depthwise, self.bn_kxk[0].epsilon)

    def load_fused(self, kernel, bias):
        """Initialises the branches so that :meth:`fuse` returns ``(kernel, bias)``.

        See :func:`unfuse_block_state` (an initialisation, not the original
        training-time weights). SE weights are left untouched.
        """
        self._require_built()
        state = unfuse_block_state(kernel, bias, self.num_conv_branches,
                                   self.conv_scale is not None,
                                   self.identity is not None, self.depthwise)
        assign_layers([p for p in self._branch_layers() if not p[0].startswith("se/")],
                      state, where=self.name)


def _weight_names(layer) -> list:
    """Backend-neutral short weight names (``depthwise_kernel`` -> ``kernel``)."""
    names = []
    for w in layer.weights:
        name = w.name.split("/")[-1].split(":")[0]
        names.append("kernel" if name == "depthwise_kernel" else name)
    return names


def assign_layers(pairs, state: dict, where: str = "", dry_run: bool = False):
    """Sets ``layer`` weights from ``state[f"{prefix}/{weight}"]`` for each pair.

    Args:
        pairs: ``(key prefix, layer)`` pairs.
        state: the arrays, keyed ``{prefix}/{weight name}``.
        where: what to call the target in error messages.
        dry_run: only check.

    Raises:
        ValueError: listing every missing/unexpected key and shape mismatch;
            nothing is assigned unless everything matches.
    """
    plan, missing, bad = [], [], []
    expected = set()
    for prefix, layer in pairs:
        values = []
        for name, w in zip(_weight_names(layer), layer.weights):
            key = f"{prefix}/{name}"
            expected.add(key)
            if key not in state:
                missing.append(key)
                continue
            value = np.asarray(state[key])
            if tuple(value.shape) != tuple(w.shape):
                bad.append(f"{key}: expected {tuple(w.shape)}, got {tuple(value.shape)}")
            values.append(value)
        plan.append((layer, values))
    unexpected = sorted(set(state) - expected)
    if missing or bad or unexpected:
        raise ValueError(
            f"Weights do not match {where or 'the layers'}:"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  unexpected keys: {unexpected}" if unexpected else "")
            + (f"\n  wrong shapes: {bad}" if bad else ""))
    if not dry_run:
        for layer, values in plan:
            layer.set_weights(values)


def fused_block(x, spec, keras_module=keras):
    """Applies the fused (inference) form of a block as standard layers.

    Layers, named after ``spec.name`` (e.g. ``stage1_0``): ``{name}_pad``
    (``ZeroPadding2D``, only for stride 2), ``{name}_conv`` (``Conv2D`` or
    ``DepthwiseConv2D`` with bias), and with SE ``{name}_se_pool``
    (``GlobalAveragePooling2D(keepdims=True)``), ``{name}_se_reduce``
    (1x1 ``Conv2D`` + ReLU), ``{name}_se_expand`` (1x1 ``Conv2D`` + sigmoid),
    ``{name}_se_scale`` (``Multiply``); then ``{name}_act`` (``ReLU``).

    Args:
        x: NHWC input tensor of the given Keras module.
        spec: a :class:`mobileone_tf.variants.BlockSpec` (or any object with
            its attributes).
        keras_module: ``keras`` (Keras 3) or ``tf_keras`` (for TFMOT QAT).
    """
    L = keras_module.layers
    pad, padding = _padding(spec.kernel_size, spec.strides)
    if pad:
        x = L.ZeroPadding2D(pad, name=f"{spec.name}_pad")(x)
    if spec.depthwise:
        x = L.DepthwiseConv2D(spec.kernel_size, strides=spec.strides, padding=padding,
                              use_bias=True, name=f"{spec.name}_conv")(x)
    else:
        x = L.Conv2D(spec.filters, spec.kernel_size, strides=spec.strides,
                     padding=padding, use_bias=True, name=f"{spec.name}_conv")(x)
    if spec.use_se:
        s = L.GlobalAveragePooling2D(keepdims=True, name=f"{spec.name}_se_pool")(x)
        s = L.Conv2D(variants.se_channels(spec.filters), 1, activation="relu",
                     name=f"{spec.name}_se_reduce")(s)
        s = L.Conv2D(spec.filters, 1, activation="sigmoid",
                     name=f"{spec.name}_se_expand")(s)
        x = L.Multiply(name=f"{spec.name}_se_scale")([x, s])
    return L.ReLU(name=f"{spec.name}_act")(x)


def fused_block_layers(layers: dict, name: str) -> list:
    """(state key prefix, layer) pairs of the fused block ``name``.

    Args:
        layers: ``{layer name: layer}`` of the model.
    """
    pairs = [("reparam", layers[f"{name}_conv"])]
    if f"{name}_se_reduce" in layers:
        pairs += [("se/reduce", layers[f"{name}_se_reduce"]),
                  ("se/expand", layers[f"{name}_se_expand"])]
    return pairs
