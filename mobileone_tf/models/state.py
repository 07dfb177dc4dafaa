"""The flat weight *state* that porting, loading and fusing exchange, and the
one place that loads a weights file into a model.

A state is a flat ``{key: np.ndarray}`` dict in Keras layouts (HWIO conv
kernels, HWC1 depthwise kernels, ``(in, out)`` dense kernels), keyed as
:mod:`mobileone_tf.state_keys` builds and parses them (``B/conv_kxk/{i}/...``,
``B/conv_scale/...``, ``B/identity/...`` for a branched block ``B``,
``B/reparam/{kernel,bias}`` for a fused one, ``B/se/...`` in both forms,
``head/{kernel,bias}`` for the classifier).

Either form of state loads into either form of model (fusing, or the exact
initialisation of :meth:`MobileOneBlock.load_fused`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import keras

from mobileone_tf import layers as mo_layers
from mobileone_tf import state_keys as sk
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.models.info import all_layers

HEAD_NAME = sk.HEAD_LAYER


def _blocks(model):
    """{block name: MobileOneBlock} and {block name: fused conv layer}."""
    branched, fused = {}, {}
    for layer in all_layers(model):
        if isinstance(layer, mo_layers.MobileOneBlock):
            branched[layer.name] = layer
        elif layer.name.endswith("_conv") and isinstance(
                layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            fused[layer.name[: -len("_conv")]] = layer
    return branched, fused


@mobileone_export("mobileone_tf.models")
def model_form(model) -> str:
    """``"branched"`` if the model has any MobileOneBlock, else ``"fused"``."""
    branched, _ = _blocks(model)
    return "branched" if branched else "fused"


@mobileone_export("mobileone_tf.models")
def get_state(model) -> dict:
    """The model's weights as a flat state dict (module docstring)."""
    state = {}
    branched, fused = _blocks(model)
    layers = {layer.name: layer for layer in all_layers(model)}
    for name, block in branched.items():
        state.update({sk.join(name, k): v for k, v in block.get_state().items()})
    for name in fused:
        state.update({sk.join(name, k): v for k, v in
                      mo_layers.layer_state(mo_layers.fused_block_layers(layers, name)).items()})
    if HEAD_NAME in layers:
        kernel, bias = layers[HEAD_NAME].get_weights()
        state[sk.HEAD_KERNEL], state[sk.HEAD_BIAS] = kernel, bias
    return state


def state_form(state: dict) -> str:
    """``"fused"`` or ``"branched"`` (:func:`mobileone_tf.state_keys.form_of`).

    Raises:
        ValueError: neither (no reparam or branch keys; the first keys named).
    """
    form = sk.form_of(state)
    if form is None:
        raise ValueError(f"Not a MobileOne weight state: no '*/{sk.REPARAM_KERNEL}' or "
                         f"'*/{sk.CONV_KXK}/*' keys (first keys: {sorted(state)[:5]})")
    return form


def split_state(state: dict) -> dict:
    """``{block or 'head': {relative key: array}}``."""
    out = {}
    for key, value in state.items():
        block, rest = sk.split(key)
        out.setdefault(block, {})[rest] = value
    return out


def fuse_state(state: dict, depthwise_blocks) -> dict:
    """Converts a branched state to the fused form (float64 math, float32 out).

    Args:
        state: branched model state.
        depthwise_blocks: names of the depthwise blocks.
    """
    out = {}
    for block, sub in split_state(state).items():
        if block == sk.HEAD or sk.REPARAM_KERNEL in sub:
            out.update({sk.join(block, k): v for k, v in sub.items()})
            continue
        branches = {k: v for k, v in sub.items() if not sk.is_se(k)}
        kernel, bias = mo_layers.fused_kernel_bias(branches, block in depthwise_blocks)
        out[sk.join(block, sk.REPARAM_KERNEL)] = kernel.astype(np.float32)
        out[sk.join(block, sk.REPARAM_BIAS)] = bias.astype(np.float32)
        out.update({sk.join(block, k): v for k, v in sub.items() if sk.is_se(k)})
    return out


