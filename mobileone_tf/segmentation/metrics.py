"""Segmentation scores from one confusion matrix (``keras.metrics.MeanIoU``,
void ignored): mean IoU over the classes, per-class IoU
(``TP / (TP + FP + FN)``), pixel accuracy (``sum TP / labelled pixels``),
the figures SegNet (Badrinarayanan et al., TPAMI 2017, Table 2) and ENet
report for CamVid as class average IoU and global accuracy."""

from __future__ import annotations

import numpy as np


def mean_iou_metric(num_classes, ignore_class, name="mean_iou"):
    """``keras.metrics.MeanIoU`` over ``num_classes`` that takes logits
    ``(B, H, W, C)`` and integer masks ``(B, H, W)``, skipping pixels
    labelled ``ignore_class``."""
    import keras
    return keras.metrics.MeanIoU(num_classes=int(num_classes), ignore_class=ignore_class,
                                 sparse_y_true=True, sparse_y_pred=False, name=name)


def scores(confusion, class_names=None):
    """Scores of a confusion matrix ``confusion[true, predicted]`` (pixels).

    Returns:
        dict: ``mean_iou`` (over classes present in the labels or the
        predictions, as ``keras.metrics.MeanIoU``), ``per_class_iou``
        (``{name: IoU or None when absent}``), ``pixel_accuracy``,
        ``labelled_pixels``.
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    names = list(class_names or [str(i) for i in range(len(cm))])
    iou = {n: (float(t / u) if u > 0 else None) for n, t, u in zip(names, tp, union)}
    present = [v for v in iou.values() if v is not None]
    total = cm.sum()
    return {"mean_iou": float(np.mean(present)) if present else 0.0,
            "per_class_iou": iou,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "labelled_pixels": int(total)}


def evaluate(model, dataset, num_classes, ignore_class, class_names=None):
    """Runs ``model`` (images -> logits) over ``dataset`` (``(images,
    masks)`` batches) and scores it (:func:`scores`; ``mean_iou`` equals
    ``keras.metrics.MeanIoU.result()``)."""
    metric = mean_iou_metric(num_classes, ignore_class)
    for images, masks in dataset:
        metric.update_state(masks, model(images, training=False))
    out = scores(metric.total_cm.numpy(), class_names)
    out["keras_mean_iou"] = float(metric.result())
    return out
