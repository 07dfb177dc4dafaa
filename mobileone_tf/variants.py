"""The MobileOne variant table (S0-S4) and the block layout derived from it.

Source: Apple's reference implementation (ml-mobileone ``mobileone.py``,
``PARAMS``) and the MobileOne paper (Vasu et al., CVPR 2023, Table 7).
This module holds data only: every builder (branched Keras 3, fused Keras 3,
fused ``tf_keras`` for QAT) and the weight porter walk the same
:func:`block_specs` list, so the layouts cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from mobileone_tf.api_export import mobileone_export

NUM_BLOCKS = (2, 8, 10, 1)
"""Number of (depthwise, pointwise) block pairs in stages 1-4."""

STAGE_BASE_WIDTHS = (64, 128, 256, 512)
"""Stage widths before the per-variant width multiplier."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the paper's variant table.

    Attributes:
        name: ``"s0"`` ... ``"s4"``.
        width_multipliers: the four stage width multipliers (w1..w4).
        num_conv_branches: the over-parameterization factor k (number of
            parallel kxk conv+BN branches in every block but the stem).
        num_se_blocks: per stage, how many of the last block pairs carry
            squeeze-excite (on both the depthwise and pointwise half).
        top1: Apple's published ImageNet-1k top-1 accuracy (%).
        params_fused_m: parameter count of the fused (inference) model, in
            millions, as published (2 decimals).
        params_unfused_m: trainable parameter count of the branched model, in
            millions
            (PyTorch ``parameters()``; BatchNorm running statistics are
            buffers and are not counted).
    """

    name: str
    width_multipliers: tuple
    num_conv_branches: int
    num_se_blocks: tuple
    top1: float
    params_fused_m: float
    params_unfused_m: float

    @property
    def stem_width(self) -> int:
        return min(64, int(64 * self.width_multipliers[0]))

    @property
    def stage_widths(self) -> tuple:
        return tuple(
            int(base * w)
            for base, w in zip(STAGE_BASE_WIDTHS, self.width_multipliers)
        )

    @property
    def num_features(self) -> int:
        """Channels of the last feature map (input of the classifier)."""
        return self.stage_widths[-1]


VARIANTS = {
    "s0": Variant("s0", (0.75, 1.0, 1.0, 2.0), 4, (0, 0, 0, 0), 71.4,
                  2.08, 5.29),
    "s1": Variant("s1", (1.5, 1.5, 2.0, 2.5), 1, (0, 0, 0, 0), 75.9,
                  4.76, 4.83),
    "s2": Variant("s2", (1.5, 2.0, 2.5, 4.0), 1, (0, 0, 0, 0), 77.4,
                  7.81, 7.89),
    "s3": Variant("s3", (2.0, 2.5, 3.0, 4.0), 1, (0, 0, 0, 0), 78.1,
                  10.08, 10.17),
    "s4": Variant("s4", (3.0, 3.5, 3.5, 4.0), 1, (0, 0, 5, 1), 79.4,
                  14.84, 14.95),
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MobileOne block as the builders and the porter see it.

    ``name`` follows Apple's module indexing: ``stem`` is Apple's
    ``stage0``; ``stage{i}_{j}`` is Apple's ``stage{i}.{j}`` (even j: the
    depthwise 3x3 half of pair j//2, odd j: the pointwise 1x1 half).
    """

    name: str
    in_channels: int
    filters: int
    kernel_size: int
    strides: int
    depthwise: bool
    use_se: bool
    num_conv_branches: int

    @property
    def has_identity(self) -> bool:
        return self.in_channels == self.filters and self.strides == 1

    @property
    def has_scale(self) -> bool:
        return self.kernel_size > 1


def get_variant(variant) -> Variant:
    """Returns the :class:`Variant` for ``"s0"``..``"s4"`` (case-insensitive).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(variant, Variant):
        return variant
    key = str(variant).lower()
    if key.startswith("mobileone_"):
        key = key[len("mobileone_"):]
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown MobileOne variant {variant!r}. "
            f"Expected one of {sorted(VARIANTS)}."
        )
    return VARIANTS[key]


def block_specs(variant, in_channels: int = 3) -> list:
    """The ordered list of :class:`BlockSpec` for a variant (stem first).

    Matches ``MobileOne.__init__`` / ``_make_stage`` of Apple's reference:
    stem 3x3 stride 2 with k=1, then per stage ``NUM_BLOCKS[i]`` pairs of
    (depthwise 3x3, pointwise 1x1), the first pair of each stage stride 2,
    squeeze-excite on the last ``num_se_blocks[i]`` pairs.
    """
    v = get_variant(variant)
    specs = [BlockSpec("stem", in_channels, v.stem_width, 3, 2, False, False, 1)]
    planes_in = v.stem_width
    for stage, (num_pairs, planes, num_se) in enumerate(
        zip(NUM_BLOCKS, v.stage_widths, v.num_se_blocks), start=1
    ):
        for ix in range(num_pairs):
            strides = 2 if ix == 0 else 1
            use_se = ix >= num_pairs - num_se
            k = v.num_conv_branches
            specs.append(BlockSpec(f"stage{stage}_{2 * ix}", planes_in,
                                   planes_in, 3, strides, True, use_se, k))
            specs.append(BlockSpec(f"stage{stage}_{2 * ix + 1}", planes_in,
                                   planes, 1, 1, False, use_se, k))
            planes_in = planes
    return specs


def se_channels(channels: int) -> int:
    """Squeeze-excite bottleneck width: ``int(C * 0.0625)`` (Apple's SEBlock)."""
    return int(channels * 0.0625)


FEATURE_LEVELS = ("P1", "P2", "P3", "P4", "P5")
"""Pyramid levels: P1 is the stem (stride 2), P2-P5 the ends of stages 1-4
(strides 4, 8, 16, 32)."""


@mobileone_export("mobileone_tf")
def feature_info(variant) -> list:
    """Channels, stride and last block of every pyramid level of a variant.

    Matches timm's ``features_only=True`` feature info for ``mobileone_s*``
    (``byobnet``: stem, then stages 1-4).

    Returns:
        A list of dicts, P1 first: ``{"level": "P1", "channels": int,
        "stride": int, "block": "stem"}`` ... ``{"level": "P5", ...,
        "stride": 32, "block": "stage4_1"}``; ``block`` names the layer whose
        output is the level's feature map (the last block of the stage).
    """
    specs = block_specs(variant)
    ends = [specs[0]] + [[s for s in specs if s.name.startswith(f"stage{i}_")][-1]
                         for i in range(1, 5)]
    return [{"level": level, "channels": spec.filters, "stride": 2 ** (i + 1),
             "block": spec.name} for i, (level, spec) in enumerate(zip(FEATURE_LEVELS, ends))]
