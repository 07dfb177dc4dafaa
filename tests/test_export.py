"""Export to TFLite / Core ML / ONNX / SavedModel (issue 3).

Conversions are slow (tens of seconds each on a shared 2-core machine), so
artefacts are converted once per module at 64x64 and shared. By default:
S0 (branched, k=4) to all four formats, S4 (squeeze-excite) to TFLite and
Core ML. ``MOBILEONE_TF_EXPORT_ALL=1`` runs every variant S0-S4 to every
format. References: the fused Keras model (numerics, checked inside each
export and again here) and Apple's released S0 weights on real images.
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import data, export, runtime, variants
from mobileone_tf.export import acceptance
from mobileone_tf.export.common import FUSED_TFLITE_OPS
from mobileone_tf.export.images import generated_images
from mobileone_tf.export.prepare import prepare_model
from tests.conftest import ROOT
from tests.helpers import randomize_batchnorm

SIZE = 64
FORMATS = {"tflite": "m.tflite", "onnx": "m.onnx", "saved_model": "m_saved_model",
           "coreml": "m.mlpackage"}
ALL = os.environ.get("MOBILEONE_TF_EXPORT_ALL") == "1"
PLAN = {v: list(FORMATS) for v in ("s0", "s1", "s2", "s3", "s4")} if ALL else {
    "s0": list(FORMATS), "s4": ["tflite", "coreml"]}
CLASS_NAMES = [f"class_{i}" for i in range(1000)]
BASE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "MEAN", "FULLY_CONNECTED",
            "MUL", "ADD", "SOFTMAX"}  # ADD: the input offset (the scale is in the stem conv)
SE_OPS = {"LOGISTIC"}  # SE: MEAN (pool), CONV_2D (1x1 reduce/expand), LOGISTIC, MUL


def _branched(variant, seed=0):
    model = mo.MobileOne(variant, weights=None, input_shape=(None, None, 3))
    return randomize_batchnorm(model, seed)


@pytest.fixture(scope="module", params=sorted(PLAN))
def exported(request, tmp_path_factory):
    variant = request.param
    model = _branched(variant)
    fused = prepare_model(model, input_size=SIZE)
    out = {}
    for fmt in PLAN[variant]:
        d = tmp_path_factory.mktemp(f"{variant}_{fmt}")
        kw = {} if fmt == "saved_model" else {"class_names": CLASS_NAMES}
        out[fmt] = export.export(model, str(d / FORMATS[fmt]), fmt, input_size=SIZE, **kw)
    return variant, model, fused, out


def test_float_exports_match_keras(exported):
    variant, model, fused, out = exported
    images = generated_images(4, SIZE, seed=1)
    branched_out = model.predict(images, verbose=0)
    fused_out = fused.predict(images, batch_size=1, verbose=0)
    np.testing.assert_allclose(fused_out, branched_out, atol=1e-4 * np.abs(branched_out).max())
    for fmt, (path, report) in out.items():
        v = report["verification"]
        if fmt == "coreml":
            assert all(v.values()), v
            continue
        assert v["passed"] and v["max_abs_diff"] <= v["tolerance"], (fmt, v)
        got = runtime.load(path)(images)  # independent of the report
        assert got.shape == (4, 1000)
        # the bound is against the fused Keras model; the branched model
        # adds the fusion's own float32 rounding on top, so it gets twice the room
        assert np.abs(got - fused_out).max() <= 1e-4 * np.abs(fused_out).max(), fmt
        assert np.abs(got - branched_out).max() <= 2e-4 * np.abs(branched_out).max(), fmt
        assert (got.argmax(-1) == branched_out.argmax(-1)).all(), fmt


def test_tflite_op_set(exported):
    variant, _, _, out = exported
    path, report = out["tflite"]
    ops = runtime.tflite_ops(path)
    assert ops == report["ops"]
    allowed = BASE_OPS | (SE_OPS if variant == "s4" else set())
    assert set(ops) <= allowed, set(ops) - allowed
    assert allowed <= FUSED_TFLITE_OPS
    n_blocks = len(variants.block_specs(variant))
    n_se = sum(s.use_se for s in variants.block_specs(variant))
    # one conv per block (fused), plus 2 1x1 convs per SE; no BN arithmetic, no branch ADDs;
    # the normalization folded: one ADD, no MUL (tests/test_export_speed.py checks it is exact)
    assert ops["CONV_2D"] + ops["DEPTHWISE_CONV_2D"] == n_blocks + 2 * n_se
    assert ops["ADD"] == 1 and ops.get("MUL", 0) == n_se
    assert report["normalization"] == "folded" and report["xnnpack"]["partitions"] == 1
    assert ops.get("LOGISTIC", 0) == n_se and ops["MEAN"] == 1 + n_se
    assert report["inputs"][0]["name"] == "image"
    assert report["inputs"][0]["shape"] == [1, SIZE, SIZE, 3]
    assert report["outputs"][0]["name"] == "probabilities"
    labels = pathlib.Path(path).with_name("labels.txt").read_text().splitlines()
    assert labels == CLASS_NAMES


def test_coreml_spec(exported):
    variant, _, fused, out = exported
    path, report = out["coreml"]
    check = export.check_coreml(path, keras_model=fused, class_names=CLASS_NAMES)
    assert check["checks"] == {k: True for k in check["checks"]}
    assert {"ml_program", "no_batch_norm", "classifier_labels",
            "conv_weights_fp16_equal", "image_scale_1_bias_0"} <= set(check["checks"])
    assert [o["name"] for o in check["outputs"]] == ["classLabel", "classLabelProbs"]
    assert "batch_norm" not in check["ops"]
    assert check["metadata"]["author"] and "Apple" in check["metadata"]["license"]
    # the checker can fail: wrong labels, and weights of another model
    assert not export.check_coreml(path, class_names=CLASS_NAMES[::-1])["checks"][
        "classifier_labels"]
    other = prepare_model(_branched(variant, seed=3), input_size=SIZE)
    assert not export.check_coreml(path, keras_model=other)["checks"]["conv_weights_fp16_equal"]
    # scripts/verify_coreml.py's function: the package's own labels, no weights
    result = export.verify_coreml(path, variant, weights=None)
    assert result["passed"] and result["checks"]["classifier_labels"]
    assert "conv_weights_fp16_equal" not in result["checks"]
    with pytest.raises(FileNotFoundError, match="missing.mlpackage"):
        export.verify_coreml(str(pathlib.Path(path).with_name("missing.mlpackage")), variant)


def test_onnx_and_saved_model_io(exported):
    variant, _, _, out = exported
    if "onnx" not in out:
        pytest.skip("ONNX not exported for this variant in the default plan")
    report = out["onnx"][1]
    assert report["opset"] == 17
    assert report["inputs"] == [{"name": "image", "dtype": "float32", "shape": [1, SIZE, SIZE, 3]}]
    assert report["outputs"][0]["name"] == "probabilities"
    assert "BatchNormalization" not in report["ops"]
    import tensorflow as tf
    sig = tf.saved_model.load(out["saved_model"][0]).signatures["serving_default"]
    assert list(sig.structured_input_signature[1]) == ["image"]
    assert list(sig.structured_outputs) == ["probabilities"]


def test_quantized_tflite_reports(tmp_path):
    """float16 stays within 1e-2 of the float model; full-integer int8 with
    uint8 I/O has no float op left, and the runtime helpers (de)quantize it."""
    model = _branched("s0")
    calib = tmp_path / "calib"
    calib.mkdir()
    from PIL import Image
    for i, img in enumerate(generated_images(4, 80, seed=5)):
        Image.fromarray(img.astype(np.uint8)).save(calib / f"{i}.png")
    images = generated_images(3, SIZE, seed=6)
    for mode, kw in (("float16", {}), ("int8", {"calibration_data": str(calib),
                                                "calibration_steps": 4, "int8_io": "uint8"})):
        path, report = export.to_tflite(model, str(tmp_path / f"{mode}.tflite"), quantize=mode,
                                        input_size=SIZE, class_names=CLASS_NAMES, **kw)
        v = report["verification"]
        assert v["strict"] is False and v["passed"] is None and np.isfinite(v["max_abs_diff"])
        graph = runtime.tflite_graph_report(path)
        assert graph["ops"] == report["ops"]
        np.testing.assert_array_equal(runtime.run_tflite(path, images),
                                      runtime.load(path)(images))
        if mode == "int8":
            assert report["equalized"] is True
            assert report["calibration"] == {"data": str(calib), "steps": 4, "int8_io": "uint8"}
            assert report["inputs"][0]["dtype"] == "uint8"
            assert report["outputs"][0]["dtype"] == "uint8"
            assert set(report["ops"]) <= BASE_OPS | {"QUANTIZE", "DEQUANTIZE"}
            assert graph["float_ops"] == [] and graph["output_step"] > 0
            scale, zero = report["inputs"][0]["quantization"]
            d = {"dtype": np.uint8, "quantization": (scale, zero)}
            np.testing.assert_array_equal(runtime.quantize_input(images, d),
                                          np.clip(np.round(images / scale + zero), 0, 255))
        else:
            assert v["rel_max_diff"] < 1e-2
            assert "CONV_2D" in graph["float_ops"]


def test_int8_from_array_without_verification(tmp_path):
    """What the benchmark needs: int8 calibrated on an in-memory array (no
    image folder), the given form kept (``fuse=False``), no verification."""
    model = mo.MobileOne("s0", weights=None, fused=True, input_shape=(None, None, 3))
    images = generated_images(6, SIZE, seed=2)
    path, report = export.to_tflite(model, str(tmp_path / "a.tflite"), quantize="int8",
                                    calibration_data=images, calibration_steps=4,
                                    input_size=SIZE, fuse=False, verify=False)
    assert "verification" not in report
    assert report["calibration"]["data"] == "4 given images"
    assert "QUANTIZE" in report["ops"] and report["inputs"][0]["dtype"] == "float32"
    with pytest.raises(export.ExportError, match="size"):
        export.to_tflite(model, str(tmp_path / "b.tflite"), quantize="int8",
                         calibration_data=generated_images(2, 40), input_size=SIZE)
    with pytest.raises(export.ExportError, match=r"\(N, H, W, 3\)"):
        export.to_tflite(model, str(tmp_path / "c.tflite"), quantize="int8",
                         calibration_data=np.zeros((2, SIZE, SIZE)), input_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tflite", "labels.txt"]


def test_atomic_and_no_overwrite(tmp_path, monkeypatch):
    model = mo.MobileOne("s0", weights=None, fused=True, input_shape=(None, None, 3))
    out = tmp_path / "m.tflite"
    out.write_bytes(b"old")
    with pytest.raises(export.ExportError, match="exists"):
        export.to_tflite(model, str(out), input_size=SIZE)
    assert out.read_bytes() == b"old"
    with pytest.raises(export.ExportError, match="not valid for tflite"):
        export.to_tflite(model, str(tmp_path / "x.tflite"), quantize="palettize4")
    with pytest.raises(export.ExportError, match="calibration_data"):
        export.to_tflite(model, str(tmp_path / "x.tflite"), quantize="int8")
    with pytest.raises(export.ExportError, match="Unknown format"):
        export.export(model, str(tmp_path / "x.bin"), "tfjs")
    # a failing verification leaves nothing behind
    from mobileone_tf.export import verify
    orig = verify.compare
    monkeypatch.setattr(verify, "compare", lambda *a, **k: dict(orig(*a, **k), passed=False))
    with pytest.raises(export.ExportVerificationError):
        export.to_onnx(model, str(tmp_path / "bad.onnx"), input_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _corrupt_calibration(folder):
    folder.mkdir()
    from PIL import Image
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")


@pytest.mark.parametrize("args, message", [
    (["--format", "tfjs", "--output", "m.tflite"], "--format"),
    (["--format", "onnx", "--quantize", "int8", "--output", "m.onnx"], "not valid for onnx"),
    (["--format", "tflite", "--quantize", "int8", "--output", "m.tflite"], "--calibration_data"),
    (["--format", "tflite", "--quantize", "int8", "--calibration_data", "nowhere",
      "--output", "m.tflite"], "nowhere"),
    (["--format", "tflite", "--weights", "missing.weights.h5", "--output", "m.tflite"],
     "missing.weights.h5"),
    (["--format", "tflite", "--weights", "garbage.pth", "--output", "m.tflite"],
     "garbage.pth"),
    (["--format", "tflite", "--weights", "none", "--output", "existing.tflite"], "--overwrite"),
    (["--format", "tflite", "--weights", "none", "--quantize", "int8", "--input_size", "64",
      "--calibration_data", "calib", "--output", "m.tflite"], "b.jpg"),
])
def test_cli_bad_input(tmp_path, args, message):
    """Every bad input: exit 1 (2 for a bad flag), one ``error:`` line naming
    the file or flag, no traceback, nothing written."""
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "existing.tflite").write_bytes(b"old")
    _corrupt_calibration(tmp_path / "calib")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode in (1, 2), r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "existing.tflite").read_bytes() == b"old"


def test_docs_use_exported_names(exported):
    variant, _, _, out = exported
    if variant != "s0":
        pytest.skip("names checked on S0")
    android = (ROOT / "docs" / "android.md").read_text()
    ios = (ROOT / "docs" / "ios.md").read_text()
    tfl = out["tflite"][1]
    for t in tfl["inputs"] + tfl["outputs"]:
        assert f'"{t["name"]}"' in android, t["name"]
    assert "[1, 224, 224, 3]" in android and "[1, 1000]" in android
    assert "labels.txt" in android
    ml = export.check_coreml(out["coreml"][0])
    for name in [ml["inputs"][0]["name"]] + [o["name"] for o in ml["outputs"]]:
        assert name in ios, name
    # every quoted tensor/feature name in the docs exists in the files
    quoted = set(re.findall(r'"(image|probabilities|logits|classLabel\w*)"', android + ios))
    assert quoted <= {"image", "probabilities", "classLabel", "classLabelProbs"}


@pytest.fixture(scope="module")
def apple_s0(shared_data):
    """Apple's fused S0, ported by the package (skips without ../shared/data; fails under CI)."""
    return acceptance.build_s0(shared_data / "mobileone_s0.pth.tar")


