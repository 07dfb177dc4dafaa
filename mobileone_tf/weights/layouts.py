"""PyTorch MobileOne key layouts -> the flat Keras weight state.

Supported key layouts (detected from the keys; the variant is then detected
from the tensor shapes, see :func:`port_checkpoint`):

* ``apple``: Apple's ml-mobileone ``MobileOne`` (``mobileone.py``), unfused
  (``stage0.rbr_conv.0.conv.weight``, ``stage1.0.rbr_conv.{i}.bn.*``,
  ``rbr_scale.conv/bn``, ``rbr_skip.*``, ``se.reduce/expand``, ``linear.*``)
  and fused (``stage0.reparam_conv.weight/bias``, ...);
* ``timm``: timm's ``mobileone_s0..s4`` (``byobnet.MobileOneBlock``),
  unfused (``stem.conv_kxk.0.conv.weight``, ``stages.0.0.conv_scale.*``,
  ``identity.*``, ``attn.fc1/fc2`` squeeze-excite, ``head.fc.*``) and
  re-parameterized (``stem.reparam_conv.*``, ``stages.0.0.reparam_conv.*``);
* ``mmpretrain``: mmpretrain's ``MobileOne`` backbone + ``LinearClsHead``
  (``backbone.stage0.branch_conv_list.0.conv.weight``, ``...norm.*``,
  ``branch_scale``, ``branch_norm``, ``se.conv1/conv2.conv.*``, deployed
  ``branch_reparam``, ``head.fc.*``).

Blocks map by position: Apple/mmpretrain ``stage0`` and timm ``stem`` are our
``stem``; Apple ``stage{i}.{j}`` and timm ``stages.{i-1}.{j}`` are our
``stage{i}_{j}`` (:func:`mobileone_tf.variants.block_specs`). Kernels are
transposed to Keras layouts: conv OIHW -> HWIO, depthwise ``(C, 1, k, k)`` ->
``(k, k, C, 1)``, linear ``(out, in)`` -> ``(in, out)``; floating arrays
become float32.

Reading goes through :func:`mobileone_tf.weights.torch_reader.read_checkpoint`
(safe, torch-free). No TensorFlow or Keras import.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mobileone_tf import state_keys as sk
from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.weights.torch_reader import read_checkpoint

_BN_TORCH = dict(zip(("weight", "bias", "running_mean", "running_var"), sk.BN_KEYS))
_WEIGHT_TORCH = {"weight": sk.KERNEL, "bias": sk.BIAS}


# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------
def detect_layout(keys) -> str:
    """``"apple"``, ``"timm"`` or ``"mmpretrain"`` from the key names.

    Raises:
        ValueError: none of them (the message lists some keys).
    """
    keys = list(keys)
    if any(k.startswith("backbone.stage0.") or ".branch_conv_list." in k
           or ".branch_reparam." in k for k in keys):
        return "mmpretrain"
    if any(k.startswith("stem.") for k in keys) and any(k.startswith("stages.") for k in keys):
        return "timm"
    if any(k.startswith("stage0.") for k in keys):
        return "apple"
    raise ValueError("Not a MobileOne checkpoint: expected Apple (stage0.*), timm "
                     "(stem.*, stages.*) or mmpretrain (backbone.stage0.*) keys; "
                     f"first keys: {sorted(keys)[:8]}")


# parameter kinds of a torch module: its parameter names -> ours
_PARAMS = {"conv": {"weight": sk.KERNEL}, "bn": _BN_TORCH, "conv_bias": _WEIGHT_TORCH}
# (regex of a torch module inside a block, our key prefix (a function of the
# branch index for the kxk branches), parameter kind)
_BLOCK_RULES = {
    "apple": [
        (r"rbr_conv\.(\d+)\.conv", sk.kxk, "conv"),
        (r"rbr_conv\.(\d+)\.bn", sk.kxk_bn, "bn"),
        (r"rbr_scale\.conv", sk.CONV_SCALE, "conv"),
        (r"rbr_scale\.bn", sk.SCALE_BN, "bn"),
        (r"rbr_skip", sk.IDENTITY, "bn"),
        (r"reparam_conv", sk.REPARAM, "conv_bias"),
        (r"se\.reduce", sk.SE_REDUCE, "conv_bias"),
        (r"se\.expand", sk.SE_EXPAND, "conv_bias"),
    ],
    "timm": [
        (r"conv_kxk\.(\d+)\.conv", sk.kxk, "conv"),
        (r"conv_kxk\.(\d+)\.bn", sk.kxk_bn, "bn"),
        (r"conv_scale\.conv", sk.CONV_SCALE, "conv"),
        (r"conv_scale\.bn", sk.SCALE_BN, "bn"),
        (r"identity", sk.IDENTITY, "bn"),
        (r"reparam_conv", sk.REPARAM, "conv_bias"),
        (r"attn\.fc1", sk.SE_REDUCE, "conv_bias"),
        (r"attn\.fc2", sk.SE_EXPAND, "conv_bias"),
    ],
    "mmpretrain": [
        (r"branch_conv_list\.(\d+)\.conv", sk.kxk, "conv"),
        (r"branch_conv_list\.(\d+)\.norm", sk.kxk_bn, "bn"),
        (r"branch_scale\.conv", sk.CONV_SCALE, "conv"),
        (r"branch_scale\.norm", sk.SCALE_BN, "bn"),
        (r"branch_norm", sk.IDENTITY, "bn"),
        (r"branch_reparam", sk.REPARAM, "conv_bias"),
        (r"se\.conv1\.conv", sk.SE_REDUCE, "conv_bias"),
        (r"se\.conv2\.conv", sk.SE_EXPAND, "conv_bias"),
    ],
}
_BLOCK_PREFIX = {
    "apple": (r"stage0\.", r"stage(\d)\.(\d+)\.", r"linear\.(weight|bias)"),
    "mmpretrain": (r"backbone\.stage0\.", r"backbone\.stage(\d)\.(\d+)\.",
                   r"head\.fc\.(weight|bias)"),
    "timm": (r"stem\.", r"stages\.(\d)\.(\d+)\.", r"head\.fc\.(weight|bias)"),
}
_COMPILED = {
    layout: [(re.compile(rx + r"\.(" + "|".join(_PARAMS[kind]) + r")$"), prefix, kind)
             for rx, prefix, kind in rules]
    for layout, rules in _BLOCK_RULES.items()
}


def _our_key(key: str, layout: str):
    """Our flat key for a torch key, or None if the key is not recognised."""
    stem_rx, stage_rx, head_rx = _BLOCK_PREFIX[layout]
    m = re.match(head_rx + "$", key)
    if m:
        return sk.join(sk.HEAD, _WEIGHT_TORCH[m.group(1)])
    m = re.match(stem_rx, key)
    if m:
        block = "stem"
    else:
        m = re.match(stage_rx, key)
        if not m:
            return None
        stage = int(m.group(1)) + (1 if layout == "timm" else 0)
        block = f"stage{stage}_{int(m.group(2))}"
    rest = key[m.end():]
    for rx, prefix, kind in _COMPILED[layout]:
        mm = rx.match(rest)
        if mm:
            *index, param = mm.groups()
            prefix = prefix(int(index[0])) if index else prefix
            return sk.join(block, prefix, _PARAMS[kind][param])
    return None


def _to_keras(key: str, value: np.ndarray, depthwise_blocks) -> np.ndarray:
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
        value = value.astype(np.float32)
    parsed = sk.parse(key)
    if parsed.part == sk.HEAD and parsed.param == sk.KERNEL:
        return value.T if value.ndim == 2 else value
    if parsed.param == sk.KERNEL and value.ndim == 4:
        if not sk.is_se(parsed.part) and parsed.block in depthwise_blocks \
                and value.shape[1] == 1:
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)
    return value


# ---------------------------------------------------------------------------
# Expected state per variant
# ---------------------------------------------------------------------------
def expected_shapes(variant, form: str, classes=None) -> dict:
    """``{our key: shape}`` of a variant's state in ``form`` ("fused"/"branched").

    ``classes=None``: no ``head/*`` entries.
    """
    shapes = {}
    specs = variants.block_specs(variant)
    for s in specs:
        k = s.kernel_size
        kshape = (k, k, s.filters, 1) if s.depthwise else (k, k, s.in_channels, s.filters)
        vec = (s.filters,)
        if form == "fused":
            keys = [sk.REPARAM_KERNEL, sk.REPARAM_BIAS]
        else:
            keys = sk.branch_keys(s.num_conv_branches, s.has_scale, s.has_identity)
        for key in keys:
            parsed = sk.parse_relative(key)
            if parsed.param != sk.KERNEL:
                shapes[sk.join(s.name, key)] = vec
            elif parsed.part == sk.CONV_SCALE:
                shapes[sk.join(s.name, key)] = (1, 1) + kshape[2:]
            else:
                shapes[sk.join(s.name, key)] = kshape
        if s.use_se:
            rd = variants.se_channels(s.filters)
            reduce_kernel, reduce_bias, expand_kernel, expand_bias = sk.se_keys()
            shapes[sk.join(s.name, reduce_kernel)] = (1, 1, s.filters, rd)
            shapes[sk.join(s.name, reduce_bias)] = (rd,)
            shapes[sk.join(s.name, expand_kernel)] = (1, 1, rd, s.filters)
            shapes[sk.join(s.name, expand_bias)] = (s.filters,)
    if classes is not None:
        features = variants.get_variant(variant).num_features
        shapes[sk.HEAD_KERNEL] = (features, classes)
        shapes[sk.HEAD_BIAS] = (classes,)
    return shapes


def _mismatches(state: dict, expected: dict):
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, got {tuple(state[k].shape)}"
             for k in sorted(set(state) & set(expected))
             if tuple(state[k].shape) != tuple(expected[k])]
    return missing, unexpected, wrong


def _format(missing, unexpected, wrong, limit=12):
    def cut(items):
        return items[:limit] + ([f"... ({len(items) - limit} more)"]
                                if len(items) > limit else [])
    return ((f"\n  missing keys: {cut(missing)}" if missing else "")
            + (f"\n  unexpected keys: {cut(unexpected)}" if unexpected else "")
            + (f"\n  wrong shapes: {cut(wrong)}" if wrong else ""))


@mobileone_export("mobileone_tf.weights")
@dataclasses.dataclass
class PortResult:
    """Result of :func:`port_checkpoint`.

    Attributes:
        state: flat ``{key: np.ndarray float32}`` in Keras layouts (see
            :mod:`mobileone_tf.models`).
        variant: ``"s0"`` ... ``"s4"``.
        form: ``"fused"`` or ``"branched"``.
        layout: ``"apple"``, ``"timm"`` or ``"mmpretrain"``.
        classes: classifier width, or None for a backbone-only checkpoint.
    """

    state: dict
    variant: str
    form: str
    layout: str
    classes: int | None


def convert_state_dict(torch_state: dict, variant=None, where="checkpoint") -> PortResult:
    """Converts a ``{torch key: array}`` dict (any supported layout) to our state.

    See :func:`port_checkpoint` for the checks and errors.
    """
    layout = detect_layout(torch_state)
    converted, unknown = {}, []
    for key, value in torch_state.items():
        ours = _our_key(key, layout)
        if ours is None:
            unknown.append(f"{key} {tuple(np.shape(value))}")
        else:
            converted[ours] = (key, value)
    if unknown:
        raise ValueError(f"{where} ({layout} layout): unexpected keys not part of a "
                         f"MobileOne model: {unknown[:12]}"
                         + (f" ... ({len(unknown) - 12} more)" if len(unknown) > 12 else ""))
    parsed = [sk.parse(k) for k in converted]
    has_reparam = any(p.fused for p in parsed)
    has_branch = any(p.branched for p in parsed)
    if has_reparam and has_branch:
        raise ValueError(f"{where}: mixes fused (reparam) and branched keys; "
                         "a checkpoint must be entirely one form")
    form = "fused" if has_reparam else "branched"
    classes = None
    if sk.HEAD_BIAS in converted:
        classes = int(np.shape(converted[sk.HEAD_BIAS][1])[0])

    depthwise = {s.name for s in variants.block_specs("s0") if s.depthwise}
    state = {k: _to_keras(k, v, depthwise) for k, (_, v) in converted.items()}
    torch_name = {k: tk for k, (tk, _) in converted.items()}

    def describe(missing, unexpected, wrong):
        return _format(missing, [f"{torch_name[k]} -> {k}" for k in unexpected],
                       [f"{torch_name[w.split(':')[0]]} -> {w}" for w in wrong])

    results = {}
    for name in variants.VARIANTS:
        results[name] = _mismatches(state, expected_shapes(name, form, classes))
    detected = [n for n, r in results.items() if not any(r)]
    if variant is not None:
        v = variants.get_variant(variant).name
        if any(results[v]):
            looks = f" It looks like MobileOne-{detected[0].upper()}." if detected else ""
            raise ValueError(f"{where} ({layout} layout, {form}) does not fit "
                             f"MobileOne-{v.upper()}.{looks}" + describe(*results[v]))
    else:
        if not detected:
            best = min(results, key=lambda n: sum(len(x) for x in results[n]))
            raise ValueError(f"{where} ({layout} layout, {form}) matches no MobileOne "
                             f"variant; closest is {best}:" + describe(*results[best]))
        v = detected[0]
    return PortResult(state, v, form, layout, classes)


@mobileone_export("mobileone_tf.weights")
def port_checkpoint(path, variant=None) -> PortResult:
    """Reads and converts a PyTorch MobileOne checkpoint.

    Args:
        path: checkpoint file (see :func:`read_checkpoint`).
        variant: expected variant ``"s0"``..``"s4"``; ``None`` detects it from
            the shapes (stem width, stage widths, branch count, SE).

    Returns:
        A :class:`PortResult`; ``state`` holds float32 arrays in Keras
        layouts, validated against :func:`mobileone_tf.variants.block_specs`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) the file is not a readable
            checkpoint (see :func:`read_checkpoint`).
        ValueError: unknown key layout, keys not part of a MobileOne, mixed
            forms, wrong variant, missing/unexpected keys or wrong shapes (the
            message names the keys and shapes).
    """
    torch_state = read_checkpoint(path)
    return convert_state_dict(torch_state, variant, where=str(path))


def check_state(state: dict, variant, form: str) -> int | None:
    """Checks that ``state`` is exactly a ``form`` state of ``variant``.

    Returns:
        The classifier width, or None without ``head/*`` entries.

    Raises:
        ValueError: unknown variant or form, or a state not of that form
            (the message lists missing/unexpected keys and wrong shapes).
    """
    v = variants.get_variant(variant).name
    if form not in ("fused", "branched"):
        raise ValueError(f"form must be 'fused' or 'branched'; got {form!r}")
    classes = int(np.shape(state[sk.HEAD_BIAS])[0]) if sk.HEAD_BIAS in state else None
    missing, unexpected, wrong = _mismatches(state, expected_shapes(v, form, classes))
    if missing or unexpected or wrong:
        raise ValueError(f"state is not a {form} MobileOne-{v.upper()} state:"
                         + _format(missing, unexpected, wrong))
    return classes


@mobileone_export("mobileone_tf.weights")
def count_params(state: dict) -> int:
    """Number of weights in a state (BatchNorm moving statistics excluded)."""
    return int(sum(np.size(v) for k, v in state.items() if not sk.is_moving_statistic(k)))
