"""Semantic segmentation on a MobileOne backbone: KerasHub DeepLabV3+ models
(:mod:`.model`), CamVid data (:mod:`.data`), confusion-matrix scores
(:mod:`.metrics`) and a fine-tuning run with checkpoints and resume
(:mod:`.runner`). Needs KerasHub (``pip install "mobileone_tf[hub]"``)."""

from mobileone_tf.segmentation.model import (BACKBONES, STRIDE, ClassMap, build_encoder,
                                             build_segmenter, check_size, deploy_model)

__all__ = ["BACKBONES", "STRIDE", "ClassMap", "build_encoder", "build_segmenter",
           "check_size", "deploy_model"]
