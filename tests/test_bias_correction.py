"""Bias correction (issue 16): ``quantization.int8_weights`` against the int8
weights the TFLite converter writes, and ``to_tflite(bias_correction=True)``
against the float model, measured from the converted files."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import export, models, quantization, runtime
from mobileone_tf.export.images import generated_images
from mobileone_tf.export.prepare import prepare_model
from mobileone_tf.quantization.bias_correction import int8_weights
from tests.conftest import ROOT, require_shared

SIZE = 64
KINDS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _weighted(model):
    return {l.name: l for l in models.all_layers(model) if isinstance(l, KINDS)}


def _file_layers(path, names):
    """``{layer name: (float kernel in Keras layout, float bias, q in Keras
    layout, per-channel weight scales)}`` read back from a .tflite."""
    interp = runtime.tflite_interpreter(path, delegates=False)
    details = interp.get_tensor_details()
    out = {}
    for name, layer in names.items():
        pat = re.compile(rf"/{re.escape(name)}(_\d+)?/(convolution|depthwise|MatMul)$")
        bpat = re.compile(rf"/{re.escape(name)}(_\d+)?/BiasAdd$")
        w = [d for d in details if d["dtype"] == np.int8 and pat.search(d["name"])]
        b = [d for d in details if d["dtype"] == np.int32
             and any(bpat.search(part) for part in d["name"].split(";"))]
        assert len(w) == 1 and len(b) == 1, (name, [d["name"] for d in w + b])
        q, qb = interp.get_tensor(w[0]["index"]), interp.get_tensor(b[0]["index"])
        ws = w[0]["quantization_parameters"]["scales"].astype(np.float64)
        bs = b[0]["quantization_parameters"]["scales"].astype(np.float64)
        shape = layer.kernel.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # (1, kh, kw, C*M)
            q, ws_k = q.reshape(shape), ws.reshape(1, 1, *shape[2:])
        elif len(shape) == 4:  # (out, kh, kw, in)
            q, ws_k = q.transpose(1, 2, 3, 0), ws
        else:  # FULLY_CONNECTED (out, in)
            q, ws_k = q.T, ws
        assert len(ws) == len(bs) == layer.bias.shape[0]  # per channel, every kind
        out[name] = (q * ws_k, qb * bs, q, ws)
    return out


def _assert_predicted(layers, read):
    """``int8_weights`` gives the file's int8 weights and scales, except in
    channels the converter widened against int32 bias overflow (allowed only
    where the weights are all but zero)."""
    for name, layer in layers.items():
        kernel = layer.kernel.numpy()
        q, s = int8_weights(kernel, isinstance(layer, keras.layers.DepthwiseConv2D))
        s, s_file, q_file = s.ravel(), read[name][3], read[name][2]
        wide = s_file > s * (1 + 1e-5)
        channel_max = np.abs(kernel).reshape(-1, len(s)).max(0)
        assert np.all(channel_max[wide] < 1e-6 * channel_max.max()), name
        np.testing.assert_allclose(s[~wide], s_file[~wide], rtol=1e-6, err_msg=name)
        diff = np.abs(q.astype(int) - q_file).reshape(-1, len(s))[:, ~wide]
        assert np.mean(diff != 0) < 1e-3 and diff.max() <= 1, name  # float32 ties only


def _convert(model, path, images, **kw):
    return export.to_tflite(model, path, quantize="int8", calibration_data=images,
                            calibration_steps=len(images), input_size=SIZE, verify=False,
                            metadata=False, outputs="logits", **kw)


def _layer_errors(fixed, file_layers, images):
    """Per layer: the mean over images and positions of (the file's layer on
    the float model's input) - (the float layer), per output channel."""
    probes, keep = [], []
    for name, layer in _weighted(fixed).items():
        config = {**layer.get_config(), "activation": None}
        clone = layer.__class__.from_config({**config, "name": f"{name}_file"})
        x = layer.input
        clone(x)
        kernel, bias = file_layers[name][:2]
        clone.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        ref = layer.__class__.from_config({**config, "name": f"{name}_float"})
        ref(x)
        ref.set_weights(layer.get_weights())
        probes.append(keras.ops.subtract(clone(x), ref(x)))
        keep.append(name)
    outs = keras.Model(fixed.inputs, probes).predict(images, batch_size=1, verbose=0)
    return {n: np.asarray(o).reshape(-1, o.shape[-1]).mean(0) for n, o in zip(keep, outs)}


@pytest.fixture(scope="module")
def random_s0(tmp_path_factory):
    """A random fused S0 (random biases too), converted without and with bias
    correction (no equalization: the file's kernels are the model's)."""
    tmp = tmp_path_factory.mktemp("bc")
    model = mo.MobileOne("s0", weights=None, fused=True, classes=10,
                         classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in _weighted(model).values():
        k, b = layer.get_weights()
        layer.set_weights([k, rng.normal(0, 0.2, b.shape).astype(b.dtype)])
    images = generated_images(16, SIZE, seed=5)
    files = {}
    for bc in (False, True):
        path, report = _convert(model, str(tmp / f"bc{bc}.tflite"), images,
                                equalize=False, bias_correction=bc)
        assert report["bias_correction"] == (16 if bc else False)
        files[bc] = path
    fixed = prepare_model(model, batch_size=1, input_size=SIZE, outputs="logits")
    return fixed, files, images


def test_int8_weights_equal_the_converters(random_s0):
    """Predicted W_q (and scales) equal the int8 weights in the file, for
    CONV_2D, DEPTHWISE_CONV_2D, the folded stem and FULLY_CONNECTED."""
    fixed, files, _ = random_s0
    layers = _weighted(fixed)
    _assert_predicted(layers, _file_layers(files[True], layers))
    assert {type(layer).__name__ for layer in layers.values()} == {
        "Conv2D", "DepthwiseConv2D", "Dense"}


def test_corrected_file_has_no_mean_layer_error(random_s0):
    """Measured from the files: each int8 layer on the float model's inputs
    has a mean output error; with correction (fitted on the 16 calibration
    images) it is (almost) gone on 16 other images. The stem and the first
    depthwise layer see (nearly) the images' own statistics, whose mean over
    16 images differs between the two sets: their error is only reduced
    (measured: to 0.26 and 0.08; every other layer to <= 0.02)."""
    fixed, files, _ = random_s0
    held_out = generated_images(16, SIZE, seed=6)
    layers = _weighted(fixed)
    before = _layer_errors(fixed, _file_layers(files[False], layers), held_out)
    after = _layer_errors(fixed, _file_layers(files[True], layers), held_out)
    ratios = {n: np.abs(after[n]).mean() / np.abs(before[n]).mean() for n in layers}
    image_fed = {"stem_conv", "stage1_0_conv"}
    assert max(ratios[n] for n in image_fed) < 0.5, ratios
    assert max(v for n, v in ratios.items() if n not in image_fed) < 0.1, ratios


def test_apple_s0_logits_move_toward_float(tmp_path):
    """Apple's S0 at 64x64, equalized, calibrated on Imagenette train: with
    bias correction the int8 logits' mean over other (tiny-imagenet) images
    moves toward the float model's, and top-1 agreement does not drop;
    the converter's weights (bias-overflow widening included) are predicted."""
    shared = require_shared("mobileone_s0.pth.tar", "imagenette/train",
                            "tiny-imagenet-202/images")
    from mobileone_tf import data
    calib = np.concatenate(list(data.image_batches(str(shared / "imagenette/train"), SIZE, 1, 32)))
    test = np.concatenate(list(data.image_batches(str(shared / "tiny-imagenet-202/images"),
                                                  SIZE, 1, 48)))
    model = mo.MobileOne("s0", weights=str(shared / "mobileone_s0.pth.tar"), fused=True,
                         classifier_activation=None)
    fixed = prepare_model(model, batch_size=1, input_size=SIZE, outputs="logits")
    ref = fixed.predict(test, batch_size=1, verbose=0)
    err, agree = {}, {}
    for bc in (False, True):
        path, _ = _convert(model, str(tmp_path / f"{bc}.tflite"), calib, bias_correction=bc)
        out = runtime.run_tflite(path, test)
        err[bc] = np.linalg.norm((out - ref).mean(0))
        agree[bc] = np.mean(out.argmax(1) == ref.argmax(1))
    assert err[True] < 0.5 * err[False], err
    assert agree[True] >= agree[False], agree
    equalized = quantization.equalize_activations(fixed, calib)
    layers = _weighted(equalized)
    _assert_predicted(layers, _file_layers(path, layers))


def test_bias_correction_needs_int8(tmp_path):
    model = mo.MobileOne("s0", weights=None, fused=True, classes=10)
    with pytest.raises(export.ExportError, match="bias_correction"):
        export.to_tflite(model, str(tmp_path / "m.tflite"), bias_correction=True)
    with pytest.raises(export.ExportError, match="bias_correction"):
        export.to_tflite(model, str(tmp_path / "m.tflite"), quantize="int8",
                         calibration_data=generated_images(2, SIZE),
                         input_size=SIZE, bias_correction=0)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--format",
                        "tflite", "--weights", "none", "--bias_correction", "--output",
                        "m.tflite"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "--bias_correction" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.iterdir())
