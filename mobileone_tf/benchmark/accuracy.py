"""Classification side by side with real ImageNet weights on both sides:
MobileOne and EfficientNet-Lite exported to TFLite (float32 and int8 PTQ),
each file scored on a labelled image folder at the model's own evaluation
transform. Latency is not measured here: ``scripts/benchmark.py`` times the
same models in one interleaved run (``--models``).

Row of a model (:func:`classification_row`): ``parameters`` (deploy graph:
convolution and dense weights and biases, one bias per BatchNorm channel, the
fused form for MobileOne), ``macs`` (:func:`mobileone_tf.benchmark.count_macs`),
``image_size`` and ``crop_pct`` of its evaluation transform, ``float32`` and
``int8``: top-1 / top-5 of its TFLite files.

int8 is the project's recipe for both (README "Quick: post-training int8
with bias correction": :func:`mobileone_tf.export.to_tflite` with per-channel
full-integer PTQ, float32 I/O, calibrated on the ``calibration`` folder, plus
``bias_correction``); activation equalization and bias correction are
implemented for the fused MobileOne only, so EfficientNet-Lite gets plain
PTQ on the same images.
"""

from __future__ import annotations

import os

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.baselines import LITE_VARIANTS

MOBILEONE_EVAL = (224, 0.875)
"""Apple's evaluation transform: 224 px centre crop of the short side resized to 256."""


@mobileone_export("mobileone_tf.benchmark")
def eval_transform(name):
    """``(image_size, crop_pct)`` of a model name: MobileOne 224 / 0.875;
    EfficientNet-LiteN its resolution S and the published crop S / (S + 32)
    (``tensorflow/tpu`` ``CROP_PADDING``; bilinear here, bicubic there).

    Raises:
        ValueError: an unknown name.
    """
    if name.startswith("mobileone_"):
        return MOBILEONE_EVAL
    variant = name.removeprefix("efficientnet_")
    if variant in LITE_VARIANTS:
        size = LITE_VARIANTS[variant][2]
        return size, size / (size + 32)
    raise ValueError(f"unknown model {name!r}: expected mobileone_s0..s4 or "
                     f"efficientnet_{{{','.join(LITE_VARIANTS)}}}")


def build(name, weights):
    """The Keras model of ``name`` with ``weights`` (MobileOne: a checkpoint
    path or ``"imagenet"``; Lite: ``"imagenet"`` or a ``.pth``) at its
    evaluation size, batch 1; logits for Lite, softmax for MobileOne (top-k
    is the same)."""
    size, _ = eval_transform(name)
    if name.startswith("mobileone_"):
        from mobileone_tf.models import MobileOne
        return MobileOne(name.split("_", 1)[1], weights=weights, input_shape=(size, size, 3))
    from mobileone_tf.baselines import efficientnet_lite
    return efficientnet_lite(name.removeprefix("efficientnet_"), weights=weights,
                             input_shape=(size, size, 3))


def deploy_parameters(model):
    """Weights of the deploy graph: convolution / dense kernels and biases,
    plus one folded bias per BatchNorm channel (BatchNorm's scale folds into
    the kernel)."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            total += int(layer.weights[0].shape[0])
        elif isinstance(layer, keras.Model):
            total += deploy_parameters(layer)
        else:
            total += sum(int(w.numpy().size) for w in layer.weights
                         if w.name in ("kernel", "depthwise_kernel", "bias"))
    return total


@mobileone_export("mobileone_tf.benchmark")
def classification_row(name, weights, data_dir, calibration, workdir, bias_correction=True):
    """Exports ``name`` (see :func:`build`) to ``workdir/<name>_float32.tflite``
    and ``_int8.tflite`` and scores both on ``data_dir``
    (:func:`mobileone_tf.evaluation.evaluate_folder`).

    Returns:
        dict (see the module docstring).

    Raises:
        ValueError / FileNotFoundError: an unknown name, missing weights or
            data; see :func:`mobileone_tf.export.to_tflite`.
    """
    from mobileone_tf import evaluation, runtime
    from mobileone_tf.benchmark.macs import count_macs
    from mobileone_tf.export import to_tflite
    from mobileone_tf.models import fuse
    size, crop = eval_transform(name)
    model = build(name, weights)
    mobileone = name.startswith("mobileone_")
    deploy = fuse(model) if mobileone else model
    row = {"model": name, "weights": str(weights), "image_size": size,
           "calibration": str(calibration), "bias_correction": bool(mobileone and bias_correction),
           "crop_pct": round(crop, 4), "parameters": deploy_parameters(deploy),
           "macs": int(count_macs(deploy))}
    os.makedirs(workdir, exist_ok=True)
    for quantize in ("float32", "int8"):
        path = os.path.join(workdir, f"{name}_{quantize}.tflite")
        keywords = {"calibration_data": calibration} if quantize == "int8" else {}
        if quantize == "int8" and mobileone and bias_correction:
            keywords["bias_correction"] = True
        to_tflite(model, path, quantize="int8" if quantize == "int8" else "none",
                  fuse=mobileone, input_size=size, **keywords)
        result = evaluation.evaluate_folder(runtime.load(path), data_dir, 1000, 32, size, crop,
                                            progress=False)
        row[quantize] = {"top1": round(result["top1"], 4), "top5": round(result["top5"], 4),
                         "n": result["n"], "file": path}
    return row
