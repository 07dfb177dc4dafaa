"""MobileOne in KerasHub (optional: ``pip install "mobileone_tf[hub]"``).

``MobileOneBackbone`` is a ``keras_hub.models.FeaturePyramidBackbone``
(``pyramid_outputs`` ``"P1".."P5"``), so KerasHub's heads (DeepLabV3,
RetinaNet) take it as their ``image_encoder``. The example (a DeepLabV3+
segmenter, fused and exported, and a RetinaNet detector), the classes and
what is tested: ``docs/backbone.md``.

Apple's ImageNet weights by name, as KerasHub users expect::

    backbone = hub.MobileOneBackbone.from_preset("mobileone_s0_imagenet")
    classifier = keras_hub.models.ImageClassifier.from_preset("mobileone_s0_imagenet")

(names: ``hub.MobileOneBackbone.presets``; see :mod:`mobileone_tf.hub.named_presets`).

Importing this package imports KerasHub (``import mobileone_tf`` does not),
registers :func:`fuse_hub_model` with :func:`mobileone_tf.fuse` and the
preset names with KerasHub.
"""

try:
    import keras_hub  # noqa: F401
except ImportError as e:  # pragma: no cover (depends on the install)
    raise ImportError("mobileone_tf.hub needs KerasHub: pip install 'mobileone_tf[hub]' "
                      f"(keras-hub==0.32.0); import failed: {e}") from e

from mobileone_tf.hub.applications import ApplicationBackbone, pyramid_layer_names
from mobileone_tf.hub.backbone import (STAGES, MobileOneBackbone, apply_finetuning,
                                       batchnorm_layers, check_preset_name, stage_of)
from mobileone_tf.hub.deploy import DETECTIONS, raw_detections_model
from mobileone_tf.hub.fusion import fuse_backbone, fuse_hub_model, handles
from mobileone_tf.hub.preset_files import check_preset
from mobileone_tf.hub.named_presets import ensure_preset, preset_dir, register_named_presets
from mobileone_tf.hub.presets import load_preset, make_preset, make_presets
from mobileone_tf.hub.tasks import (MobileOneImageClassifier,
                                    MobileOneImageClassifierPreprocessor,
                                    MobileOneImageConverter, load_classifier_weights)
from mobileone_tf.models.fusion import register_fuser

register_fuser(handles, fuse_hub_model)
register_named_presets()

__all__ = ["ApplicationBackbone", "pyramid_layer_names", "MobileOneBackbone",
           "MobileOneImageClassifier", "MobileOneImageClassifierPreprocessor",
           "MobileOneImageConverter", "STAGES", "apply_finetuning", "batchnorm_layers",
           "stage_of", "fuse_backbone", "fuse_hub_model", "handles", "load_classifier_weights",
           "check_preset", "load_preset", "make_preset", "make_presets", "DETECTIONS",
           "raw_detections_model", "check_preset_name", "ensure_preset", "preset_dir",
           "register_named_presets"]
