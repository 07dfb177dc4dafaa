"""Per-layer int8 sensitivity (issue 16): the scan must find a layer that is
quantization-hostile by construction, ``float_layers`` must leave exactly
that op float in the file, ``int16x8`` must give int16 activations, and
re-quantizing must not recalibrate.

The hostile layer: every output channel of ``conv_c`` gets one huge weight
(1000x) on an input channel that is always zero (``dw_b`` writes zeros
there). In float the outlier multiplies zeros and changes nothing; in int8
(per-channel, symmetric: step = max|w| / 127) it makes every other weight of
the layer round to 0, so the quantized layer outputs its bias only.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

SIZE = 32
HOSTILE = "conv_c"


@pytest.fixture(scope="module")
def hostile():
    import keras
    rng = np.random.default_rng(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw_b")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name=HOSTILE)(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="conv_d")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(x))
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            kernel = rng.normal(0, 1.5 / np.sqrt(np.prod(kernel.shape[:-1])), kernel.shape)
            bias = rng.normal(0, 0.05, bias.shape)
            if layer.name == "dw_b":
                kernel[..., 0, :], bias[0] = 0.0, 0.0  # channel 0 is always zero
            if layer.name == HOSTILE:
                kernel[0, 0, 0, :] = 1000.0 * np.abs(kernel).max()
            if layer.name == "head":
                kernel *= 8.0  # confident logits: a broken layer shows in the KL
            layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def images():
    from mobileone_tf.export.images import generated_images
    return generated_images(48, SIZE, seed=3)


@pytest.mark.parametrize("mode", ["only", "all_but"])
def test_scan_ranks_the_hostile_layer_first(hostile, images, mode):
    from mobileone_tf.export import sensitivity
    report = sensitivity.sensitivity_scan(hostile, images[:16], images[16:], mode=mode,
                                          calibration_steps=16, input_size=SIZE, fuse=False,
                                          error_images=8)
    by_name = {x["name"]: x for x in report["layers"]}
    assert sorted(by_name) == ["conv_a", HOSTILE, "conv_d", "dw_b", "head"]
    assert by_name[HOSTILE]["rank"] == 1, report["layers"]
    assert by_name[HOSTILE]["shape"] == [1, SIZE // 2, SIZE // 2, 16]
    # the layer-wise error table singles it out too
    worst = min(report["layers"], key=lambda x: x["sqnr_db"])
    assert worst["name"] == HOSTILE and worst["sqnr_db"] < 10 < by_name["conv_d"]["sqnr_db"]
    if mode == "only":
        assert by_name[HOSTILE]["kl"] > 10 * max(x["kl"] for x in report["layers"]
                                                 if x["name"] != HOSTILE)
    else:  # keeping it float brings the int8 model back to the float one
        assert by_name[HOSTILE]["kl"] < report["int8"]["kl"] / 10
    assert "| 1 | conv_c | CONV_2D | 16x16x16 |" in sensitivity.markdown(report)


def test_requantizing_does_not_recalibrate(hostile, images, tmp_path):
    from mobileone_tf.export import saved_model, selective, tflite
    saved = str(tmp_path / "sm")
    saved_model.write_saved_model(hostile, saved)
    converter = tflite.tflite_converter(saved, "int8", images[:8], 1)
    reads = []
    original = converter.representative_dataset

    def counting():
        for batch in original():
            reads.append(1)
            yield batch

    converter.representative_dataset = counting
    debugger = selective.calibrated_debugger(converter, None)
    after_calibration = len(reads)
    assert after_calibration >= 8
    layers = selective.quantizable_layers(selective.requantize(debugger), ["conv_c", "head"])
    selective.requantize(debugger, float_nodes=[layers[2]["tensor"]])
    selective.requantize(debugger, float_ops=["CONV_2D"])
    assert len(reads) == after_calibration


def test_float_layers_leave_exactly_that_op_float(hostile, images, tmp_path):
    from mobileone_tf import runtime
    from mobileone_tf.export import to_tflite
    out = str(tmp_path / "m.tflite")
    _, report = to_tflite(hostile, out, quantize="int8", calibration_data=images[:16],
                          calibration_steps=16, input_size=SIZE, fuse=False, metadata=False,
                          float_layers=[HOSTILE], verify_data=images[16:])
    weighted = [op for op in runtime.tflite_op_list(out)
                if op["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    dtypes = {op["outputs"][0]["name"]: op["outputs"][0]["dtype"] for op in weighted}
    float_ops = [name for name, dtype in dtypes.items() if dtype == "float32"]
    assert len(dtypes) == 5 and len(float_ops) == 1 and "/conv_c" in float_ops[0], dtypes
    assert report["float_layers"] == [HOSTILE]
    assert report["xnnpack"]["partitions"] >= 1
    # the fix works: keeping the hostile layer float recovers the float predictions
    _, full = to_tflite(hostile, str(tmp_path / "full.tflite"), quantize="int8",
                        calibration_data=images[:16], calibration_steps=16, input_size=SIZE,
                        fuse=False, metadata=False, verify_data=images[16:])
    assert (report["verification"]["max_abs_diff"]
            < full["verification"]["max_abs_diff"] / 3), (report, full)


def test_int16x8_has_int16_activations(hostile, images, tmp_path):
    from mobileone_tf import runtime
    from mobileone_tf.export import to_tflite
    out = str(tmp_path / "m16.tflite")
    _, report = to_tflite(hostile, out, quantize="int16x8", calibration_data=images[:16],
                          calibration_steps=16, input_size=SIZE, fuse=False, metadata=False,
                          verify_data=images[16:])
    ops = runtime.tflite_op_list(out)
    weighted = {op["outputs"][0]["dtype"] for op in ops
                if op["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")}
    assert weighted == {"int16"}
    assert report["xnnpack"]["partitions"] == 0  # XNNPACK has no int16 kernels


def test_unknown_float_layer_is_one_line_error(tmp_path):
    (tmp_path / "calib").mkdir()
    from PIL import Image
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "calib" / "a.png")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert.py"), "--format", "tflite",
         "--weights", "none", "--quantize", "int8", "--input_size", "64",
         "--calibration_data", "calib", "--float_layers", "stage9_0_conv",
         "--nometadata", "--output", "m.tflite"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), run.stderr
    assert "--float_layers" in lines[0] and "stage9_0_conv" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]
