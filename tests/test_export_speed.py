"""Issue 13: the default export as fast as the bare network, int8 in one
XNNPACK partition.

* The ImageNet normalization folded into the stem convolution is exact,
  border pixels included: checked against a NumPy float64 stem computed the
  PyTorch way (normalize, then zero-pad), with a naive fold (zero-padding the
  raw image) as the negative control that the check must catch.
* The default float32 TFLite file has no input MUL, one row-broadcast ADD,
  one conv per block, PADs only in front of stride-2 convs, and one XNNPACK
  partition (op census read by ``tf.lite.experimental.Analyzer``, not by the
  package); ``outputs="logits"`` drops the SOFTMAX.
* Full-integer int8 (float32 and int8 I/O) keeps the SOFTMAX in float32
  after a DEQUANTIZE: one XNNPACK partition for the whole graph.
* On Apple's S0 and real images, the int8-I/O file fed ``pixel - 128`` gives
  the float-I/O int8 file's probabilities (same calibration) to two output
  steps, and both agree with float Keras' top-1 on >= 90 % of the images.
"""

import contextlib
import io
import re

import keras
import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import export, runtime, variants
from mobileone_tf.export import acceptance, prepare
from mobileone_tf.export.images import generated_images
from tests.helpers import randomize_batchnorm, rel_max_diff

SIZE = 64
# torchvision's ImageNet statistics (independent of the package's constants)
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def border_images(size=SIZE, seed=3):
    """Images whose border pixels are extreme (0 / 255 rows and columns,
    all-black, all-white, a 0/255 checkerboard, white noise)."""
    x = generated_images(6, size, seed=seed)
    x[0, 0], x[0, -1], x[0, :, 0], x[0, :, -1] = 255, 0, 255, 0
    x[1, 0], x[1, -1], x[1, :, 0], x[1, :, -1] = 0, 255, 0, 255
    x[2], x[3] = 0, 255
    x[4] = 255 * (np.indices((size, size)).sum(0) % 2)[..., None]
    x[5] = np.random.default_rng(seed).uniform(0, 255, (size, size, 3))
    return x.astype(np.float32)


def numpy_stem(x, kernel, bias, pad_value=0.0, normalize=True):
    """ReLU(conv3x3/2(pad(normalize(x)))) in float64, PyTorch's padding=1."""
    x = np.asarray(x, np.float64)
    y = (x / 255.0 - MEAN) / STD if normalize else x
    y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    h, w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    out = sum(np.einsum("nhwc,co->nhwo", y[:, u:u + 2 * h - 1:2, v:v + 2 * w - 1:2],
                        kernel[u, v]) for u in range(3) for v in range(3))
    return np.maximum(out + bias, 0.0)


@pytest.fixture(scope="module")
def s0():
    """Branched S0 with random BatchNorm; the prepared (fused, logits) model
    unfolded and folded."""
    model = randomize_batchnorm(mo.MobileOne("s0", weights=None, input_shape=(None, None, 3)))
    reference = prepare.prepare_model(model, input_size=SIZE, outputs="logits", fold=False)
    return model, reference, prepare.fold_input_normalization(reference)


def test_fold_is_exact_border_included(s0):
    _, reference, folded = s0
    assert prepare.normalization_form(reference) == "mul+add"
    assert prepare.normalization_form(folded) == "folded"
    assert not any(isinstance(x, keras.layers.Rescaling) for x in folded.layers)
    x = border_images()
    kernel, bias = (w.astype(np.float64) for w in reference.get_layer("stem_conv").get_weights())
    want = numpy_stem(x, kernel, bias)
    got = keras.Model(folded.input, folded.get_layer("stem_act").output).predict(x, verbose=0)
    assert rel_max_diff(want, got) <= 1e-5
    assert rel_max_diff(want[:, 0], got[:, 0]) <= 1e-5      # top border row
    assert rel_max_diff(want[:, :, 0], got[:, :, 0]) <= 1e-5  # left border column
    # negative control: folding the offset into the bias and zero-padding the
    # raw image is right inside and wrong at the border; the check sees it
    a = 1.0 / (255.0 * STD)
    naive = numpy_stem(x, kernel * a[None, None, :, None],
                       bias + np.einsum("uvco,c->o", kernel, -MEAN / STD), normalize=False)
    assert rel_max_diff(want[:, 1:, 1:], naive[:, 1:, 1:]) <= 1e-9
    assert rel_max_diff(want, naive) > 1e-2
    assert rel_max_diff(reference.predict(x, verbose=0), folded.predict(x, verbose=0)) <= 1e-5


