"""PyTorch MobileOne checkpoints -> Keras weights, and Apple's ImageNet weights.

* :mod:`~mobileone_tf.weights.torch_reader` (+ ``tensor_records``): safe,
  torch-free :func:`read_checkpoint` (``torch.save`` zip and legacy files,
  ``.safetensors``); :class:`CheckpointError`.
* :mod:`~mobileone_tf.weights.layouts`: Apple / timm / mmpretrain key maps,
  :func:`detect_layout`, :func:`convert_state_dict`, :func:`port_checkpoint`
  -> :class:`PortResult`, :func:`expected_shapes`, :func:`count_params`.
* :mod:`~mobileone_tf.weights.h5`: our ``.weights.h5``
  (:func:`write_weights_h5`, :func:`read_weights_h5`, :func:`port_to_h5`).
* :mod:`~mobileone_tf.weights.download`: Keras cache, mirror folder
  (:data:`ENV_MIRROR`), download.
* :mod:`~mobileone_tf.weights.presets`: the preset table (every released
  Apple checkpoint: :data:`PRESETS`, :func:`get_preset`, the eval transform,
  licence, published top-1; ``checkpoints/manifest.json``).
* :mod:`~mobileone_tf.weights.pretrained`: ``weights="imagenet"``
  (:func:`imagenet_weights_path`, :func:`preset_weights_path`,
  :data:`CHECKPOINTS`).

Nothing here imports TensorFlow; Keras only for a download.
"""

from mobileone_tf.weights.download import (CACHE_SUBDIR, ENV_MIRROR, keras_cache_dir,
                                           sha256sum)
from mobileone_tf.weights.h5 import H5_FORMAT, port_to_h5, read_weights_h5, write_weights_h5
from mobileone_tf.weights.layouts import (PortResult, check_state, convert_state_dict,
                                          count_params, detect_layout, expected_shapes,
                                          port_checkpoint)
from mobileone_tf.weights.presets import (BASE_URL, ENV_SHA256, PRESETS, Preset, get_preset,
                                          preset_name, sha256_for)
from mobileone_tf.weights.pretrained import (CHECKPOINTS, imagenet_weights_path,
                                             preset_weights_path)
from mobileone_tf.weights.tensor_records import CheckpointError
from mobileone_tf.weights.torch_reader import read_checkpoint

__all__ = [
    "BASE_URL", "CACHE_SUBDIR", "CHECKPOINTS", "CheckpointError", "ENV_MIRROR", "ENV_SHA256",
    "H5_FORMAT", "PRESETS", "PortResult", "Preset", "check_state", "convert_state_dict",
    "count_params", "detect_layout", "expected_shapes", "get_preset", "imagenet_weights_path",
    "keras_cache_dir", "port_checkpoint", "port_to_h5", "preset_name", "preset_weights_path",
    "read_checkpoint", "read_weights_h5", "sha256_for", "sha256sum", "write_weights_h5",
]