def test_real_s0_tflite_top1_equals_keras(apple_s0, shared_data, tmp_path):
    """Apple's S0 on 100 real validation images: float32 TFLite top-1 equals
    the Keras top-1 image for image (full figures: scripts/export_acceptance.py)."""
    val = shared_data / "imagenet-val-1300"
    paths, labels = acceptance.labelled(val, 100)
    path, report = export.to_tflite(apple_s0, str(tmp_path / "s0.tflite"), verify_data=str(val),
                                    class_names=CLASS_NAMES)
    assert report["verification"]["passed"]
    assert report["verification"]["images"] == str(val)
    keras_top1 = acceptance.predict_all(lambda x: apple_s0.predict(x, verbose=0),
                                        paths).argmax(-1)
    tfl_top1 = acceptance.predict_all(runtime.load(path), paths).argmax(-1)
    assert (tfl_top1 == keras_top1).all()
    assert np.mean(keras_top1 == labels) > 0.7  # real weights (0.808 on all 1300)


def test_real_s0_int8_agrees_with_float(apple_s0, shared_data, tmp_path):
    """int8 PTQ through ``export.to_tflite(quantize="int8")`` (equalized,
    calibrated on 32 Imagenette *train* images) keeps the float model's top-1
    on >= 90 % of 300 real validation images spread over imagenet-val-1300
    (measured 0.917; without equalization PTQ agrees on ~0.79, see
    docs/export.md)."""
    val = shared_data / "imagenet-val-1300"
    path, report = export.to_tflite(apple_s0, str(tmp_path / "s0_int8.tflite"),
                                    quantize="int8", calibration_steps=32,
                                    calibration_data=str(shared_data / "imagenette" / "train"),
                                    class_names=CLASS_NAMES, verify=False)
    assert report["equalized"] is True
    assert report["inputs"][0]["dtype"] == "float32" and "QUANTIZE" in report["ops"]
    paths = data.list_images(val)
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, 300).astype(int)]
    images = data.load_images(picks, 224)
    keras_top1 = apple_s0.predict(images, batch_size=50, verbose=0).argmax(-1)
    int8_top1 = runtime.run_tflite(path, images).argmax(-1)
    agreement = float(np.mean(int8_top1 == keras_top1))
    assert agreement >= 0.9, agreement
