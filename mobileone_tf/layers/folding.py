"""Re-parameterization maths of a MobileOne block, in numpy float64.

Every branch of a MobileOne block is linear in inference mode, so the sum of
branches folds into one convolution with bias (Vasu et al., "MobileOne: An
Improved One millisecond Mobile Backbone", CVPR 2023, Sec. 3.2; RepVGG's
folding; Apple's ml-mobileone ``MobileOneBlock._get_kernel_bias``).

Kernels use Keras layouts: ``(kh, kw, in, out)`` for ``Conv2D`` and
``(kh, kw, channels, 1)`` for ``DepthwiseConv2D``. A block *state* is a flat
dict of arrays keyed by the relative keys of :mod:`mobileone_tf.state_keys`
(``conv_kxk/{i}/kernel``, ``conv_kxk/{i}/bn/gamma`` ...). No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from mobileone_tf import state_keys as sk
from mobileone_tf.state_keys import BN_KEYS
from mobileone_tf.api_export import mobileone_export

BN_EPSILON = 1e-5
"""BatchNorm epsilon (PyTorch's default, as in Apple's and timm's code)."""

BN_MOMENTUM = 0.9
"""Keras BatchNorm momentum equal to PyTorch's ``momentum=0.1``."""


def fold_batchnorm(kernel, bn: dict, depthwise: bool, epsilon: float = BN_EPSILON):
    """Folds an inference-mode BatchNorm into the preceding bias-free conv.

    Args:
        kernel: conv kernel, ``(kh, kw, in, out)`` or depthwise
            ``(kh, kw, channels, 1)``.
        bn: dict with ``gamma``, ``beta``, ``moving_mean``,
            ``moving_variance``, each ``(out,)``.
        depthwise: whether ``kernel`` is a depthwise kernel.
        epsilon: the BatchNorm epsilon.

    Returns:
        ``(kernel, bias)`` float64: ``kernel * gamma / std`` and
        ``beta - mean * gamma / std`` with ``std = sqrt(var + eps)``.
    """
    kernel = np.asarray(kernel, np.float64)
    gamma, beta, mean, var = (np.asarray(bn[k], np.float64) for k in BN_KEYS)
    t = gamma / np.sqrt(var + epsilon)
    shape = (1, 1, -1, 1) if depthwise else (1, 1, 1, -1)
    return kernel * t.reshape(shape), beta - mean * t


def identity_kernel(channels: int, kernel_size: int, depthwise: bool):
    """The ``kernel_size`` x ``kernel_size`` kernel (float64) that maps each
    channel to itself: the skip branch written as a convolution."""
    c = kernel_size // 2
    if depthwise:
        kernel = np.zeros((kernel_size, kernel_size, channels, 1))
        kernel[c, c, :, 0] = 1.0
    else:
        kernel = np.zeros((kernel_size, kernel_size, channels, channels))
        kernel[c, c, np.arange(channels), np.arange(channels)] = 1.0
    return kernel


def _bn(state: dict, prefix: str) -> dict:
    return dict(zip(BN_KEYS, (state[k] for k in sk.bn_keys(prefix))))


@mobileone_export("mobileone_tf.layers")
def fused_kernel_bias(state: dict, depthwise: bool, epsilon: float = BN_EPSILON):
    """The single kernel and bias equal to one branched block in inference mode.

    Args:
        state: the block's branch weights (module docstring); squeeze-excite
            keys (``se/...``) are not part of the fold and are ignored.
        depthwise: whether the block is depthwise.
        epsilon: the BatchNorm epsilon.

    Returns:
        ``(kernel, bias)`` float64, kernel in the layout of the kxk branches:
        the sum of the folded kxk branches, the folded 1x1 scale branch
        zero-padded to kxk and the identity branch as a kernel.

    Raises:
        ValueError: the state has no ``conv_kxk`` branch.
    """
    num = len(sk.kxk_indices(state))
    if num == 0:
        raise ValueError(f"Block state has no {sk.CONV_KXK} branch: keys {sorted(state)}")
    kernel = bias = 0.0
    for i in range(num):
        k, b = fold_batchnorm(state[sk.join(sk.kxk(i), sk.KERNEL)], _bn(state, sk.kxk_bn(i)),
                              depthwise, epsilon)
        kernel, bias = kernel + k, bias + b
    ksize = kernel.shape[0]
    scale = sk.join(sk.CONV_SCALE, sk.KERNEL)
    if scale in state:
        k, b = fold_batchnorm(state[scale], _bn(state, sk.SCALE_BN), depthwise, epsilon)
        p = (ksize - k.shape[0]) // 2
        kernel = kernel + np.pad(k, ((p, p), (p, p), (0, 0), (0, 0)))
        bias = bias + b
    if sk.bn_keys(sk.IDENTITY)[0] in state:
        k, b = fold_batchnorm(identity_kernel(kernel.shape[2], ksize, depthwise),
                              _bn(state, sk.IDENTITY), depthwise, epsilon)
        kernel, bias = kernel + k, bias + b
    return kernel, bias


def branched_state_from_fused(kernel, bias, num_conv_branches: int, has_scale: bool,
                              has_identity: bool, epsilon: float = BN_EPSILON) -> dict:
    """Branch weights (float32) whose fold is exactly ``(kernel, bias)``.

    The fused kernel goes into the first kxk branch with a pass-through
    BatchNorm (mean 0, variance ``1 - eps``, gamma 1, beta = ``bias``); every
    other branch outputs zero (zero kernels; the identity BatchNorm has gamma 0
    and beta 0). This is an *initialisation* that reproduces the fused block's
    inference outputs (e.g. to fine-tune from Apple's fused release), not the
    training-time weights, which a fused checkpoint no longer holds.
    """
    kernel = np.asarray(kernel, np.float32)
    bias = np.asarray(bias, np.float32)
    out = bias.shape[0]

    def bn(prefix, beta, gamma=1.0):
        values = (np.full(out, gamma, np.float32),
                  np.asarray(beta, np.float32) * np.ones(out, np.float32),
                  np.zeros(out, np.float32), np.full(out, 1.0 - epsilon, np.float32))
        return dict(zip(sk.bn_keys(prefix), values))

    state = {}
    for i in range(num_conv_branches):
        state[sk.join(sk.kxk(i), sk.KERNEL)] = kernel if i == 0 else np.zeros_like(kernel)
        state.update(bn(sk.kxk_bn(i), bias if i == 0 else 0.0))
    if has_scale:
        state[sk.join(sk.CONV_SCALE, sk.KERNEL)] = np.zeros((1, 1) + kernel.shape[2:],
                                                            np.float32)
        state.update(bn(sk.SCALE_BN, 0.0))
    if has_identity:
        state.update(bn(sk.IDENTITY, 0.0, gamma=0.0))
    return state
