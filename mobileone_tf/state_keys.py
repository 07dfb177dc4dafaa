"""The flat weight-state key schema: the one place that builds and parses
state keys (no TensorFlow, no Keras).

A *state* (:mod:`mobileone_tf.models.state`) is a flat ``{key: array}`` dict;
a key is ``"{block}/{relative key}"`` with ``block`` a block name of
:func:`mobileone_tf.variants.block_specs` (``stem``, ``stage1_0`` ...) or
``head``:

* branched block: ``conv_kxk/{i}/kernel`` and ``conv_kxk/{i}/bn/{p}`` for the
  ``i``-th kxk branch, ``conv_scale/kernel`` and ``conv_scale/bn/{p}`` (the
  1x1 scale branch), ``identity/{p}`` (the BatchNorm-only skip branch), with
  ``p`` one of :data:`BN_KEYS`;
* fused block: ``reparam/kernel``, ``reparam/bias``;
* squeeze-excite (either form): ``se/reduce/{kernel,bias}``,
  ``se/expand/{kernel,bias}``;
* classifier: ``head/kernel`` ``(features, classes)``, ``head/bias``
  (the weights of the Keras layer :data:`HEAD_LAYER`).

Kernels are in Keras layouts (HWIO, depthwise HWC1, dense ``(in, out)``).
The same names are the dataset paths of :mod:`mobileone_tf.weights.h5` files,
so they are part of the file format: never rename them.
"""

from __future__ import annotations

import dataclasses

SEP = "/"
KERNEL, BIAS = "kernel", "bias"
BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")
"""BatchNorm parameter names, in the order of PyTorch's ``weight``, ``bias``,
``running_mean``, ``running_var``."""
MOVING_KEYS = BN_KEYS[2:]
"""The BatchNorm statistics (not trained by gradient)."""

CONV_KXK = "conv_kxk"
CONV_SCALE = "conv_scale"
IDENTITY = "identity"
REPARAM = "reparam"
SE = "se"
SE_REDUCE = "se/reduce"
SE_EXPAND = "se/expand"
BN = "bn"
HEAD = "head"
"""The pseudo-block of the classifier keys."""
HEAD_LAYER = "predictions"
"""Name of the Keras ``Dense`` layer that holds ``head/kernel``, ``head/bias``."""

BRANCHES = (CONV_KXK, CONV_SCALE, IDENTITY)
"""The branches of a branched (train-time) block."""
HEAD_KERNEL = f"{HEAD}/{KERNEL}"
HEAD_BIAS = f"{HEAD}/{BIAS}"
REPARAM_KERNEL = f"{REPARAM}/{KERNEL}"
REPARAM_BIAS = f"{REPARAM}/{BIAS}"
SCALE_BN = f"{CONV_SCALE}/{BN}"


def join(*parts) -> str:
    """``"a/b/c"`` of the parts (ints allowed), empty parts left out."""
    return SEP.join(str(p) for p in parts if p != "")


def kxk(i: int) -> str:
    """Prefix of the ``i``-th kxk branch's conv: ``conv_kxk/{i}``."""
    return join(CONV_KXK, int(i))


def kxk_bn(i: int) -> str:
    """Prefix of the ``i``-th kxk branch's BatchNorm: ``conv_kxk/{i}/bn``."""
    return join(CONV_KXK, int(i), BN)


def bn_keys(prefix: str) -> list:
    """The four BatchNorm keys under ``prefix`` (:data:`BN_KEYS` order)."""
    return [join(prefix, p) for p in BN_KEYS]


def split(key: str) -> tuple:
    """``(block, relative key)``: ``"stem/reparam/bias"`` -> ``("stem", "reparam/bias")``."""
    block, _, rest = key.partition(SEP)
    return block, rest


def is_se(relative: str) -> bool:
    """Whether a relative (or full) key belongs to squeeze-excite."""
    return relative.startswith(SE + SEP) or f"{SEP}{SE}{SEP}" in relative


def branch_keys(num_conv_branches: int, has_scale: bool, has_identity: bool) -> list:
    """The relative keys of a branched block's branches (no squeeze-excite):
    kernels and BatchNorm parameters, kxk branches first."""
    keys = []
    for i in range(num_conv_branches):
        keys += [join(kxk(i), KERNEL)] + bn_keys(kxk_bn(i))
    if has_scale:
        keys += [join(CONV_SCALE, KERNEL)] + bn_keys(SCALE_BN)
    if has_identity:
        keys += bn_keys(IDENTITY)
    return keys


def se_keys() -> list:
    """The relative squeeze-excite keys (either form)."""
    return [join(SE_REDUCE, KERNEL), join(SE_REDUCE, BIAS),
            join(SE_EXPAND, KERNEL), join(SE_EXPAND, BIAS)]


