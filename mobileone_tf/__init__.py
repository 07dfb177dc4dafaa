"""mobileone_tf: Apple's MobileOne (Vasu et al., CVPR 2023) for Keras 3 / TensorFlow.

Build like ``keras.applications`` (:func:`MobileOne`, :func:`MobileOneS0` ...),
re-parameterize with :func:`fuse`, port PyTorch weights with
:mod:`mobileone_tf.weights`, export with :mod:`mobileone_tf.export`.

Importing the package imports no TensorFlow: the public names below are
resolved on first use (PEP 562), so ``mobileone_tf.fileio``, ``mobileone_tf.cli``
and the benchmark's timing statistics stay light.
"""

from mobileone_tf import lazy

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "MobileOne": "mobileone_tf.models",
    "MobileOneS0": "mobileone_tf.models",
    "MobileOneS1": "mobileone_tf.models",
    "MobileOneS2": "mobileone_tf.models",
    "MobileOneS3": "mobileone_tf.models",
    "MobileOneS4": "mobileone_tf.models",
    "fuse": "mobileone_tf.models",
    "feature_info": "mobileone_tf.models",
    "feature_extractor": "mobileone_tf.models",
    "model_info": "mobileone_tf.models",
    "preprocess_input": "mobileone_tf.models",
    "decode_predictions": "mobileone_tf.models",
    "MobileOneBlock": "mobileone_tf.layers",
    "VARIANTS": "mobileone_tf.variants",
    "get_variant": "mobileone_tf.variants",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy.exports(__name__, _EXPORTS)
