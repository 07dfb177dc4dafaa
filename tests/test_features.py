"""Multi-scale features (pyramid levels P1-P5) against timm's
``features_only=True`` model with the same weights (run by PyTorch in a
subprocess, tests/torch_reference.py)."""

import numpy as np
import pytest

import mobileone_tf as mo
from tests.helpers import rel_max_diff
from tests.torch_fixtures import torch_ref  # noqa: F401 (fixture)

VARIANTS = ("s0", "s1", "s2", "s3", "s4")


def test_feature_info_table():
    # channels and strides as timm's feature_info for mobileone_s0 / s4
    s0 = mo.feature_info("s0")
    assert [f["channels"] for f in s0] == [48, 48, 128, 256, 1024]
    assert [f["stride"] for f in s0] == [2, 4, 8, 16, 32]
    assert [f["channels"] for f in mo.feature_info("s4")] == [64, 192, 448, 896, 2048]


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_match_timm_features_only(torch_ref, variant):  # noqa: F811
    ref = np.load(torch_ref / f"{variant}.npz")
    x = ref["x_nhwc"]
    model = mo.MobileOne(variant, weights=str(torch_ref / f"{variant}_timm.pth"),
                         include_top=False, include_preprocessing=False,
                         input_shape=x.shape[1:])
    outputs = mo.feature_extractor(model).predict(x, verbose=0)
    assert sorted(outputs) == ["P1", "P2", "P3", "P4", "P5"]
    for info in mo.feature_info(variant):
        level = info["level"]
        expected = ref[f"features_{level}"]
        got = outputs[level]
        assert got.shape == expected.shape == (
            x.shape[0], x.shape[1] // info["stride"], x.shape[2] // info["stride"],
            info["channels"])
        assert rel_max_diff(expected, got) <= 1e-4, (variant, level)


def test_fused_features_equal_branched():
    """With random BatchNorm statistics and affine parameters (at their
    initial mean 0 / variance 1 / gamma 1 / beta 0 a folding error that
    drops the mean, variance or affine terms would pass)."""
    from tests.helpers import randomize_batchnorm
    model = randomize_batchnorm(mo.MobileOne("s0", weights=None, include_top=False,
                                             input_shape=(64, 96, 3)), seed=2)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    branched = mo.feature_extractor(model, levels=["P2", "P5"]).predict(x, verbose=0)
    fused = mo.feature_extractor(mo.fuse(model), levels=["P2", "P5"]).predict(x, verbose=0)
    assert sorted(fused) == ["P2", "P5"]
    for level in fused:
        assert rel_max_diff(branched[level], fused[level]) <= 1e-5


@pytest.mark.parametrize("levels", [["P6"], ["p2"], []])
def test_unknown_level_is_named(levels):
    model = mo.MobileOne("s0", weights=None, include_top=False, fused=True)
    with pytest.raises(ValueError, match="pyramid level"):
        mo.feature_extractor(model, levels=levels)


def test_feature_extractor_exports_one_named_output_per_level(tmp_path):
    """A (branched) feature extractor is fused and exported with one output
    per pyramid level, named "P3".."P5": LiteRT and ONNX Runtime run the
    files and every level is compared with Keras by the exporter (strict,
    float32); Core ML is spec-checked (no Core ML runtime on Linux)."""
    from mobileone_tf import export, runtime
    from tests.helpers import randomize_batchnorm
    model = randomize_batchnorm(mo.MobileOne("s0", weights=None, include_top=False,
                                             input_shape=(64, 96, 3)), seed=5)
    features = mo.feature_extractor(model, levels=["P3", "P4", "P5"])
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    shapes = {"P3": [1, 8, 12, 128], "P4": [1, 4, 6, 256], "P5": [1, 2, 3, 1024]}
    want = mo.feature_extractor(model, levels=["P3", "P4", "P5"]).predict(x, verbose=0)
    for fmt, to in (("tflite", export.to_tflite), ("onnx", export.to_onnx),
                    ("saved_model", export.to_saved_model)):
        path, report = to(features, str(tmp_path / f"features.{fmt}"), input_size=(64, 96),
                          verify_data=x)
        assert {o["name"]: o["shape"] for o in report["outputs"]} == shapes, fmt
        verification = report["verification"]
        assert verification["passed"] is True and sorted(verification["per_output"]) == \
            sorted(shapes), fmt
        assert all(v["rel_max_diff"] <= 1e-4 for v in verification["per_output"].values())
        got = runtime.load(path)(x)  # the file, against the branched Keras model
        for level in shapes:
            assert rel_max_diff(want[level], got[level]) <= 1e-4, (fmt, level)
    _, report = export.to_coreml(features, str(tmp_path / "features.mlpackage"),
                                 input_size=(64, 96))
    assert [o["name"] for o in report["outputs"]] == ["P3", "P4", "P5"]
    assert all(report["verification"].values()), report["verification"]