@mobileone_export("mobileone_tf.models")
def assign_state(model, state: dict, skip_head_if_absent: bool = True):
    """Assigns a state (either form) to a model (either form).

    A fused state loads into a branched model through
    :meth:`MobileOneBlock.load_fused` (an exact-output initialisation); a
    branched state loads into a fused model by fusing it. The ``head/*``
    entries are ignored when the model has no top (``include_top=False``).

    Raises:
        ValueError: naming missing/unexpected keys or wrong shapes; the
            model is left unchanged in that case.
    """
    branched, fused = _blocks(model)
    layers = {layer.name: layer for layer in all_layers(model)}
    form = state_form(state)
    if fused and form == "branched":
        depthwise = {n for n, layer in fused.items()
                     if isinstance(layer, keras.layers.DepthwiseConv2D)}
        state = fuse_state(state, depthwise)
    sub = split_state(state)
    blocks = set(branched) | set(fused)
    missing = sorted(blocks - set(sub))
    unexpected = sorted(set(sub) - blocks - {sk.HEAD})
    if missing or unexpected:
        raise ValueError("Weights do not match the model's blocks:"
                         + (f"\n  blocks missing from the weights: {missing}" if missing else "")
                         + (f"\n  unexpected blocks in the weights: {unexpected}"
                            if unexpected else ""))
    plan = []  # validate everything before assigning anything
    def full(name, pairs, values):  # full keys in error messages
        return ([(sk.join(name, p), layer) for p, layer in pairs],
                {sk.join(name, k): v for k, v in values.items()})

    for name, block in branched.items():
        values = sub[name]
        if sk.REPARAM_KERNEL in values:
            plan.append(("fused-into-branched", block, values))
        else:
            plan.append(("pairs", *full(name, block.weight_pairs(), values)))
    for name in fused:
        plan.append(("pairs", *full(name, mo_layers.fused_block_layers(layers, name),
                                    sub[name])))
    if HEAD_NAME in layers:
        if sk.HEAD not in sub:
            raise ValueError(f"The model has a classifier ('{HEAD_NAME}') but the "
                             f"weights have none ({sk.HEAD_KERNEL}, {sk.HEAD_BIAS}).")
        plan.append(("pairs", [(sk.HEAD, layers[HEAD_NAME])],
                     {sk.join(sk.HEAD, k): v for k, v in sub[sk.HEAD].items()}))
    elif sk.HEAD in sub and not skip_head_if_absent:
        raise ValueError("The weights have a classifier but the model has none.")
    _check_plan(plan)
    for kind, target, values in plan:
        if kind == "pairs":
            mo_layers.assign_layers(target, values)
        else:
            target.load_fused(values[sk.REPARAM_KERNEL], values[sk.REPARAM_BIAS])
            se = [p for p in target.weight_pairs() if sk.is_se(p[0])]
            mo_layers.assign_layers(se, {k: v for k, v in values.items() if sk.is_se(k)},
                                    where=target.name)


def _check_plan(plan):
    """Dry-runs every assignment so that a mismatch changes nothing."""
    errors = []
    for kind, target, values in plan:
        try:
            if kind == "pairs":
                _dry_assign(target, values)
            else:
                kernel = values[sk.REPARAM_KERNEL]
                w = target.conv_kxk[0].weights[0]
                if tuple(np.shape(kernel)) != tuple(w.shape):
                    raise ValueError(f"{sk.join(target.name, sk.REPARAM_KERNEL)}: expected "
                                     f"{tuple(w.shape)}, got {tuple(np.shape(kernel))}")
                se = [p for p in target.weight_pairs() if sk.is_se(p[0])]
                rest = {k: v for k, v in values.items() if sk.is_se(k)}
                _dry_assign(se, rest)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("\n".join(errors))


def _dry_assign(pairs, values):
    mo_layers.assign_layers(pairs, values, dry_run=True,
                            where=", ".join(layer.name for _, layer in pairs))


