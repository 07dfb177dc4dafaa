"""MobileOne's re-parameterizable block and its fused, standard-layer form.

``MobileOneBlock`` is the train-time block of the paper (Vasu et al.,
"MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023, Fig. 3,
Sec. 3.2) and of Apple's reference ``MobileOneBlock`` (ml-mobileone):

    y = ReLU(SE(sum_i BN_i(Conv_kxk_i(x)) + BN_s(Conv_1x1(x)) + BN_id(x)))

with ``num_conv_branches`` (k) parallel kxk branches, the 1x1 "scale" branch
when ``kernel_size > 1`` and the BatchNorm-only identity ("skip") branch when
input and output channels match and the stride is 1. Every branch is linear in
inference mode, so the sum folds into one convolution with bias
(:meth:`MobileOneBlock.fused_kernel_bias`; :meth:`MobileOneBlock.fuse` returns the
deploy-time layer, RepVGG-style, Sec. 3.2 of the paper).

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

from mobileone_tf import state_keys as sk
from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.layers.assign import assign_layers, layer_state
from mobileone_tf.layers.batchnorm import BatchNormalization
from mobileone_tf.layers.folding import (BN_EPSILON, BN_MOMENTUM, branched_state_from_fused,
                                         fused_kernel_bias)
from mobileone_tf.layers.fused import apply_fused, conv_padding, fused_layers
from mobileone_tf.layers.grouped import can_group, grouped_branch_sum



def _bn_layer(name, dtype, synchronized=False):
    return BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, dtype=dtype,
        synchronized=synchronized)


@mobileone_export("mobileone_tf.layers")
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
        synchronized_bn: BatchNorm statistics over the global batch of all
            replicas of a ``tf.distribute`` strategy (Keras
            ``BatchNormalization(synchronized=True)``, TensorFlow backend);
            ``False``: per-replica statistics. Same weights either way.
        grouped_branches: compute the k kxk branches as one convolution and
            one BatchNorm pass (:mod:`mobileone_tf.layers.grouped`; same
            outputs, gradients and statistics, same weights). Off by
            default: slower than separate branches with TensorFlow 2.21's
            CPU kernels (docs/training_speed.md). ``False``: one conv and
            one BatchNorm layer call per branch (as Apple's code).

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
                 num_conv_branches=1, use_se=False, synchronized_bn=False,
                 grouped_branches=False, **kwargs):
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
        self.synchronized_bn = bool(synchronized_bn)
        self.grouped_branches = bool(grouped_branches)
        self.in_channels = None

    # -- construction -----------------------------------------------------
    def _conv(self, kernel_size, padding, name, strides=None):
        strides = self.strides if strides is None else strides
        if self.depthwise:
            return keras.layers.DepthwiseConv2D(
                kernel_size, strides=strides, padding=padding,
                use_bias=False, name=name, dtype=self.dtype_policy)
        return keras.layers.Conv2D(
            self.filters, kernel_size, strides=strides, padding=padding,
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
        pad, padding = conv_padding(self.kernel_size, self.strides)
        self.pad = keras.layers.ZeroPadding2D(pad, name="pad") if pad else None
        self.conv_kxk = [self._conv(self.kernel_size, padding, f"conv_kxk_{i}")
                         for i in range(self.num_conv_branches)]
        self.bn_kxk = [_bn_layer(f"bn_kxk_{i}", self.dtype_policy, self.synchronized_bn)
                       for i in range(self.num_conv_branches)]
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
            # stride 1 on the subsampled input (see _scale_input)
            self.conv_scale = self._conv(1, "valid", "conv_scale", strides=1)
            self.bn_scale = _bn_layer("bn_scale", self.dtype_policy, self.synchronized_bn)
            self.conv_scale.build(input_shape)
            self.bn_scale.build(out_shape)
        self.identity = None
        if in_channels == self.filters and self.strides == 1:
            self.identity = _bn_layer("identity", self.dtype_policy, self.synchronized_bn)
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
        if self.grouped_branches and can_group(self, training):
            out = grouped_branch_sum(self, x, training)
        else:
            for conv, bn in zip(self.conv_kxk, self.bn_kxk):
                y = bn(conv(x), training=training)
                out = y if out is None else out + y
        if self.conv_scale is not None:
            out = out + self.bn_scale(self.conv_scale(self._scale_input(inputs)),
                                      training=training)
        if self.identity is not None:
            out = out + self.identity(inputs, training=training)
        if self.use_se:
            s = keras.ops.mean(out, axis=(1, 2), keepdims=True)
            out = out * self.se_expand(self.se_reduce(s))
        return keras.ops.relu(out)

    def _scale_input(self, inputs):
        """The input of the 1x1 scale branch: a 1x1 convolution with stride
        ``s`` and no padding reads pixels ``0, s, 2s, ...``, so it is the
        stride-1 convolution of ``inputs[:, ::s, ::s, :]``. Written this way
        because oneDNN's strided 1x1 backward-weights kernel writes past its
        buffer on AVX2 for channels-last inputs of fewer than 8 channels (the
        stem's RGB; uxlfoundation/oneDNN#6035), which crashes PyTorch's CPU
        training step (the torch backend)."""
        if self.strides == 1:
            return inputs
        return inputs[:, ::self.strides, ::self.strides, :]

    def compute_output_spec(self, inputs, training=None):
        """Output spec from the input's shape (Keras' default would pass no
        shape to :meth:`compute_output_shape` for a NumPy input)."""
        return keras.KerasTensor(self.compute_output_shape(tuple(inputs.shape)),
                                 dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        def size(n):
            return None if n is None else -(-int(n) // self.strides)
        return (input_shape[0], size(input_shape[1]), size(input_shape[2]),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, depthwise=self.depthwise,
                      num_conv_branches=self.num_conv_branches, use_se=self.use_se,
                      synchronized_bn=self.synchronized_bn,
                      grouped_branches=self.grouped_branches)
        return config

    # -- weights as arrays ---------------------------------------------------
    def weight_pairs(self) -> list:
        """``(state key prefix, sublayer)`` for every weight-holding sublayer:
        ``conv_kxk/{i}``, ``conv_kxk/{i}/bn``, ``conv_scale``, ``conv_scale/bn``,
        ``identity``, ``se/reduce``, ``se/expand`` (those the block has).

        Raises:
            ValueError: the block is not built yet.
        """
        if not self.built:
            raise ValueError(f"MobileOneBlock '{self.name}' is not built yet: "
                             "call it on an input first.")
        pairs = []
        for i, (conv, bn) in enumerate(zip(self.conv_kxk, self.bn_kxk)):
            pairs += [(sk.kxk(i), conv), (sk.kxk_bn(i), bn)]
        if self.conv_scale is not None:
            pairs += [(sk.CONV_SCALE, self.conv_scale), (sk.SCALE_BN, self.bn_scale)]
        if self.identity is not None:
            pairs.append((sk.IDENTITY, self.identity))
        if self.use_se:
            pairs += [(sk.SE_REDUCE, self.se_reduce), (sk.SE_EXPAND, self.se_expand)]
        return pairs

    def _branch_pairs(self):
        return [p for p in self.weight_pairs() if not sk.is_se(p[0])]

    def get_state(self) -> dict:
        """All weights as numpy arrays keyed by the relative keys of
        :mod:`mobileone_tf.state_keys` (``conv_kxk/0/kernel``,
        ``conv_kxk/0/bn/gamma``, ...; Keras layouts: HWIO, depthwise HWC1)."""
        return layer_state(self.weight_pairs())

    def set_state(self, state: dict):
        """Inverse of :meth:`get_state`.

        Raises:
            ValueError: naming missing or unexpected keys, or wrong shapes
                (nothing is assigned then).
        """
        assign_layers(self.weight_pairs(), state, where=self.name)

    def fused_kernel_bias(self):
        """The single kernel and bias equal to the branches in inference mode.

        Returns:
            ``(kernel, bias)`` float64 numpy arrays: kernel
            ``(k, k, in, filters)`` (dense) or ``(k, k, channels, 1)``
            (depthwise), bias ``(filters,)``; see
            :func:`mobileone_tf.layers.fused_kernel_bias`. Squeeze-excite
            weights are not part of it.
        """
        return fused_kernel_bias(layer_state(self._branch_pairs()), self.depthwise,
                                 self.bn_kxk[0].epsilon)

    def fused_layers(self) -> dict:
        """The block's deploy-time standard layers, built and holding the
        folded weights (float32): ``{role: layer}`` as
        :func:`mobileone_tf.layers.fused_layers` names them."""
        kernel, bias = self.fused_kernel_bias()
        layers = fused_layers(self, dtype=self.dtype_policy)
        shape = (None, None, None, self.in_channels)
        if "pad" in layers:
            shape = layers["pad"].compute_output_shape(shape)
        layers["conv"].build(shape)
        layers["conv"].set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        if self.use_se:
            for role, source in (("se_reduce", self.se_reduce), ("se_expand", self.se_expand)):
                layers[role].build((None, 1, 1, source.kernel.shape[-2]))
                layers[role].set_weights(source.get_weights())
        return layers

    def fuse(self):
        """Re-parameterizes the block: its deploy-time layer.

        Returns:
            A new ``keras.Model`` of standard layers only (``[ZeroPadding2D]``,
            ``Conv2D`` or ``DepthwiseConv2D`` with the folded kernel and bias,
            squeeze-excite as the block has it, ``ReLU``), named like the
            block, taking ``(batch, H, W, in_channels)``. In inference mode its
            outputs equal the block's. The block is not modified.

        Raises:
            ValueError: the block is not built yet.
        """
        self.weight_pairs()  # raises when not built
        inputs = keras.Input((None, None, self.in_channels), dtype=self.compute_dtype)
        return keras.Model(inputs, apply_fused(inputs, self.fused_layers()), name=self.name)

    def load_fused(self, kernel, bias):
        """Sets the branches so that :meth:`fused_kernel_bias` returns
        ``(kernel, bias)``: an exact-output initialisation (see
        :func:`mobileone_tf.layers.branched_state_from_fused`), not the
        original training-time weights. Squeeze-excite weights are untouched.

        Raises:
            ValueError: wrong shapes (nothing is assigned then).
        """
        state = branched_state_from_fused(kernel, bias, self.num_conv_branches,
                                          self.conv_scale is not None,
                                          self.identity is not None)
        assign_layers(self._branch_pairs(), state, where=self.name)