def test_stem_that_cannot_fold_keeps_mul_add(s0):
    """A branched model exported with fuse=False: the stem is a MobileOneBlock,
    so the normalization stays a MUL + ADD (with row-broadcast constants)."""
    model = s0[0]
    kept = prepare.prepare_model(model, fuse=False, input_size=SIZE)
    assert prepare.normalization_form(kept) == "mul+add"
    x = border_images()
    assert rel_max_diff(model.predict(x, verbose=0), kept.predict(x, verbose=0)) <= 1e-6


def analyze(path):
    """``(ops, tensors)`` of a .tflite as ``tf.lite.experimental.Analyzer``
    prints them: ops ``[(name, [input ids], [output ids])]``, tensors
    ``{id: (shape list, type, constant)}``."""
    import tensorflow as tf
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path))
    text = buf.getvalue()

    def ids(s):
        return [int(i) for i in re.findall(r"T#(\d+)", s)]

    ops = [(m[1], ids(m[2]), ids(m[3]))
           for m in re.finditer(r"Op#\d+ (\w+)\((.*?)\) -> \[(.*?)\]", text)]
    tensors = {int(m[1]): ([int(d) for d in m[2].split(",") if d.strip()], m[3], bool(m[4]))
               for m in re.finditer(r"T#(\d+)\(.*?\) shape:\[(.*?)\], type:(\w+)( RO)?", text)}
    return ops, tensors


@pytest.fixture(scope="module")
def default_s0(s0, tmp_path_factory):
    model = s0[0]
    d = tmp_path_factory.mktemp("speed")
    return {name: export.to_tflite(model, str(d / f"{name}.tflite"), input_size=SIZE,
                                   metadata=False, **kw)
            for name, kw in (("default", {}), ("logits", {"outputs": "logits"}))}


def test_default_tflite_census_and_one_partition(s0, default_s0):
    path, report = default_s0["default"]
    assert report["normalization"] == "folded" and report["outputs"][0]["name"] == "probabilities"
    assert report["verification"]["passed"]
    ops, tensors = analyze(path)
    names = [op[0] for op in ops]
    specs = variants.block_specs("s0")
    assert "MUL" not in names
    assert names.count("CONV_2D") + names.count("DEPTHWISE_CONV_2D") == len(specs)
    # the one ADD: graph input + a (1, 1, W, 3) constant (XNNPACK adds whole rows)
    (add,) = [op for op in ops if op[0] == "ADD"]
    assert add[1][0] == 0 and tensors[add[1][1]][0] == [1, 1, SIZE, 3] and tensors[add[1][1]][2]
    # PADs only in front of stride-2 convolutions
    pads = [op for op in ops if op[0] == "PAD"]
    assert len(pads) == sum(s.strides == 2 for s in specs)
    for _, (src, _), (dst,) in pads:
        (user,) = [op for op in ops if dst in op[1]]
        assert user[0] in ("CONV_2D", "DEPTHWISE_CONV_2D")
        assert tensors[user[2][0]][0][1] == (tensors[src][0][1] + 1) // 2
    assert names[-1] == "SOFTMAX"
    graph = runtime.tflite_graph_report(path)
    assert graph["delegate_partitions"] == 1 and graph["all_delegated"]
    assert report["xnnpack"]["partitions"] == 1
    # the file against the unfolded fused Keras model on extreme-border images
    x = border_images()
    logits = s0[1].predict(x, verbose=0).astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert rel_max_diff(probs, runtime.load(path)(x)) <= 1e-5


def test_logits_output_has_no_softmax(s0, default_s0):
    path, report = default_s0["logits"]
    assert report["outputs"][0]["name"] == "logits" and "SOFTMAX" not in report["ops"]
    x = border_images()
    assert rel_max_diff(s0[1].predict(x, verbose=0), runtime.load(path)(x)) <= 1e-5
    default = runtime.load(default_s0["default"][0])(x)
    assert rel_max_diff(default, keras.ops.softmax(runtime.load(path)(x)).numpy()) <= 1e-5


def test_outputs_option_errors(tmp_path):
    with pytest.raises(export.ExportError, match="outputs must be one of"):
        export.check_options("tflite", str(tmp_path / "m.tflite"), outputs="scores")
    features = mo.MobileOne("s0", weights=None, include_top=False, pooling="avg",
                            input_shape=(None, None, 3))
    with pytest.raises(export.ExportError, match="classifier top"):
        prepare.prepare_model(features, input_size=SIZE, outputs="logits")


