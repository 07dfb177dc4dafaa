"""mobileone_tf: Apple's MobileOne (CVPR 2023) for Keras 3 / TensorFlow.

Build like ``keras.applications``, re-parameterize with :func:`fuse`, port
PyTorch weights with :mod:`mobileone_tf.porting`, export with
:mod:`mobileone_tf.export`.
"""

from mobileone_tf.layers import MobileOneBlock
from mobileone_tf.models import (
    MobileOne,
    MobileOneS0,
    MobileOneS1,
    MobileOneS2,
    MobileOneS3,
    MobileOneS4,
    decode_predictions,
    fuse,
    preprocess_input,
)
from mobileone_tf.variants import VARIANTS, get_variant

__version__ = "0.1.0"

__all__ = [
    "MobileOne", "MobileOneS0", "MobileOneS1", "MobileOneS2", "MobileOneS3",
    "MobileOneS4", "MobileOneBlock", "fuse", "preprocess_input",
    "decode_predictions", "VARIANTS", "get_variant",
]
