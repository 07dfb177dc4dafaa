"""Single-output models of KerasHub detectors, for export (every exporter
writes one named output)."""

from __future__ import annotations

import keras

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.hub")("DETECTIONS")
DETECTIONS = "detections"
"""Name of the raw detector output: per anchor, ``[4 box regression | C class
logits]`` (KerasHub RetinaNet's ``bbox_regression`` and ``cls_logits``, before
anchor decoding and non-max suppression)."""


@mobileone_export("mobileone_tf.hub")
def raw_detections_model(detector, name=None):
    """``image -> (B, anchors, 4 + num_classes)`` float32: the detector's box
    regression (center-xywh offsets against its anchors) and class logits
    concatenated, in one output named :data:`DETECTIONS`.

    Args:
        detector: a KerasHub object detector whose outputs are the dict
            ``{"bbox_regression": (B, A, 4), "cls_logits": (B, A, C)}``
            (``keras_hub.models.RetinaNetObjectDetector``), built for a fixed
            image size.

    Raises:
        ValueError: the detector has other outputs.
    """
    image = keras.Input(tuple(detector.inputs[0].shape[1:]), name="image")
    out = detector(image)
    if not isinstance(out, dict) or set(out) != {"bbox_regression", "cls_logits"}:
        raise ValueError(f"{detector.name}: expected outputs bbox_regression and cls_logits; "
                         f"got {sorted(out) if isinstance(out, dict) else type(out).__name__}")
    x = keras.layers.Concatenate(axis=-1, name=DETECTIONS)(
        [out["bbox_regression"], out["cls_logits"]])
    return keras.Model(image, x, name=name or f"{detector.name}_raw")
