"""The flat state-key schema (issue 24), against keys written out by hand from
the documented layout (the dataset paths of a ported ``.weights.h5``; the
porter's mapping of Apple/timm keys is checked against timm by
tests/test_porting.py). No TensorFlow."""

import pytest

from mobileone_tf import state_keys as sk
from mobileone_tf.weights import layouts

BN = ["gamma", "beta", "moving_mean", "moving_variance"]


def test_branch_keys_of_stem_and_a_stage_block():
    """S0's stem (one kxk branch, a scale branch, no skip) and a stride-1
    block with four kxk branches and a skip, as the module docs spell them."""
    stem = (["conv_kxk/0/kernel"] + [f"conv_kxk/0/bn/{p}" for p in BN]
            + ["conv_scale/kernel"] + [f"conv_scale/bn/{p}" for p in BN])
    assert sk.branch_keys(1, True, False) == stem
    block = []
    for i in range(4):
        block += [f"conv_kxk/{i}/kernel"] + [f"conv_kxk/{i}/bn/{p}" for p in BN]
    block += [f"identity/{p}" for p in BN]
    assert sk.branch_keys(4, False, True) == block
    assert sk.se_keys() == ["se/reduce/kernel", "se/reduce/bias", "se/expand/kernel",
                            "se/expand/bias"]
    assert (sk.HEAD_KERNEL, sk.HEAD_BIAS, sk.REPARAM_KERNEL) == (
        "head/kernel", "head/bias", "reparam/kernel")


@pytest.mark.parametrize("key, parts", [
    ("stage1_0/conv_kxk/3/bn/moving_variance", ("stage1_0", "conv_kxk", 3, True,
                                                 "moving_variance")),
    ("stem/conv_kxk/0/kernel", ("stem", "conv_kxk", 0, False, "kernel")),
    ("stem/conv_scale/bn/beta", ("stem", "conv_scale", None, True, "beta")),
    ("stage2_1/identity/gamma", ("stage2_1", "identity", None, True, "gamma")),
    ("stage4_0/reparam/bias", ("stage4_0", "reparam", None, False, "bias")),
    ("stage3_9/se/expand/kernel", ("stage3_9", "se/expand", None, False, "kernel")),
    ("head/kernel", ("head", "head", None, False, "kernel")),
])
def test_parse_and_rebuild(key, parts):
    parsed = sk.parse(key)
    assert (parsed.block, parsed.part, parsed.index, parsed.bn, parsed.param) == parts
    assert parsed.key == key
    assert sk.split(key) == (parts[0], key.split("/", 1)[1])


@pytest.mark.parametrize("key", ["stem", "stem/conv_kxk/kernel", "stem/conv_kxk/0/bn/weight",
                                 "stem/identity/bn/gamma", "stem/reparam/gamma",
                                 "head/fc/kernel", "stem/se/squeeze/kernel", "/reparam/bias",
                                 "stem/conv_scale/bn/gamma/x"])
def test_parse_rejects_keys_outside_the_schema(key):
    with pytest.raises(ValueError, match="not a MobileOne state key"):
        sk.parse(key)


def test_form_and_statistics():
    assert sk.form_of(["stem/reparam/kernel", "head/kernel"]) == "fused"
    assert sk.form_of(["stem/conv_kxk/0/kernel", "stem/se/reduce/bias"]) == "branched"
    assert sk.form_of(["head/kernel", "other"]) is None
    assert sk.kxk_indices(["a/conv_kxk/0/kernel", "a/conv_kxk/2/bn/beta", "conv_kxk/1/kernel",
                           "a/conv_scale/kernel"]) == [0, 1, 2]
    assert [sk.is_moving_statistic(f"stem/identity/{p}") for p in BN] == [False, False, True,
                                                                          True]


def test_every_expected_key_parses():
    """Each key the porter checks a checkpoint against (all variants, both
    forms, with a head) is a schema key, and the forms do not mix."""
    for variant in ("s0", "s1", "s2", "s3", "s4"):
        for form in ("fused", "branched"):
            keys = layouts.expected_shapes(variant, form, classes=10)
            parsed = [sk.parse(k) for k in keys]
            assert sk.form_of(keys) == form
            mixed = [p.key for p in parsed if (p.branched if form == "fused" else p.fused)]
            assert not mixed, mixed