@pytest.mark.parametrize("int8_io", [False, "int8"])
def test_int8_is_one_xnnpack_partition(s0, tmp_path, int8_io):
    """Float or int8 I/O: int8 convolutions, DEQUANTIZE, float32 SOFTMAX,
    all in one XNNPACK partition (the converter's int8 SOFTMAX is not)."""
    calibration = generated_images(8, SIZE, seed=4)
    path, report = export.to_tflite(
        s0[0], str(tmp_path / "q.tflite"), quantize="int8", calibration_data=calibration,
        calibration_steps=8, int8_io=int8_io, input_size=SIZE, metadata=False, verify=False)
    graph = runtime.tflite_graph_report(path)
    assert graph["delegate_partitions"] == 1 and graph["all_delegated"], graph
    assert graph["float_ops"] == ["SOFTMAX"] and report["xnnpack"]["partitions"] == 1
    ops, tensors = analyze(path)
    names = [op[0] for op in ops]
    assert "MUL" not in names and names.count("ADD") == 1
    (softmax,) = [op for op in ops if op[0] == "SOFTMAX"]
    (feeder,) = [op for op in ops if softmax[1][0] in op[2]]
    assert feeder[0] == "DEQUANTIZE" and tensors[softmax[2][0]][1] == "FLOAT32"
    if int8_io:
        assert report["inputs"][0]["dtype"] == "int8" == report["outputs"][0]["dtype"]
        assert report["inputs"][0]["quantization"] == [1.0, -128]  # feed pixel - 128
    # the numbers of both files: test_int8_io_real_images (Apple's S0)


def _run_int8_io_file(path, x):
    """The file on ``x`` through ``tf.lite.Interpreter`` alone: a float32
    input gets the pixels, an int8 one ``pixel - 128`` (the documented
    contract, not the file's declared parameters); returns the raw outputs
    and the output tensor's details."""
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for image in x:
        feed = (image[None].astype(np.float32) if inp["dtype"] == np.float32
                else (image[None].astype(np.int16) - 128).astype(np.int8))
        interp.set_tensor(inp["index"], feed)
        interp.invoke()
        rows.append(interp.get_tensor(out["index"])[0])
    return np.array(rows), out


def test_int8_io_real_images(shared_data, tmp_path):
    """Apple's S0, int8 calibrated on 32 Imagenette train images, as a
    float32-I/O and an int8-I/O file (same calibration), on 100 validation
    images: the int8-I/O output, dequantized here with its own (scale, zero
    point), is the float-I/O file's to two output steps (a wrong input or
    output zero point or scale moves it by far more), with the same top-1
    (up to a tie within two steps); both agree with float Keras' top-1 on
    >= 90 % (measured: 92 %)."""
    val = shared_data / "imagenet-val-1300"
    calibration = shared_data / "imagenette" / "train"
    paths, _ = acceptance.labelled(val)
    from mobileone_tf import data
    x = data.load_images([paths[i] for i in np.linspace(0, len(paths) - 1, 100).astype(int)],
                         224)
    model = acceptance.build_s0(shared_data / "mobileone_s0.pth.tar")
    keras_top1 = model.predict(x, verbose=0).argmax(-1)
    files = {}
    for io in (False, "int8"):
        files[io], report = export.to_tflite(
            model, str(tmp_path / f"int8_{io}.tflite"), quantize="int8",
            calibration_data=str(calibration), calibration_steps=32, int8_io=io,
            metadata=False, verify=False)
    assert report["inputs"][0]["quantization"] == [1.0, -128]
    reference, _ = _run_int8_io_file(files[False], x)
    raw, out = _run_int8_io_file(files["int8"], x)
    assert out["dtype"] == np.int8
    scale, zero = out["quantization"]
    got = (raw.astype(np.float64) - zero) * scale
    assert np.abs(got - reference).max() <= 2 * scale
    picked = reference[np.arange(len(x)), got.argmax(-1)]
    assert (picked >= reference.max(-1) - 2 * scale).all()     # same top-1 up to a tie
    np.testing.assert_allclose(runtime.load(files["int8"])(x), got, rtol=0, atol=1e-7)
    assert np.mean(reference.argmax(-1) == keras_top1) >= 0.9
    assert np.mean(got.argmax(-1) == keras_top1) >= 0.9


def test_real_images_fold_is_exact(shared_data):
    """Apple's S0 on real validation images (and the same images with
    extreme borders): the folded model's logits equal the unfolded ones."""
    val = shared_data / "imagenet-val-1300"
    paths, _ = acceptance.labelled(val, 16)
    from mobileone_tf import data
    x = data.load_images(paths, 224)
    framed = x.copy()
    framed[:, :2], framed[:, :, :2], framed[:, -2:], framed[:, :, -2:] = 255, 0, 0, 255
    model = acceptance.build_s0(shared_data / "mobileone_s0.pth.tar")
    reference = prepare.prepare_model(model, input_size=224, outputs="logits", fold=False)
    folded = prepare.fold_input_normalization(reference)
    for images in (x, framed):
        want, got = (m.predict(images, verbose=0) for m in (reference, folded))
        assert rel_max_diff(want, got) <= 1e-5
        assert (want.argmax(-1) == got.argmax(-1)).all()
