"""Top-1 / top-5 accuracy of any batch -> scores callable on a labelled dataset."""

from __future__ import annotations

import numpy as np

from mobileone_tf import fileio


def evaluate(predict, dataset, num_examples=None, progress=True):
    """Runs ``predict`` over ``dataset`` and scores it.

    Args:
        predict: callable ``(B, H, W, 3) float32 -> (B, classes)`` scores
            (probabilities or logits), e.g. ``model.predict_on_batch`` or a
            :mod:`mobileone_tf.runtime` runner for .tflite / .onnx files.
        dataset: iterable of ``(images, labels)`` batches (see
            :func:`mobileone_tf.data.eval_dataset`).
        num_examples: for the progress bar.
        progress: show a Keras progress bar.

    Returns:
        dict with ``top1``, ``top5`` (fractions), ``n``, and ``predictions``
        (top-1 class per image, in dataset order) and ``labels``.
    """
    import keras
    bar = keras.utils.Progbar(num_examples, unit_name="image") if progress else None
    top1, top5, labels = [], [], []
    for images, y in dataset:
        scores = np.asarray(predict(np.asarray(images)))
        order = np.argsort(-scores, axis=-1)[:, :5]
        y = np.asarray(y)
        top1.append(order[:, 0])
        top5.append((order == y[:, None]).any(axis=1))
        labels.append(y)
        if bar is not None:
            bar.add(len(y))
    if not labels:
        raise ValueError("The dataset is empty")
    preds, labels, hit5 = np.concatenate(top1), np.concatenate(labels), np.concatenate(top5)
    return {"top1": float((preds == labels).mean()), "top5": float(hit5.mean()),
            "n": int(len(labels)), "predictions": preds.tolist(), "labels": labels.tolist()}


def write_json(result: dict, path):
    """Writes ``result`` as JSON atomically (temporary file, then rename)."""
    return fileio.write_json(result, path)
