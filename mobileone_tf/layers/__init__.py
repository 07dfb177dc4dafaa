"""MobileOne's re-parameterizable block, its fused standard-layer form and the
folding maths between them (see :mod:`mobileone_tf.layers.block`)."""

from mobileone_tf.layers.assign import assign_layers, layer_state, weight_names
from mobileone_tf.layers.block import MobileOneBlock
from mobileone_tf.layers.folding import (BN_EPSILON, BN_KEYS, BN_MOMENTUM,
                                         branched_state_from_fused, fold_batchnorm,
                                         fused_kernel_bias, identity_kernel)
from mobileone_tf.layers.fused import (FUSED_ROLES, apply_fused, conv_padding, fused_block,
                                       fused_block_layers, fused_layers)

__all__ = [
    "MobileOneBlock", "fold_batchnorm", "identity_kernel", "fused_kernel_bias",
    "branched_state_from_fused", "fused_layers", "apply_fused", "fused_block",
    "fused_block_layers", "conv_padding", "weight_names", "layer_state", "assign_layers",
    "BN_EPSILON", "BN_MOMENTUM", "BN_KEYS", "FUSED_ROLES",
]
