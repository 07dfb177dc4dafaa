"""The k parallel kxk conv+BatchNorm branches of a MobileOne block as one
convolution (train-time speed, same maths).

A block's k branches ``sum_j BN_j(Conv_j(x))`` (Vasu et al., CVPR 2023,
Fig. 3) read the same input. Here the k kernels are stacked into one
convolution with k times the output channels (a depthwise block: one
depthwise convolution with ``depth_multiplier = k``), one BatchNorm pass
normalizes all ``k * C`` channels with the k branches' own parameters
(BatchNorm is per channel: the statistics of each channel are those its own
branch would compute), and the k groups are summed. Outputs, gradients and
the moving statistics equal those of the separate branches up to float
rounding; the weights stay in the branches' own layers (``conv_kxk/{j}``,
``conv_kxk/{j}/bn``), so the state layout, porting and :meth:`fuse` do not
change.

BatchNorm follows ``keras.layers.BatchNormalization`` (Keras 3.15): batch
moments over N, H, W with the biased variance in training (moving averages
``m * momentum + batch * (1 - momentum)``), the moving statistics otherwise,
computed in float32 for float16/bfloat16 inputs.
"""

from __future__ import annotations

import keras


def can_group(block, training) -> bool:
    """Whether :func:`grouped_branch_sum` applies to ``block`` (a built
    :class:`~mobileone_tf.layers.MobileOneBlock`): k > 1 branches whose
    BatchNorms share one setting (all trainable or all frozen, epsilon,
    momentum; not synchronized across replicas, which keeps the separate
    layers)."""
    bns = block.bn_kxk
    if len(bns) < 2 or any(bn.synchronized for bn in bns):
        return False
    first = bns[0]
    return all(bn.trainable == first.trainable and bn.epsilon == first.epsilon
               and bn.momentum == first.momentum for bn in bns)


def _stacked(variables, interleave):
    """Concatenates per-branch arrays: along the last axis branch-major
    (``[b0 | b1 | ...]``), or channel-major for a depthwise kernel/parameter
    (``[c0b0, c0b1, ..., c1b0, ...]``, the output order of a depthwise
    convolution with ``depth_multiplier = k``)."""
    if not interleave:
        return keras.ops.concatenate(list(variables), axis=-1)
    stacked = keras.ops.stack([keras.ops.convert_to_tensor(v) for v in variables], axis=-1)
    shape = keras.ops.shape(stacked)
    return keras.ops.reshape(stacked, (*shape[:-2], shape[-2] * shape[-1]))


def grouped_branch_sum(block, x, training=None):
    """``sum_j BN_j(Conv_j(x))`` over the block's k kxk branches, computed as
    one convolution and one BatchNorm pass (see the module docstring).

    Args:
        block: a built MobileOneBlock for which :func:`can_group` is true.
        x: the block's (padded) input, NHWC.
        training: BatchNorm mode (``True``: batch statistics, and the moving
            statistics of every branch updated).

    Returns:
        ``(batch, H', W', filters)`` in the block's compute dtype.
    """
    convs, bns = block.conv_kxk, block.bn_kxk
    k, depthwise = len(convs), block.depthwise
    conv0 = convs[0]
    if depthwise:  # kernels (kh, kw, C, 1) -> (kh, kw, C, k), output channel c * k + j
        kernel = keras.ops.concatenate([c.kernel for c in convs], axis=-1)
        y = keras.ops.depthwise_conv(x, keras.ops.cast(kernel, conv0.compute_dtype),
                                     conv0.strides, conv0.padding)
    else:  # kernels (kh, kw, Cin, C) -> (kh, kw, Cin, k * C), output channel j * C + c
        kernel = keras.ops.concatenate([c.kernel for c in convs], axis=-1)
        y = keras.ops.conv(x, keras.ops.cast(kernel, conv0.compute_dtype), conv0.strides,
                           conv0.padding)
    out_dtype = keras.backend.standardize_dtype(y.dtype)
    if out_dtype in ("float16", "bfloat16"):
        y = keras.ops.cast(y, "float32")
    gamma = _stacked([bn.gamma for bn in bns], depthwise)
    beta = _stacked([bn.beta for bn in bns], depthwise)
    bn0 = bns[0]
    if training and bn0.trainable:
        mean, variance = keras.ops.moments(y, axes=(0, 1, 2))
        channels = block.filters
        for j, bn in enumerate(bns):
            part = slice(j, None, k) if depthwise else slice(j * channels, (j + 1) * channels)
            for stat, batch in ((bn.moving_mean, mean[part]), (bn.moving_variance,
                                                               variance[part])):
                stat.assign(stat * bn.momentum
                            + keras.ops.cast(batch, stat.dtype) * (1.0 - bn.momentum))
    else:
        mean = _stacked([bn.moving_mean for bn in bns], depthwise)
        variance = _stacked([bn.moving_variance for bn in bns], depthwise)
    y = keras.ops.batch_normalization(y, mean, variance, axis=-1, offset=beta, scale=gamma,
                                      epsilon=bn0.epsilon)
    shape = keras.ops.shape(y)
    if depthwise:
        y = keras.ops.sum(keras.ops.reshape(y, (*shape[:3], block.filters, k)), axis=-1)
    else:
        y = keras.ops.sum(keras.ops.reshape(y, (*shape[:3], k, block.filters)), axis=-2)
    return keras.ops.cast(y, out_dtype)
