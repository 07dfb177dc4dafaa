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

from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.weights.torch_reader import read_checkpoint

_BN_TORCH = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}


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


_BN = r"(weight|bias|running_mean|running_var)"
# (regex on the key inside a block, template for our key); groups: \1.. as named
_BLOCK_RULES = {
    "apple": [
        (r"rbr_conv\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"rbr_conv\.(\d+)\.bn\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"rbr_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"rbr_scale\.bn\.{_BN}", "conv_scale/bn/{0}"),
        (rf"rbr_skip\.{_BN}", "identity/{0}"),
        (r"reparam_conv\.(weight|bias)", "reparam/{0}"),
        (r"se\.reduce\.(weight|bias)", "se/reduce/{0}"),
        (r"se\.expand\.(weight|bias)", "se/expand/{0}"),
    ],
    "timm": [
        (r"conv_kxk\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"conv_kxk\.(\d+)\.bn\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"conv_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"conv_scale\.bn\.{_BN}", "conv_scale/bn/{0}"),
        (rf"identity\.{_BN}", "identity/{0}"),
        (r"reparam_conv\.(weight|bias)", "reparam/{0}"),
        (r"attn\.fc1\.(weight|bias)", "se/reduce/{0}"),
        (r"attn\.fc2\.(weight|bias)", "se/expand/{0}"),
    ],
    "mmpretrain": [
        (r"branch_conv_list\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"branch_conv_list\.(\d+)\.norm\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"branch_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"branch_scale\.norm\.{_BN}", "conv_scale/bn/{0}"),
        (rf"branch_norm\.{_BN}", "identity/{0}"),
        (r"branch_reparam\.(weight|bias)", "reparam/{0}"),
        (r"se\.conv1\.conv\.(weight|bias)", "se/reduce/{0}"),
        (r"se\.conv2\.conv\.(weight|bias)", "se/expand/{0}"),
    ],
}
_BLOCK_PREFIX = {
    "apple": (r"stage0\.", r"stage(\d)\.(\d+)\.", r"linear\.(weight|bias)"),
    "mmpretrain": (r"backbone\.stage0\.", r"backbone\.stage(\d)\.(\d+)\.",
                   r"head\.fc\.(weight|bias)"),
    "timm": (r"stem\.", r"stages\.(\d)\.(\d+)\.", r"head\.fc\.(weight|bias)"),
}
_COMPILED = {
    layout: [(re.compile(rx + r"$"), tpl) for rx, tpl in rules]
    for layout, rules in _BLOCK_RULES.items()
}


def _our_key(key: str, layout: str):
    """Our flat key for a torch key, or None if the key is not recognised."""
    stem_rx, stage_rx, head_rx = _BLOCK_PREFIX[layout]
    m = re.match(head_rx + "$", key)
    if m:
        return "head/" + ("kernel" if m.group(1) == "weight" else "bias")
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
    for rx, tpl in _COMPILED[layout]:
        mm = rx.match(rest)
        if mm:
            groups = list(mm.groups())
            if tpl.startswith(("reparam/", "se/")):
                groups = ["kernel" if g == "weight" else g for g in groups]
            else:  # BatchNorm parameter names
                groups = [_BN_TORCH.get(g, g) for g in groups]
            return f"{block}/{tpl.format(*groups)}"
    return None


def _to_keras(key: str, value: np.ndarray, depthwise_blocks) -> np.ndarray:
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
        value = value.astype(np.float32)
    if key == "head/kernel":
        return value.T if value.ndim == 2 else value
    if key.endswith("/kernel") and value.ndim == 4:
        block = key.split("/")[0]
        if "/se/" not in key and block in depthwise_blocks and value.shape[1] == 1:
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
            shapes[f"{s.name}/reparam/kernel"] = kshape
            shapes[f"{s.name}/reparam/bias"] = vec
        else:
            for i in range(s.num_conv_branches):
                shapes[f"{s.name}/conv_kxk/{i}/kernel"] = kshape
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/conv_kxk/{i}/bn/{b}"] = vec
            if s.has_scale:
                shapes[f"{s.name}/conv_scale/kernel"] = (1, 1) + kshape[2:]
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/conv_scale/bn/{b}"] = vec
            if s.has_identity:
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/identity/{b}"] = vec
        if s.use_se:
            rd = variants.se_channels(s.filters)
            shapes[f"{s.name}/se/reduce/kernel"] = (1, 1, s.filters, rd)
            shapes[f"{s.name}/se/reduce/bias"] = (rd,)
            shapes[f"{s.name}/se/expand/kernel"] = (1, 1, rd, s.filters)
            shapes[f"{s.name}/se/expand/bias"] = (s.filters,)
    if classes is not None:
        features = variants.get_variant(variant).num_features
        shapes["head/kernel"] = (features, classes)
        shapes["head/bias"] = (classes,)
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
    has_reparam = any("/reparam/" in k for k in converted)
    has_branch = any(("/conv_kxk/" in k or "/conv_scale/" in k or "/identity/" in k)
                     for k in converted)
    if has_reparam and has_branch:
        raise ValueError(f"{where}: mixes fused (reparam) and branched keys; "
                         "a checkpoint must be entirely one form")
    form = "fused" if has_reparam else "branched"
    classes = None
    if "head/bias" in converted:
        classes = int(np.shape(converted["head/bias"][1])[0])

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
    classes = int(np.shape(state["head/bias"])[0]) if "head/bias" in state else None
    missing, unexpected, wrong = _mismatches(state, expected_shapes(v, form, classes))
    if missing or unexpected or wrong:
        raise ValueError(f"state is not a {form} MobileOne-{v.upper()} state:"
                         + _format(missing, unexpected, wrong))
    return classes


@mobileone_export("mobileone_tf.weights")
def count_params(state: dict) -> int:
    """Number of weights in a state (BatchNorm moving statistics excluded)."""
    return int(sum(np.size(v) for k, v in state.items() if "/moving_" not in k))