@mobileone_export("mobileone_tf.models")
@dataclasses.dataclass(frozen=True)
class StateFile:
    """What :func:`read_state_file` found in a weights file.

    Attributes:
        state: the flat state (float32 arrays), or ``None`` for a plain Keras
            ``.weights.h5`` (not a MobileOne state file).
        variant: ``"s0"``..``"s4"`` (``None`` for a plain Keras file, or an
            ``.h5`` without the attribute).
        form: ``"fused"`` or ``"branched"`` (``None`` as ``variant``).
        layout: ``"apple"``, ``"timm"`` or ``"mmpretrain"`` for a PyTorch
            checkpoint, ``None`` for a ``.weights.h5``.
    """

    state: dict | None
    variant: str | None = None
    form: str | None = None
    layout: str | None = None

    @property
    def description(self) -> str | None:
        """What the file holds, e.g. ``"MobileOne-S0 (fused, apple layout)"``
        (``None`` for a plain Keras file)."""
        if self.state is None:
            return None
        name = f"MobileOne-{(self.variant or '?').upper()}"
        if self.layout is None:
            return f"{name} ({self.form})"
        return f"{name} ({self.form}, {self.layout} layout)"


@mobileone_export("mobileone_tf.models")
def read_state_file(path, variant=None) -> StateFile:
    """Reads a weights file as a flat state, whatever its format.

    Args:
        path: a MobileOne ``.weights.h5`` (:func:`mobileone_tf.weights.write_weights_h5`,
            e.g. a ported checkpoint or a training run's ``fused.weights.h5``) or
            a PyTorch checkpoint (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``,
            ``.safetensors``; Apple, timm or mmpretrain layout), ported on the fly.
        variant: the expected variant (``"s0"``..``"s4"``) or ``None``.

    Returns:
        A :class:`StateFile` (``state`` is ``None`` for a plain Keras
        ``.weights.h5``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, or weights of another variant (named).
    """
    from mobileone_tf import weights as mo_weights
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such weights file: {path}")
    if path.endswith(".h5"):
        state, attrs = mo_weights.read_weights_h5(path, with_attrs=True)
        if state is None:
            return StateFile(None)
        found = str(attrs.get("variant", "?")).lower()
        if variant is not None and found != str(variant).lower():
            raise ValueError(f"{path} holds MobileOne-{found.upper()} weights, "
                             f"not MobileOne-{str(variant).upper()}")
        form = attrs.get("form")
        return StateFile(state, None if found == "?" else found,
                         None if form is None else str(form))
    result = mo_weights.port_checkpoint(path, variant=variant)
    return StateFile(result.state, result.variant, result.form, result.layout)


@mobileone_export("mobileone_tf.models")
def read_state(path, variant=None):
    """:func:`read_state_file` as ``(state, description)``: ``(None, None)``
    for a plain Keras ``.weights.h5``; ``description`` says what the file
    holds, e.g. ``"MobileOne-S0 (fused, apple layout)"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, or weights of another variant (named).
    """
    found = read_state_file(path, variant)
    return found.state, found.description


@mobileone_export("mobileone_tf", "mobileone_tf.models")
def load_weights(model, path):
    """Loads weights from a ``.weights.h5`` or a PyTorch checkpoint into a model.

    MobileOne state files and PyTorch checkpoints (:func:`read_state`) load
    into either form of model, converting between the fused and branched
    forms as needed; other ``.weights.h5`` files go to Keras'
    ``model.load_weights``.

    Returns:
        ``model``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not fit the model (names the keys); the
            model is unchanged then.
    """
    path = os.fspath(path)
    state, what = read_state(path)
    if state is None:  # a plain Keras weights file
        model.load_weights(path)
        return model
    try:
        assign_state(model, state)
    except ValueError as e:
        raise ValueError(f"{path} holds {what} weights that do not fit model "
                         f"'{model.name}':\n{e}") from None
    return model
