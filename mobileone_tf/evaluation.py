"""Top-1 / top-5 accuracy of any ``images -> scores`` callable on labelled
images. ``write_json`` is :func:`mobileone_tf.fileio.write_json`."""

from __future__ import annotations

import numpy as np

from mobileone_tf.fileio import write_json
from mobileone_tf.weights.presets import EVAL_CROP_PCT, EVAL_IMAGE_SIZE

__all__ = ["agreement", "evaluate", "evaluate_folder", "write_json"]


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

    Raises:
        ValueError: an empty dataset, or a label outside the score columns.
    """
    import keras
    bar = keras.utils.Progbar(num_examples, unit_name="image") if progress else None
    top1, top5, labels = [], [], []
    for images, y in dataset:
        scores = np.asarray(predict(np.asarray(images)))
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= scores.shape[-1]):
            raise ValueError(f"label {int(y.max())} out of range for the model's "
                             f"{scores.shape[-1]} classes")
        order = np.argsort(-scores, axis=-1)[:, :5]
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


def evaluate_folder(predict, data_dir, num_classes=None, batch_size=32,
                    image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT, progress=True,
                    include=None):
    """Top-1 / top-5 of ``predict`` on a labelled image folder, skipping (and
    reporting) undecodable images.

    Args:
        predict: as in :func:`evaluate`.
        data_dir: a ``labels.csv`` folder or an ImageFolder; synset-named
            class folders are mapped to ImageNet-1k indices.
        num_classes: the model's class count (``None``: the width of
            ``predict``'s output on one blank image). Labels must lie in
            ``0..num_classes-1``.
        batch_size, image_size, crop_pct: see
            :func:`mobileone_tf.data.eval_dataset` (PIL, torchvision-exact).
        include: glob patterns of the paths to score (``None``: all; see
            :func:`mobileone_tf.data.select_paths`), e.g. a held-out slice.

    Returns:
        the :func:`evaluate` dict (``n`` counts the scored images only),
        plus ``files`` (scored files, in order), ``skipped`` (sorted paths of
        the undecodable images, left out of the scores) and ``n_skipped``.

    Raises:
        FileNotFoundError / ValueError: see
            :func:`mobileone_tf.data.list_examples` (a label out of range
            names its ``labels.csv`` row); ValueError when no image decodes.
    """
    from mobileone_tf import data
    synsets = None
    if data.is_synset_folder(data_dir):
        from mobileone_tf.models import imagenet_synset_to_index
        synsets = imagenet_synset_to_index()
    if num_classes is None:
        blank = np.zeros((1, image_size, image_size, 3), np.float32)
        num_classes = int(np.asarray(predict(blank)).shape[-1])
    paths, _ = data.list_examples(data_dir, synset_to_index=synsets, num_classes=num_classes)
    skipped = []
    dataset = data.eval_dataset(data_dir, batch_size, image_size, crop_pct,
                                synset_to_index=synsets, num_classes=num_classes,
                                skipped=skipped, include=include)
    if include:
        paths = data.select_paths(paths, include=include)
    try:
        result = evaluate(predict, dataset, len(paths), progress=progress)
    except ValueError:
        if len(skipped) < len(paths):
            raise
        raise ValueError(f"no decodable image in {data_dir}: "
                         f"{data.describe_skipped(skipped, len(paths))}") from None
    bad = set(skipped)
    return {**result, "files": [p for p in paths if p not in bad],
            "skipped": sorted(skipped), "n_skipped": len(skipped)}


def agreement(result, reference):
    """Top-1 agreement of two :func:`evaluate_folder` results on the same images.

    A paired measure of how far a compressed model (e.g. int8) is from its
    float reference: far less noisy than the difference of two top-1
    accuracies on the same images.

    Args:
        result, reference: dicts with ``files`` and ``predictions`` (e.g. the
            JSON of ``scripts/evaluate.py --per_image``).

    Returns:
        ``{"agreement": fraction, "n": images in both}``.

    Raises:
        ValueError: a dict lacks per-image predictions, or no file is shared.
    """
    for what, r in (("result", result), ("reference", reference)):
        if "files" not in r or "predictions" not in r:
            raise ValueError(f"{what} has no per-image predictions (evaluate with --per_image)")
    ref = dict(zip(reference["files"], reference["predictions"]))
    pairs = [(p, ref[f]) for f, p in zip(result["files"], result["predictions"]) if f in ref]
    if not pairs:
        raise ValueError("the two results share no image file")
    same = np.mean([int(a) == int(b) for a, b in pairs])
    return {"agreement": float(same), "n": len(pairs)}
