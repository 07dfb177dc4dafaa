"""Int8 QAT (TFMOT) and PTQ of the fused MobileOne: tiny runs on generated images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras
import mobileone_tf as mo
from mobileone_tf import export, runtime
from mobileone_tf import quantization as q
from mobileone_tf.quantization.distillation import mix_images
from tests.conftest import ROOT

SIZE = 64


def _he_init(model, seed=0):
    """He-normal kernels and small biases (the default init's activations vanish)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        k = layer.weights[0]
        fan = np.prod(k.shape[:2]) if isinstance(layer, keras.layers.DepthwiseConv2D) \
            else np.prod(k.shape[:-1])
        layer.set_weights([rng.normal(0, np.sqrt(2 / fan), k.shape).astype("float32"),
                           rng.normal(0, 0.1, layer.weights[1].shape).astype("float32")])
    return model


def _fused(variant, classes=10):
    return _he_init(mo.MobileOne(variant, weights=None, fused=True, classes=classes,
                                 input_shape=(SIZE, SIZE, 3), classifier_activation=None))


def _write_images(folder, n, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (SIZE + 8, SIZE + 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_qat(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qat")
    folder = _write_images(tmp / "train" / "a", 16)
    model = _fused("s0")
    verify = np.random.default_rng(1).uniform(0, 255, (16, SIZE, SIZE, 3)).astype("float32")
    qat_model, path, report = export.qat_to_tflite(
        model, tmp / "train", tmp / "s0_int8.tflite", batch_size=4, epochs=2,
        steps_per_epoch=2, learning_rate=1e-4, checkpoint_dir=tmp / "ckpt", verify_data=verify,
        mix="cutmix", verbose=0, metadata=False, report_path=tmp / "report.json")
    return dict(tmp=tmp, model=model, qat=qat_model, path=path, report=report,
                verify=verify, folder=folder)


def test_tiny_qat_all_int8_and_matches_keras(tiny_qat):
    """The file comes out of the one TFLite writer: staged, verified against the
    QAT Keras model, installed with labels.txt and the report JSON."""
    r, path = tiny_qat["report"], tiny_qat["path"]
    assert os.path.isfile(path) and r["quantize"] == "int8"
    graph = runtime.tflite_graph_report(path)
    assert graph["float_ops"] == [] and r["xnnpack"]["float_ops"] == []
    ops = set(runtime.tflite_ops(path))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= ops
    assert ops & {"QUANTIZE", "DEQUANTIZE"}  # float I/O: only at the edges
    # the TFLite kernels round differently from TF's fake-quant, and the tiny
    # run's weights vary with thread scheduling: on average about one output
    # quantization step (0.88-0.98 seen), a few steps at worst (4, 5 and 7
    # seen), and the class must agree on (nearly) every image
    x = tiny_qat["verify"]
    ref, got = tiny_qat["qat"](x, training=False).numpy(), runtime.run_tflite(path, x)
    step = graph["output_step"]
    assert np.abs(ref - got).mean() <= 2 * step and np.abs(ref - got).max() <= 12 * step
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 15 / 16
    v = r["verification"]  # the writer ran the same comparison, without a verdict
    assert v["passed"] is None and v["num_images"] == 8 and v["top1_agreement"] >= 7 / 8
    assert v["max_abs_diff"] == pytest.approx(np.abs(ref - got)[:8].max(), rel=1e-5)
    assert len(r["qat"]["history"]["kd_loss"]) == 2 and r["qat"]["equalized"] is True
    assert r["qat"]["skipped_images"] == [] and r["qat"]["skipped"] == ""  # nothing skipped
    assert sorted(os.listdir(tiny_qat["tmp"] / "ckpt"))  # checkpoints written
    assert (tiny_qat["tmp"] / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert json.loads((tiny_qat["tmp"] / "report.json").read_text())["path"] == str(path)
    assert not [n for n in os.listdir(tiny_qat["tmp"]) if ".tmp-" in n]  # staging removed


def test_int8_io_export(tiny_qat):
    path, r = export.write_qat_tflite(tiny_qat["qat"], tiny_qat["model"],
                                      tiny_qat["tmp"] / "io_int8.tflite", int8_io="int8",
                                      verify_data=tiny_qat["verify"][:8], metadata=False)
    assert runtime.tflite_graph_report(path)["float_ops"] == []
    assert "QUANTIZE" not in r["ops"]
    assert r["verification"]["top1_agreement"] >= 7 / 8
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=path)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8


def test_resume_from_checkpoint(tiny_qat):
    """Resuming a finished run trains nothing (epoch restored from the checkpoint)."""
    student, _ = q.to_tf_keras(tiny_qat["model"])
    teacher, _ = q.to_tf_keras(tiny_qat["model"])
    qm = q.quantize(student)
    train = q.qat_dataset(tiny_qat["folder"], image_size=SIZE, batch_size=4)
    assert q.fine_tune(qm, teacher, train, epochs=2, steps_per_epoch=2,
                       checkpoint_dir=tiny_qat["tmp"] / "ckpt", verbose=0) is None
    x = tiny_qat["verify"][:4]
    np.testing.assert_allclose(qm(x).numpy(), tiny_qat["qat"](x).numpy(), atol=1e-5)


def test_mix_options_checked(tiny_qat):
    train = q.qat_dataset(tiny_qat["folder"], image_size=SIZE, batch_size=4)
    for kw, msg in [(dict(mix="mixup", label_weight=1.0), "label_weight == 0"),
                    (dict(mix="blend"), "mix must be one of"),
                    (dict(mix="cutmix", mix_alpha=0.0), "mix_alpha must be > 0")]:
        with pytest.raises(ValueError, match=msg):
            q.fine_tune(tiny_qat["qat"], tiny_qat["qat"], train, **kw)


def test_legacy_keras_flag_does_not_leak(tiny_qat):
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4)), np.ones((8, 2)), verbose=0)
    assert isinstance(model, keras.Model) and keras.__version__.startswith("3")
    m = mo.MobileOne("s0", weights=None, input_shape=(32, 32, 3), classes=3)
    assert m(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 3)


def test_s4_squeeze_excite_quantizes(tmp_path):
    model = _fused("s4")
    tfk, variant = q.to_tf_keras(model)
    assert variant == "s4"
    x = np.random.default_rng(2).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(tfk(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    qm = q.quantize(tfk)
    se = [l for l in qm.layers if l.name.endswith("_se_scale")]
    assert se and all(type(l).__name__ == "QuantizeWrapperV2" for l in se)
    path, r = export.write_qat_tflite(qm, model, tmp_path / "s4.tflite", verify_data=x,
                                      metadata=False)
    assert r["xnnpack"]["float_ops"] == [] and "MUL" in r["ops"] and "LOGISTIC" in r["ops"]
    assert r["verification"]["top1_agreement"] >= 3 / 4


def test_ptq(tmp_path):
    """Post-training int8 (``export.to_tflite(quantize="int8")``): full-integer,
    and the int8 logits track the float ones."""
    from mobileone_tf import export
    model = _fused("s0")
    x = np.random.default_rng(3).uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    path, _ = export.to_tflite(model, tmp_path / "ptq.tflite", quantize="int8",
                               calibration_data=x, calibration_steps=8, input_size=SIZE,
                               class_names=[str(i) for i in range(10)], verify=False)
    assert runtime.tflite_graph_report(path)["float_ops"] == []
    out = runtime.run_tflite(path, x)
    assert out.shape == (8, 10)
    # int8 logits track the float ones (relative to their range)
    ref = model(x).numpy()
    assert np.abs(out - ref).max() < 0.1 * (ref.max() - ref.min())


def test_mix_images_blends_within_the_batch():
    """CutMix pastes a box of another image of the batch (every pixel comes
    from one of the batch's images at the same place); MixUp gives convex
    combinations (inside the batch's per-pixel range)."""
    import tensorflow as tf
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(8)
    cut = next(iter(mix_images(ds, "cutmix", 1.0))).numpy()
    assert cut.shape == x.shape
    same = np.isclose(cut[:, None], x[None]).all(-1)          # (out, src, H, W)
    assert same.any(1).all()                                   # every pixel from some image
    assert not np.allclose(cut, x)                              # and something was pasted
    up = next(iter(mix_images(ds, "mixup", 1.0))).numpy()
    assert (up >= x.min(0) - 1e-3).all() and (up <= x.max(0) + 1e-3).all()
    assert np.abs(up - x).max() > 1.0
    with pytest.raises(ValueError, match="mixup' or 'cutmix"):
        mix_images(ds, "blend")


# --- bad input: clear errors, nothing written --------------------------------
def test_empty_and_unreadable_folder(tmp_path):
    out = tmp_path / "o.tflite"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="(?i)no images"):
        export.qat_to_tflite(_fused("s0"), tmp_path / "empty", out, metadata=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        q.quantization_aware_training(_fused("s0"), tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"no decodable image.*x\.jpg"):
        export.qat_to_tflite(_fused("s0"), bad, out, metadata=False)
    assert sorted(os.listdir(tmp_path)) == ["bad", "empty"]  # nothing written


def test_undecodable_images_skipped_and_named(tmp_path):
    """One bad file among good ones: left out of the batches and listed."""
    folder = _write_images(tmp_path / "mixed", 5)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    ds, skipped = q.qat_dataset(folder, image_size=SIZE, batch_size=2, augment=False,
                                with_skipped=True)
    assert skipped == [str(folder / "broken.png")]
    assert int(ds.cardinality()) == 2                     # 5 good images // 2
    batches = [b.numpy() for b in ds]
    assert len(batches) == 2 and all(b.shape == (2, SIZE, SIZE, 3) for b in batches)
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        q.qat_dataset(folder, image_size=SIZE, batch_size=8)


def test_branched_and_foreign_models(tmp_path):
    out = tmp_path / "o.tflite"
    branched = mo.MobileOne("s0", weights=None, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="fuse"):
        export.qat_to_tflite(branched, tmp_path, out, metadata=False)
    foreign = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                                keras.layers.Conv2D(4, 3, name="stem_conv"),
                                keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(3, name="predictions")])
    with pytest.raises(ValueError, match="Not a fused MobileOne"):
        q.quantization_aware_training(foreign, tmp_path)
    with pytest.raises(ValueError, match="include_top"):
        q.to_tf_keras(mo.fuse(mo.MobileOne("s0", weights=None, include_top=False,
                                           input_shape=(SIZE, SIZE, 3))))
    assert not out.exists()


def test_variant_weights_mismatch(shared_data):
    """qat.py builds its float model with MobileOne(weights=PATH): an S0
    checkpoint for an S1 model fails clearly, naming what the file holds."""
    with pytest.raises(ValueError, match="holds MobileOne-S0"):
        mo.MobileOne("s1", weights=str(shared_data / "mobileone_s0.pth.tar"), fused=True,
                     input_shape=(SIZE, SIZE, 3), classifier_activation=None)


# --- equalization and range calibration ---------------------------------------
def test_equalize_activations_exact_and_equal_ranges():
    """Float outputs unchanged; every activation in front of a depthwise conv
    ends with all live channels at the same maximum (independent check: the
    per-channel maxima are recomputed from the new model's own activations)."""
    model = _fused("s0")
    rng = np.random.default_rng(4)
    # spread channel ranges over two decades, as folded BatchNorm scales do
    for layer in model.layers:
        if layer.name.endswith("_conv") and not isinstance(layer, keras.layers.DepthwiseConv2D):
            k, b = layer.get_weights()
            s = 10 ** rng.uniform(-1, 1, k.shape[-1])
            layer.set_weights([k * s, b * s])
    x = rng.uniform(0, 255, (12, SIZE, SIZE, 3)).astype("float32")
    eq = q.equalize_activations(model, x[:8], pointwise_exponent=0.0, min_scale=1e-6)
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(eq.predict(x, verbose=0), ref, atol=1e-4 * np.abs(ref).max())
    before, after = [], []
    for m, out in ((model, before), (eq, after)):
        names = [l.name for l in m.layers]
        acts = [n for n in names if n.endswith("_act")]
        convs = {n[:-len("_conv")]: m.get_layer(n) for n in names if n.endswith("_conv")}
        probe_names = [a for a, nxt in zip(acts[:-1], acts[1:])
                       if isinstance(convs[nxt[:-len("_act")]], keras.layers.DepthwiseConv2D)]
        probe = keras.Model(m.inputs, [m.get_layer(n).output for n in probe_names])
        for a in probe.predict(x[:8], verbose=0):
            r = a.reshape(-1, a.shape[-1]).max(0)
            live = r > 0
            out.append(r[live].min() / r.max())
    assert min(before) < 0.1            # ranges really differed
    assert min(after) > 0.999           # equalized on the data it saw


def test_calibrate_ranges_sets_data_ranges():
    model = _fused("s0")
    tfk, _ = q.to_tf_keras(model)
    qm = q.quantize(tfk)
    x = np.random.default_rng(5).uniform(10, 200, (8, SIZE, SIZE, 3)).astype("float32")
    assert q.calibrate_ranges(qm, [x[:4], x[4:]], steps=5) == 2
    qin = [l for l in qm.layers if type(l).__name__ == "QuantizeLayer"][0]
    lo, hi = sorted(float(np.ravel(w.numpy())[0]) for w in qin.weights
                    if w.name.split("/")[-1].split(":")[0].endswith(("_min", "_max")))
    assert lo == pytest.approx(0.0, abs=1e-6)           # min(0, data min)
    assert hi == pytest.approx(float(x.max()), rel=1e-5)
    # no activation range left at TFMOT's [-6, 6] start
    ranges = [float(np.ravel(w.numpy())[0]) for l in qm.layers for w in l.weights
              if "post_activation" in w.name or "output_m" in w.name]
    assert ranges and not any(abs(abs(v) - 6.0) < 1e-6 for v in ranges)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        q.calibrate_ranges(qm, [x], steps=0)


# --- scripts/qat.py: user errors are one `error:` line, nothing written -------
def _qat_cli(*args):
    return subprocess.run([sys.executable, "scripts/qat.py", "--nometadata", *map(str, args)],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _one_error_line(proc, *needles):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_cli_user_errors(tmp_path):
    out = tmp_path / "o.tflite"
    out.write_bytes(b"earlier result")
    _one_error_line(_qat_cli("--train_data", tmp_path, "--output", out), str(out), "exists")
    assert out.read_bytes() == b"earlier result"
    out.unlink()
    (tmp_path / "empty").mkdir()
    _one_error_line(_qat_cli("--train_data", tmp_path / "empty", "--output", out),
                    str(tmp_path / "empty"))
    _one_error_line(_qat_cli("--train_data", tmp_path / "missing", "--output", out),
                    str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"not an image")
    _one_error_line(_qat_cli("--train_data", bad, "--output", out), str(bad / "x.jpg"))
    assert not out.exists()


def test_cli_variant_weights_mismatch(tmp_path, shared_data):
    out = tmp_path / "o.tflite"
    folder = _write_images(tmp_path / "train", 4)
    _one_error_line(_qat_cli("--variant", "s1", "--weights", shared_data / "mobileone_s0.pth.tar",
                             "--train_data", folder, "--batch_size", 2, "--image_size", SIZE,
                             "--output", out), "holds MobileOne-S0")
    assert not out.exists()
