"""Class weighting for segmentation training: weights from the training
masks' class frequencies, and the class-weighted cross-entropy (a Keras
loss: this module imports Keras).

- ``median_frequency``: median frequency balancing (Eigen & Fergus, ICCV
  2015, §4; what SegNet uses on CamVid): ``freq(c)`` = pixels of class
  ``c`` / pixels of the images in which ``c`` appears, and
  ``w(c) = median(freq) / freq(c)``.
- ``enet``: ENet's ``w(c) = 1 / ln(1.02 + p(c))`` with ``p(c)`` = pixels of
  ``c`` / all labelled pixels (Paszke et al., 2016, §5.2).
- a JSON file holding a list of ``num_classes`` non-negative numbers.

Weights are computed on the training split only (never on validation or
test). The loss is PyTorch's ``CrossEntropyLoss(weight=w)`` with mean
reduction: ``sum(w[y] * ce) / sum(w[y])`` over the labelled pixels.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.segmentation")("CLASS_WEIGHTINGS")
CLASS_WEIGHTINGS = ("none", "median_frequency", "enet")
"""The computed weightings (``--class_weights``); anything else is a file."""


@mobileone_export("mobileone_tf.segmentation")
def class_pixel_counts(masks, num_classes, ignore_class=None):
    """Per-class pixel counts of ``masks`` (an iterable of int ``(H, W)``
    arrays; ``ignore_class`` pixels are left out).

    Returns:
        ``(pixels, image_pixels)``: float64 ``(num_classes,)`` arrays: the
        pixels of each class, and the labelled pixels of the images in which
        that class appears (the denominator of median frequency balancing).
    """
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for mask in masks:
        mask = np.asarray(mask).ravel()
        if ignore_class is not None:
            mask = mask[mask != ignore_class]
        counts = np.bincount(mask, minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels[counts > 0] += mask.size
    return pixels, image_pixels


@mobileone_export("mobileone_tf.segmentation")
def median_frequency_weights(pixels, image_pixels):
    """``median(freq) / freq`` with ``freq = pixels / image_pixels``.

    Raises:
        ValueError: a class without a pixel (its weight is undefined).
    """
    pixels, image_pixels = np.asarray(pixels, np.float64), np.asarray(image_pixels, np.float64)
    if (pixels <= 0).any():
        raise ValueError("median frequency weights: class(es) "
                         f"{np.flatnonzero(pixels <= 0).tolist()} have no training pixel")
    freq = pixels / image_pixels
    return np.median(freq) / freq


@mobileone_export("mobileone_tf.segmentation")
def enet_weights(pixels, c=1.02):
    """ENet's ``1 / ln(c + p)`` with ``p = pixels / pixels.sum()``."""
    pixels = np.asarray(pixels, np.float64)
    return 1.0 / np.log(c + pixels / pixels.sum())


@mobileone_export("mobileone_tf.segmentation")
def read_class_weights(path, num_classes):
    """A JSON list of ``num_classes`` finite, non-negative numbers (not all
    zero) -> float64 array.

    Raises:
        FileNotFoundError: no such file. ValueError: one line naming the
            file: not JSON, not a list of numbers, the wrong count, a
            negative or non-finite weight.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--class_weights {path}: no such file (expected one of "
                                f"{list(CLASS_WEIGHTINGS)} or a JSON list of weights)")
    try:
        with open(path) as f:
            values = json.load(f)
        weights = np.asarray(values, np.float64)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--class_weights {path}: not a JSON list of numbers ({e})") from None
    return check_weights(weights, num_classes, f"--class_weights {path}")


def check_weights(weights, num_classes, where="class weights"):
    """``weights`` as float64 ``(num_classes,)``; ValueError naming ``where``."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 1 or len(weights) != int(num_classes):
        raise ValueError(f"{where}: {weights.size} weight(s) for {num_classes} classes "
                         "(one per class, in class-index order)")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(f"{where}: weight of class {int(bad[0])} is {weights[bad[0]]} "
                         "(weights must be finite and >= 0)")
    if not weights.any():
        raise ValueError(f"{where}: every weight is 0")
    return weights


@mobileone_export("mobileone_tf.segmentation")
def class_weights(spec, masks, num_classes, ignore_class=None):
    """The weights ``spec`` names (:data:`CLASS_WEIGHTINGS` or a JSON file),
    computed from ``masks`` (the training split's) when needed; ``None`` for
    ``"none"``/``None``.

    Raises:
        ValueError / FileNotFoundError: see :func:`read_class_weights`,
            :func:`median_frequency_weights`.
    """
    if spec in (None, "", "none"):
        return None
    if spec not in CLASS_WEIGHTINGS:
        return read_class_weights(spec, num_classes)
    pixels, image_pixels = class_pixel_counts(masks, num_classes, ignore_class)
    if spec == "median_frequency":
        return median_frequency_weights(pixels, image_pixels)
    return enet_weights(pixels)


@mobileone_export("mobileone_tf.segmentation")
def weighted_cross_entropy(weights, ignore_class):
    """A Keras loss ``(y_true (B, H, W) int, logits (B, H, W, C)) -> scalar``:
    ``sum(w[y] * ce) / sum(w[y])`` over pixels not labelled
    ``ignore_class`` (PyTorch's ``CrossEntropyLoss(weight=w,
    ignore_index=ignore_class)``)."""
    return ClassWeightedCrossEntropy(weights=[float(w) for w in weights],
                                     ignore_class=ignore_class)


@mobileone_export("mobileone_tf.segmentation")
@keras.saving.register_keras_serializable(package="mobileone_tf")
class ClassWeightedCrossEntropy(keras.losses.Loss):
    """See :func:`weighted_cross_entropy`; ``weights``: one float per class."""

    def __init__(self, weights, ignore_class=None, name="class_weighted_ce", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="none", **kwargs)
        self.weights = [float(w) for w in weights]
        self.ignore_class = ignore_class

    def call(self, y_true, y_pred):
        ops = keras.ops
        y_true = ops.cast(y_true, "int32")
        table = ops.convert_to_tensor(self.weights, "float32")
        if self.ignore_class is not None:
            valid = ops.not_equal(y_true, self.ignore_class)
            y_true = ops.where(valid, y_true, 0)
        else:
            valid = ops.ones_like(y_true, "bool")
        w = ops.take(table, y_true) * ops.cast(valid, "float32")
        ce = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True)
        return ops.sum(w * ce) / ops.maximum(ops.sum(w), 1e-12)

    def get_config(self):
        return {"name": self.name, "weights": self.weights, "ignore_class": self.ignore_class}