@dataclasses.dataclass(frozen=True)
class StateKey:
    """A parsed state key (:func:`parse`).

    Attributes:
        block: block name, or ``"head"``.
        part: ``"conv_kxk"``, ``"conv_scale"``, ``"identity"``, ``"reparam"``,
            ``"se/reduce"``, ``"se/expand"`` or ``"head"``.
        index: the kxk branch index (``None`` for other parts).
        bn: whether the key is a BatchNorm parameter.
        param: ``"kernel"``, ``"bias"`` or one of :data:`BN_KEYS`.
    """

    block: str
    part: str
    index: int | None
    bn: bool
    param: str

    @property
    def relative(self) -> str:
        """The key without its block (``"conv_kxk/0/bn/gamma"``)."""
        if self.part == HEAD:
            return self.param
        index = "" if self.index is None else self.index
        return join(self.part, index, BN if self.bn and self.part != IDENTITY else "",
                    self.param)

    @property
    def key(self) -> str:
        """The full key (inverse of :func:`parse`)."""
        return join(self.block, self.relative)

    @property
    def branched(self) -> bool:
        """A key only a branched (train-time) block has."""
        return self.part in BRANCHES

    @property
    def fused(self) -> bool:
        """A key only a fused block has."""
        return self.part == REPARAM


def parse(key: str) -> StateKey:
    """Parses a full state key (module docstring) into its parts.

    Raises:
        ValueError: not a key of the schema (the key is named).
    """
    parts = key.split(SEP)
    bad = ValueError(f"not a MobileOne state key: {key!r}")
    if len(parts) < 2 or not parts[0]:
        raise bad
    block, rest = parts[0], parts[1:]
    if block == HEAD:
        if rest in ([KERNEL], [BIAS]):
            return StateKey(block, HEAD, None, False, rest[0])
        raise bad
    weight = (KERNEL, BIAS)
    if rest[0] == CONV_KXK and len(rest) >= 3 and rest[1].isdigit():
        index, tail = int(rest[1]), rest[2:]
        if tail == [KERNEL]:
            return StateKey(block, CONV_KXK, index, False, KERNEL)
        if len(tail) == 2 and tail[0] == BN and tail[1] in BN_KEYS:
            return StateKey(block, CONV_KXK, index, True, tail[1])
    elif rest[0] == CONV_SCALE:
        if rest[1:] == [KERNEL]:
            return StateKey(block, CONV_SCALE, None, False, KERNEL)
        if len(rest) == 3 and rest[1] == BN and rest[2] in BN_KEYS:
            return StateKey(block, CONV_SCALE, None, True, rest[2])
    elif rest[0] == IDENTITY and len(rest) == 2 and rest[1] in BN_KEYS:
        return StateKey(block, IDENTITY, None, True, rest[1])
    elif rest[0] == REPARAM and len(rest) == 2 and rest[1] in weight:
        return StateKey(block, REPARAM, None, False, rest[1])
    elif rest[0] == SE and len(rest) == 3 and join(SE, rest[1]) in (SE_REDUCE, SE_EXPAND) \
            and rest[2] in weight:
        return StateKey(block, join(SE, rest[1]), None, False, rest[2])
    raise bad


def parse_relative(relative: str) -> StateKey:
    """:func:`parse` of a key without its block (``block`` is ``""``), e.g. the
    keys of one block's state."""
    parsed = parse(join("-", relative))
    return dataclasses.replace(parsed, block="")


def kxk_indices(keys) -> list:
    """The sorted kxk branch indices among full or relative ``keys`` (keys
    outside the schema are ignored)."""
    found = set()
    for key in keys:
        parts = key.split(SEP)
        if CONV_KXK in parts[:2]:
            at = parts.index(CONV_KXK)
            if at + 1 < len(parts) and parts[at + 1].isdigit():
                found.add(int(parts[at + 1]))
    return sorted(found)


def form_of(keys) -> str | None:
    """``"fused"`` when any key is a ``reparam`` key, else ``"branched"`` when
    any is a branch key, else ``None``; keys outside the schema are ignored."""
    found = set()
    for key in keys:
        try:
            parsed = parse(key)
        except ValueError:
            continue
        found.add("fused" if parsed.fused else "branched" if parsed.branched else None)
    return "fused" if "fused" in found else "branched" if "branched" in found else None


def is_moving_statistic(key: str) -> bool:
    """Whether ``key`` is a BatchNorm moving mean or variance."""
    return key.rsplit(SEP, 1)[-1] in MOVING_KEYS
