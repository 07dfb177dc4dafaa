"""MobileOne models: ``keras.applications``-style builders, ``fuse``, the flat
weight state, the recorded model configuration and the ImageNet labels."""

from mobileone_tf.models.builders import (BASE_DOCSTRING, HEAD_NAME, IMAGENET_MEAN,
                                          IMAGENET_STD, MobileOne, MobileOneModel, MobileOneS0,
                                          MobileOneS1, MobileOneS2, MobileOneS3, MobileOneS4,
                                          build_backbone, build_head, preprocess_input)
from mobileone_tf.models.features import feature_extractor, level_layers
from mobileone_tf.models.fusion import fuse
from mobileone_tf.models.info import all_layers, find_mobileone, model_info
from mobileone_tf.models.labels import (decode_predictions, imagenet_class_index,
                                        imagenet_synset_to_index)
from mobileone_tf.models.state import (assign_state, fuse_state, get_state, load_weights,
                                       model_form, read_state, read_state_file, split_state,
                                       state_form, StateFile)
from mobileone_tf.variants import (VARIANTS, BlockSpec, Variant, block_specs, feature_info,
                                   get_variant)

__all__ = [
    "MobileOne", "MobileOneS0", "MobileOneS1", "MobileOneS2", "MobileOneS3", "MobileOneS4",
    "MobileOneModel", "fuse", "feature_extractor", "level_layers", "model_info", "find_mobileone", "all_layers", "feature_info",
    "preprocess_input", "decode_predictions", "imagenet_class_index",
    "imagenet_synset_to_index", "get_state", "assign_state", "fuse_state", "split_state",
    "state_form", "model_form", "load_weights", "read_state",
    "read_state_file", "StateFile", "build_backbone", "build_head",
    "HEAD_NAME", "IMAGENET_MEAN", "IMAGENET_STD", "BASE_DOCSTRING", "VARIANTS", "Variant",
    "BlockSpec", "block_specs", "get_variant",
]
