"""Verification of an exported file against the fused Keras model.

float32 TFLite / ONNX / SavedModel must match the prepared (fused) Keras
model within ``RTOL * max|output|`` (``1e-4``) with the same top-1 on every
image, else :class:`ExportVerificationError` is raised before anything is
installed; quantized files (float16 / dynamic / int8) report the top-1
agreement and max difference without a pass/fail verdict. The exported file
runs through :func:`mobileone_tf.runtime.load`.
"""

from __future__ import annotations

import os

import numpy as np

from mobileone_tf.export.common import RTOL, ExportVerificationError
from mobileone_tf.export.images import describe, verification_images


def compare(reference, outputs, strict, rtol=RTOL):
    """Compares exported outputs with the Keras reference.

    Args:
        reference, outputs: ``(N, classes)`` arrays, or ``(N, H, W, classes)``
            per-pixel scores (agreement is then per pixel, for the report).
        strict: whether the comparison decides (``passed`` is ``None`` otherwise).
        rtol: tolerance relative to ``max|reference|``.

    Returns:
        dict: ``num_images``, ``max_abs_diff``, ``max_abs_reference``,
        ``rel_max_diff``, ``top1_agreement`` (fraction), ``tolerance``
        (``rtol * max|reference|``), ``strict``, ``passed``.
    """
    reference = np.asarray(reference, np.float64)
    outputs = np.asarray(outputs, np.float64)
    diff = float(np.abs(reference - outputs).max())
    ref_max = float(np.abs(reference).max())
    agree = float(np.mean(reference.argmax(-1) == outputs.argmax(-1)))
    tol = rtol * ref_max
    # dense outputs (per-pixel logits): an argmax can flip only where the top
    # two scores are within 2 * diff, so the tolerance alone decides
    passed = diff <= tol and (agree == 1.0 or reference.ndim > 2)
    return {"num_images": int(len(reference)), "max_abs_diff": diff,
            "max_abs_reference": ref_max, "rel_max_diff": diff / max(ref_max, 1e-12),
            "top1_agreement": agree, "tolerance": tol, "strict": strict,
            "passed": bool(passed) if strict else None}


def compare_outputs(reference, outputs, strict, rtol=RTOL):
    """:func:`compare` for one output, or for every named output of a
    dict-output model (pyramid levels): then ``per_output`` holds each
    comparison, the top-level figures are the worst of them, and
    ``passed`` needs every output to pass.

    Raises:
        ExportVerificationError: the file's outputs are not the model's
            (names differ).
    """
    if not isinstance(reference, dict):
        return compare(reference, outputs, strict, rtol)
    if not isinstance(outputs, dict) or sorted(outputs) != sorted(reference):
        got = sorted(outputs) if isinstance(outputs, dict) else "one unnamed output"
        raise ExportVerificationError(f"the file's outputs {got} are not the model's "
                                      f"{sorted(reference)}. Nothing was written.")
    each = {k: compare(reference[k], outputs[k], strict, rtol) for k in sorted(reference)}
    worst = max(each.values(), key=lambda r: r["rel_max_diff"])
    result = dict(worst, top1_agreement=min(r["top1_agreement"] for r in each.values()),
                  per_output=each)
    if strict:
        result["passed"] = all(r["passed"] for r in each.values())
    return result


def verify_file(fixed, path, verify_data, strict, n_images=8):
    """Runs ``path`` and the prepared Keras model ``fixed`` on the same images.

    Args:
        verify_data: image folder or float32 array ``(N, H, W, 3)``;
            ``None``: ``n_images`` generated images.
        strict: raise when the file does not match (float32 exports).

    Returns:
        :func:`compare`'s dict plus ``images`` (what was used).

    Raises:
        ExportVerificationError: ``strict`` and the comparison failed.
    """
    from mobileone_tf import runtime
    size = tuple(fixed.input.shape[1:3])
    images = verification_images(verify_data, size, n_images)
    reference = fixed.predict(images, batch_size=int(fixed.input.shape[0]), verbose=0)
    outputs = runtime.load(path)(images)
    result = compare_outputs(reference, outputs, strict)
    result["images"] = describe(verify_data, len(images))
    if strict and not result["passed"]:
        raise ExportVerificationError(
            f"{os.path.basename(path)} does not match the fused Keras model: max |diff| "
            f"{result['max_abs_diff']:.3g} (tolerance {result['tolerance']:.3g}), top-1 "
            f"agreement {result['top1_agreement']:.3f}. Nothing was written.")
    return result
