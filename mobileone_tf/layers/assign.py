"""Validated weight assignment: all-or-nothing ``set_weights`` over several
layers from a flat ``{key: array}`` dict."""

from __future__ import annotations

import numpy as np

from mobileone_tf.api_export import mobileone_export


def weight_names(layer) -> list:
    """Backend-neutral short weight names of ``layer`` in ``layer.weights``
    order (``depthwise_kernel`` is called ``kernel``)."""
    names = []
    for w in layer.weights:
        name = w.name.split("/")[-1].split(":")[0]
        names.append("kernel" if name == "depthwise_kernel" else name)
    return names


@mobileone_export("mobileone_tf.layers")
def layer_state(pairs) -> dict:
    """``{f"{prefix}/{weight name}": array}`` of ``(prefix, layer)`` pairs."""
    state = {}
    for prefix, layer in pairs:
        for name, value in zip(weight_names(layer), layer.get_weights()):
            state[f"{prefix}/{name}"] = value
    return state


@mobileone_export("mobileone_tf.layers")
def assign_layers(pairs, state: dict, where: str = "", dry_run: bool = False):
    """Sets each layer's weights from ``state[f"{prefix}/{weight name}"]``.

    Args:
        pairs: ``(key prefix, built layer)`` pairs.
        state: the arrays, keyed ``{prefix}/{weight name}``.
        where: what to call the target in error messages.
        dry_run: only check.

    Raises:
        ValueError: listing every missing or unexpected key and every shape
            mismatch; nothing is assigned unless everything matches.
    """
    plan, missing, bad, expected = [], [], [], set()
    for prefix, layer in pairs:
        values = []
        for name, w in zip(weight_names(layer), layer.weights):
            key = f"{prefix}/{name}"
            expected.add(key)
            if key not in state:
                missing.append(key)
                continue
            value = np.asarray(state[key])
            if tuple(value.shape) != tuple(w.shape):
                bad.append(f"{key}: expected {tuple(w.shape)}, got {tuple(value.shape)}")
            values.append(value)
        plan.append((layer, values))
    unexpected = sorted(set(state) - expected)
    if missing or bad or unexpected:
        raise ValueError(
            f"Weights do not match {where or 'the layers'}:"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  unexpected keys: {unexpected}" if unexpected else "")
            + (f"\n  wrong shapes: {bad}" if bad else ""))
    if not dry_run:
        for layer, values in plan:
            layer.set_weights(values)
