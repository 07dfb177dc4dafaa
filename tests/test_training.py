"""Training: schedules vs hand-computed values, coupled L2 vs PyTorch's
formula, a short from-scratch run (loss falls), resume after a crash, fuse of
the trained model, fine-tune initialisation, bad-input errors, flags generated
from TrainConfig, output folders (finished runs untouched, --overwrite,
--resume), unreadable images."""

import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import keras
import tensorflow as tf

from mobileone_tf import models as mo_models
from mobileone_tf import training
from mobileone_tf.training.callbacks import FailAt
from mobileone_tf.training.model import check_weights
from mobileone_tf.training.optim import no_decay_variables
from mobileone_tf.training.runner import check_data
from mobileone_tf.layers import MobileOneBlock
from tests.helpers import colour_batch



def test_warmup_cosine_hand_values():
    s = training.WarmupCosine(0.4, total_steps=1000, warmup_steps=100,
                              warmup_start_factor=0.001, min_lr=1e-6)
    # warm-up: 0.4 * (0.001 + 0.999 * step / 100)
    assert float(s(0)) == pytest.approx(0.0004, rel=1e-5)
    assert float(s(50)) == pytest.approx(0.4 * (0.001 + 0.999 * 0.5), rel=1e-5)
    assert float(s(100)) == pytest.approx(0.4, rel=1e-6)
    # cosine: half-way through 100..1000 is step 550 -> (0.4 + 1e-6) / 2
    assert float(s(550)) == pytest.approx((0.4 + 1e-6) / 2, rel=1e-5)
    assert float(s(325)) == pytest.approx(1e-6 + (0.4 - 1e-6) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-5)
    assert float(s(1000)) == pytest.approx(1e-6, rel=1e-3)
    assert float(s(5000)) == pytest.approx(1e-6, rel=1e-3)


def test_weight_decay_cosine_and_lr_scaling():
    wd = training.CosineWeightDecay(1e-4, total_steps=300, min_value=1e-5)
    assert float(wd(0)) == pytest.approx(1e-4, rel=1e-6)
    assert float(wd(150)) == pytest.approx(5.5e-5, rel=1e-5)
    assert float(wd(300)) == pytest.approx(1e-5, rel=1e-5)
    cfg = training.TrainConfig(batch_size=512, epochs=300)
    opt = training.make_optimizer(cfg, steps_per_epoch=10)
    # the schedule: 0.1 * 512 / 256 = 0.2 peak at step 50
    assert opt._learning_rate(50).numpy() == pytest.approx(0.2, rel=1e-6)
    assert opt.use_ema and opt.ema_momentum == 0.9995 and opt.momentum == 0.9
    assert not opt.nesterov and opt.global_clipnorm is None
    clipped = training.make_optimizer(training.TrainConfig(clip_grad_norm=1.0), 10)
    assert clipped.global_clipnorm == 1.0


def test_stages_scale_with_epochs():
    assert training.TrainConfig(variant="s0").stages() == [
        (0, 37, 160, 0.0), (37, 112, 192, 0.0), (112, 300, 224, 0.0)]
    st = training.TrainConfig(variant="s1", epochs=30).stages()
    assert [(a, b, s) for a, b, s, _ in st] == [(0, 4, 160), (4, 11, 192), (11, 30, 224)]
    assert st[0][3] < st[1][3] < st[2][3]


def test_coupled_l2_matches_pytorch_sgd_formula():
    """Three steps of SGDCoupledL2 vs the torch.optim.SGD update written out:
    g' = g + wd*w; b = m*b + g'; w -= lr*b; BN/bias excluded."""
    w0 = np.array([1.0, -2.0, 0.5], np.float32)
    grads = [np.array([0.1, 0.2, -0.3], np.float32) * (k + 1) for k in range(3)]
    lr, m, wd = 0.1, 0.9, 0.01
    for excluded in (False, True):
        v = keras.Variable(w0.copy())
        opt = training.SGDCoupledL2(l2=wd, learning_rate=lr, momentum=m)
        opt.build([v])
        if excluded:
            opt.exclude_from_weight_decay(var_list=[v])
        w, b = w0.astype(np.float64), np.zeros(3)
        for g in grads:
            opt.apply([g], [v])
            gp = g + (0 if excluded else wd) * w
            b = m * b + gp
            w = w - lr * b
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-6)


def test_no_decay_variables_are_bn_and_bias():
    model = mo_models.MobileOne("s0", weights=None, classes=3, input_shape=(32, 32, 3))
    nd = {v.path for v in no_decay_variables(model)}
    assert "predictions/bias" in nd and not any("kernel" in p for p in nd)
    assert any("gamma" in p for p in nd) and any("beta" in p for p in nd)


# ---------------------------------------------------------------------------
# Tiny generated data set: class = which colour channel is brightest
# ---------------------------------------------------------------------------
_arrays = colour_batch


def _train_fn(n=48, batch=16, classes=3):
    def fn(size, magnitude):
        x, y = _arrays(n, size, classes)
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    return fn


def _val(size=32, classes=3):
    x, y = _arrays(32, size, classes, seed=1)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def _tiny_config(**kw):
    base = dict(variant="s0", epochs=3, batch_size=16, base_lr=0.1, warmup_epochs=0.0,
                image_sizes=(32, 48), resize_epochs=(0, 2), resize_reference_epochs=3,
                eval_image_size=32, ema_decay=0.0, verbose=0, weight_decay=1e-4)
    base.update(kw)
    return training.TrainConfig(**base)


def _call(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_from_scratch_loss_falls_fuses_and_writes_outputs(tmp_path):
    """The branched (train-time) S0, one resolution: tracing its train step is
    the slow part (1-2.5 min on 2 cores), so this is the only branched fit."""
    keras.utils.set_random_seed(0)
    cfg = _tiny_config(epochs=4, image_sizes=(32,), resize_epochs=(0,))
    out = tmp_path / "run"
    # 12 steps an epoch: with 3, the loss of a randomly initialised network
    # after 12 momentum-SGD steps was noise on some CPUs (seen: 1.99 -> 1.68);
    # with 12, seeds 0-2 end at 0.48-0.68 of the first epoch's loss
    s = training.train(cfg, _train_fn(n=192), _val(), 3, str(out), steps_per_epoch=12)
    rows = list(csv.DictReader(open(out / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 4
    assert losses[-1] < 0.8 * losses[0], losses
    for name in ("best.weights.h5", "last.weights.h5", "fused.keras",
                 "fused.weights.h5", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "backup").exists()
    summary = json.load(open(out / "summary.json"))
    assert summary["epochs"] == 4 and summary["train_images_per_sec"] > 0
    assert summary["best_val_top1"] == max(float(r["val_accuracy"]) for r in rows)
    # trained (branched) model fuses with identical predictions
    x, _ = _arrays(8, 40, seed=3)
    p_branched = _call(s["model"], x)
    fused = keras.models.load_model(out / "fused.keras")
    # (probabilities; float32 sums in another order over 12 blocks: 3.7e-5 seen)
    np.testing.assert_allclose(_call(fused, x), p_branched, atol=1e-4)
    assert mo_models.model_form(fused) == "fused"
    # the state file loads into a fresh model (either form), as convert.py does
    again = mo_models.MobileOne("s0", weights=str(out / "fused.weights.h5"), classes=3,
                                input_shape=(None, None, 3), fused=True)
    np.testing.assert_allclose(_call(again, x), p_branched, atol=1e-4)


def test_crash_mid_epoch_resumes_from_last_completed_epoch(tmp_path):
    """Resume mechanics (two resolution stages, EMA) on the fused model, run
    eagerly (the mechanics do not depend on tracing; 4 traces cost ~40 s)."""
    keras.utils.set_random_seed(0)
    cfg = _tiny_config(ema_decay=0.9, fused=True, run_eagerly=True)
    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(cfg, _train_fn(), _val(), 3, out, steps_per_epoch=3,
                       extra_callbacks=[FailAt(epoch=2, batch=1)])
    meta = json.load(open(os.path.join(out, "backup", "training_metadata.json")))
    assert meta["epoch"] == 2       # epochs 0 and 1 completed
    # an unfinished run is continued only on request
    with pytest.raises(FileExistsError, match="unfinished run .*--resume"):
        training.train(cfg, _train_fn(), _val(), 3, out, steps_per_epoch=3)
    # a crash after the log row of epoch 2 but before its backup: the resumed
    # run re-runs epoch 2 and must not log it twice
    with open(os.path.join(out, "log.csv")) as f:
        rows = f.read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    with open(os.path.join(out, "log.csv"), "a") as f:
        f.write("2" + rows[-1][1:] + "\r\n")
    started = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.append((epoch, int(self.model.optimizer.iterations.numpy())))

    s = training.train(cfg, _train_fn(), _val(), 3, out, steps_per_epoch=3,
                       extra_callbacks=[Record()], resume=True)
    # resumed at epoch 2 with the optimizer step counter restored (2 epochs x 3 steps)
    assert started == [(2, 6)]
    assert s["epochs"] == 3 or s["epochs"] >= 3
    rows = list(csv.DictReader(open(os.path.join(out, "log.csv"))))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["epochs"] == 3 and summary["resumed_at_epoch"] == 2


def test_resume_after_the_last_epoch_restores_the_backup(tmp_path):
    """A crash after the last epoch but before the run's final files: the
    resumed run trains nothing and finishes from the backup (weights and EMA),
    not from a freshly initialised model."""
    cfg = _tiny_config(fused=True, run_eagerly=True, ema_decay=0.9, epochs=2,
                       image_sizes=(32,), resize_epochs=(0,), resize_reference_epochs=2)
    out = tmp_path / "run"

    class CrashAtEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            raise RuntimeError("crash before finish")

    with pytest.raises(RuntimeError, match="crash before finish"):
        training.train(cfg, _train_fn(), _val(), 3, str(out), steps_per_epoch=3,
                       extra_callbacks=[CrashAtEnd()])
    assert not (out / "summary.json").exists()
    s = training.train(cfg, _train_fn(), _val(), 3, str(out), steps_per_epoch=3, resume=True)
    assert s["resumed_at_epoch"] == 2 and s["epochs"] == 2
    # last.weights.h5: the EMA weights at the end of epoch 2, saved by Keras
    ref = training.build_model(cfg, 3)
    ref.load_weights(out / "last.weights.h5")
    x, _ = _arrays(4, 32, seed=7)
    np.testing.assert_allclose(_call(s["fused_model"], x), _call(ref, x), atol=1e-6)


def test_sync_batchnorm_model_keeps_weights_and_config():
    """--sync_batchnorm: every block's BatchNorm synchronized (kept in the
    block config), same weights, recorded MobileOne config kept; without a
    strategy it computes what plain BatchNorm computes, in both modes; it
    fuses like any branched model. (Statistics across workers:
    tests/test_multiworker.py.)"""
    keras.utils.set_random_seed(0)
    synced = training.build_model(_tiny_config(sync_batchnorm=True), 3)
    blocks = [layer for layer in synced.layers if isinstance(layer, MobileOneBlock)]
    assert blocks and all(b.synchronized_bn and b.get_config()["synchronized_bn"]
                          for b in blocks)
    assert all(bn.synchronized for b in blocks for bn in b.bn_kxk)
    assert mo_models.model_info(synced)["variant"] == "s0"
    plain = mo_models.MobileOne("s0", weights=None, classes=3, input_shape=(None, None, 3))
    assert not any(layer.synchronized_bn for layer in plain.layers
                   if isinstance(layer, MobileOneBlock))
    mo_models.assign_state(plain, mo_models.get_state(synced))
    x, _ = _arrays(4, 32, seed=5)
    np.testing.assert_allclose(_call(synced, x), _call(plain, x), atol=1e-6)
    # training mode, one block (through 22 blocks of batch-4 statistics the
    # two variance formulas, E[x^2]-E[x]^2 and two-pass, drift apart: 1e-3 seen)
    z = np.random.default_rng(1).normal(size=(4, 8, 8, 48)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(synced.get_layer("stage1_2")(z, training=True)),
        keras.ops.convert_to_numpy(plain.get_layer("stage1_2")(z, training=True)), atol=1e-5)
    np.testing.assert_allclose(_call(mo_models.fuse(synced), x), _call(synced, x), atol=1e-4)
    assert MobileOneBlock.from_config(blocks[1].get_config()).synchronized_bn


def test_finetune_init_equals_source_model(tmp_path):
    """Fused source (random weights, random 'BN-folded' biases) -> branched
    trainable model: first evaluation equals the source model's."""
    src = mo_models.MobileOne("s0", weights=None, classes=3, input_shape=(None, None, 3),
                              fused=True)
    rng = np.random.default_rng(0)
    for w in src.weights:
        if w.path.endswith("bias"):
            w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
    state = mo_models.get_state(src)
    cfg = _tiny_config(weights=state)
    model = training.build_model(cfg, classes=3)
    assert mo_models.model_form(model) == "branched"
    x, y = _arrays(16, 64, seed=5)
    # eager calls throughout: tracing the branched S0's predict step takes ~40 s
    np.testing.assert_allclose(_call(model, x), _call(src, x), atol=2e-5)
    for m in (src, model):
        m.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  run_eagerly=True)
    e_src = src.evaluate(x, y, verbose=0, return_dict=True)
    e_new = model.evaluate(x, y, verbose=0, return_dict=True)
    assert e_new["accuracy"] == e_src["accuracy"]
    assert e_new["loss"] == pytest.approx(e_src["loss"], abs=1e-5)
    # new head for a different class count keeps the backbone
    model5 = training.build_model(cfg, classes=5)
    feats = lambda m: _call(keras.Model(m.input, m.get_layer("avg_pool").output), x)
    np.testing.assert_allclose(feats(model5), feats(src), atol=2e-5)
    # ... and starts the new head at zero: first loss log(5), no shock to the backbone
    head = model5.get_layer(mo_models.HEAD_NAME).get_weights()
    assert not head[0].any() and not head[1].any()
    np.testing.assert_allclose(_call(model5, x[:2]), 0.2, atol=1e-6)


def test_divergence_fails_and_writes_no_model(tmp_path):
    cfg = _tiny_config(fused=True, base_lr=1e12, epochs=2, image_sizes=(32,),
                       resize_epochs=(0,), resize_reference_epochs=2)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="diverged"):
        training.train(cfg, _train_fn(), None, 3, str(out), steps_per_epoch=3)
    assert not (out / "fused.keras").exists() and not (out / "summary.json").exists()


def _folder(root, classes, n=2):
    from PIL import Image
    for c in classes:
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((40, 40, 3), 50 * i, np.uint8)).save(d / f"{i}.jpg")
    return str(root)


def test_bad_input_errors_before_training(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        check_data(str(empty))
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="without images"):
        check_data(str(tmp_path / "noimg"))
    with pytest.raises(FileNotFoundError):
        check_data(str(tmp_path / "missing"))
    tr = _folder(tmp_path / "train", ["a", "b"])
    va = _folder(tmp_path / "val", ["a", "c"])
    with pytest.raises(ValueError, match="differ"):
        check_data(tr, va)
    with pytest.raises(ValueError, match="--classes=3"):
        check_data(tr, None, classes=3)
    src = mo_models.MobileOne("s0", weights=None, classes=4, input_shape=(32, 32, 3),
                              fused=True)
    cfg = _tiny_config(weights=mo_models.get_state(src))
    with pytest.raises(ValueError, match="head has 4 classes"):
        check_weights(cfg, classes=2)
    check_weights(_tiny_config(weights=mo_models.get_state(src), classes=2), 2)
    # run() fails before building anything
    with pytest.raises(ValueError, match="differ"):
        training.run(_tiny_config(), tr, va, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _tfrecords(path, n, size=40, classes=3, seed=0, offset=0):
    """ImageNet-style records (PNG bytes, label + offset) of the colour task."""
    import io
    from PIL import Image
    x, y = _arrays(n, size, classes, seed)
    with tf.io.TFRecordWriter(str(path)) as w:
        for img, label in zip(x.clip(0, 255).astype(np.uint8), y):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[buf.getvalue()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[int(label) + offset]))}))
            w.write(ex.SerializeToString())
    return y


def test_run_on_tfrecord_shards_under_mirrored_strategy(tmp_path):
    """TFRecord shards (1-based labels, as TF's ImageNet shards) end to end
    through run(), inside a MirroredStrategy scope; steps counted from the
    records; val top-1 equals a hand count of the fused model's predictions."""
    for i in range(2):
        _tfrecords(tmp_path / f"train-{i:05d}-of-00002", 24, seed=i, offset=1)
    y_val = _tfrecords(tmp_path / "val-00000-of-00001", 16, seed=9, offset=1)
    cfg = _tiny_config(fused=True, classes=3, epochs=1, image_sizes=(32,), resize_epochs=(0,),
                       resize_reference_epochs=1, strategy="mirrored")
    with pytest.raises(ValueError, match="--classes is required"):
        training.run(_tiny_config(fused=True), str(tmp_path / "train-*"), None,
                     str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="TFRecord"):
        training.run(cfg, str(tmp_path / "nothing-*"), None, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    out = tmp_path / "run"
    s = training.run(cfg, str(tmp_path / "train-*"), str(tmp_path / "val-*"), str(out),
                     label_offset=-1)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 1 and s["epochs"] == 1
    x_val, _ = _arrays(16, 40, seed=9)
    from mobileone_tf import data as mo_data
    crop = np.stack([mo_data.eval_transform(tf.constant(v.clip(0, 255).astype(np.uint8)), 32)
                     for v in x_val])
    pred = s["fused_model"].predict(crop, verbose=0).argmax(-1)
    assert s["final_val_top1"] == pytest.approx(float((pred == y_val).mean()), abs=1e-6)


def test_mixed_precision_trains_with_float32_head(tmp_path):
    """--mixed_precision on CPU: mixed_bfloat16, a finite loss, float32 probabilities."""
    cfg = _tiny_config(fused=True, epochs=1, image_sizes=(32,), resize_epochs=(0,),
                       resize_reference_epochs=1, mixed_precision=True)
    try:
        assert training.set_precision(True, "default") == "mixed_bfloat16"
        s = training.train(cfg, _train_fn(), _val(), 3, str(tmp_path / "run"),
                           steps_per_epoch=2)
        m = s["fused_model"]
        assert m.get_layer("stage1_0_conv").compute_dtype == "bfloat16"
        out = m.predict(np.full((2, 32, 32, 3), 100.0, "float32"), verbose=0)
        assert out.dtype == np.float32 and np.allclose(out.sum(-1), 1.0, atol=1e-5)
        assert np.isfinite(float(next(csv.DictReader(
            open(tmp_path / "run" / "log.csv")))["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert training.set_precision(False) == "float32"


# ---------------------------------------------------------------------------
# TrainConfig: the one place for defaults; flags generated from its fields
# ---------------------------------------------------------------------------
ROOT = pathlib.Path(__file__).resolve().parents[1]

# the flags scripts/train.py had when they were written out by hand
OLD_FLAGS = {
    "variant": "s0", "epochs": 300, "batch_size": 256, "base_lr": 0.1, "momentum": 0.9,
    "nesterov": False, "warmup_epochs": 5.0, "warmup_start_factor": 0.001, "min_lr": 1e-6,
    "weight_decay": 1e-4, "min_weight_decay": 1e-5, "label_smoothing": 0.1,
    "ema_decay": 0.9995, "clip_grad_norm": 0.0, "image_sizes": ["160", "192", "224"],
    "resize_epochs": ["0", "37", "112"], "resize_reference_epochs": 300,
    "augment_magnitudes": None, "eval_image_size": 224, "crop_scale_min": 0.08,
    "weights": None, "classes": None, "fused": False, "freeze_backbone_epochs": 0,
    "strategy": "default", "mixed_precision": False, "xla": False, "run_eagerly": False,
    "steps_per_epoch": None, "validation_steps": None, "seed": 0}


def test_flags_are_generated_from_train_config():
    from absl import flags
    from mobileone_tf.training import config
    fv = flags.FlagValues()
    config.define_flags(fv)
    for name, default in OLD_FLAGS.items():
        assert fv[name].default == default, name
    assert fv["strategy"].parser.enum_values == ["default", "mirrored", "multi_worker", "tpu"]
    assert "verbose" not in fv          # cli's --verbose (tracebacks) stays cli's
    fv(["train.py"])
    assert config.from_flags(fv) == config.TrainConfig()
    fv(["train.py", "--epochs=3", "--image_sizes=32,48", "--resize_epochs=0,2",
        "--augment_magnitudes=0.1,0.2", "--xla", "--weights=none", "--classes=7",
        "--strategy=mirrored", "--nocheck_images"])
    cfg = config.from_flags(fv)
    assert cfg == config.TrainConfig(epochs=3, image_sizes=(32, 48), resize_epochs=(0, 2),
                                     augment_magnitudes=(0.1, 0.2), jit_compile=True,
                                     weights=None, classes=7, strategy="mirrored",
                                     check_images=False)
    fv(["train.py", "--image_sizes=32,big"])
    with pytest.raises(ValueError, match="--image_sizes"):
        config.from_flags(fv)


def test_config_and_help_import_no_tensorflow():
    code = ("import sys; from mobileone_tf.training import TrainConfig, check_output_dir; "
            "TrainConfig(variant='s2').validate(); "
            "assert not [m for m in sys.modules if m.startswith(('tensorflow', 'keras'))]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    out = subprocess.run([sys.executable, "scripts/train.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True).stdout  # absl: exit status 1
    for name in (*OLD_FLAGS, "overwrite", "resume", "check_images", "output_dir"):
        assert f"--{name}" in out or f"--[no]{name}" in out, name


def test_onednn_workaround_where_tensorflow_enables_onednn(tmp_path, caplog):
    """TF_ENABLE_ONEDNN_OPTS=0 is set (one warning) on CPUs where TensorFlow
    turns oneDNN on by default (fake /proc/cpuinfo: an AVX512-FP16/AMX Xeon,
    an AVX512-VNNI/BF16 EPYC), never over the user's own value, never after
    TensorFlow was imported, never on a CPU without those flags."""
    from mobileone_tf.training import onednn
    cpus = {"xeon_fp16": "fpu avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile",
            "epyc": "fpu avx512f avx512_vnni avx512_bf16 avx512_vbmi2",
            "xeon_no_vnni": "fpu avx2 avx512f avx512dq avx512bw avx512vl"}
    for name, flags in cpus.items():
        (tmp_path / name).write_text(f"processor\t: 0\nmodel name\t: {name}\n"
                                     f"flags\t\t: {flags}\n\nprocessor\t: 1\n")
    var = "TF_ENABLE_ONEDNN_OPTS"
    with caplog.at_level("WARNING", logger="mobileone_tf.training"):
        for name in ("xeon_fp16", "epyc"):
            env = {}
            assert onednn.avoid_onednn_crash(tmp_path / name, env, modules={}) == "set"
            assert env == {var: "0"} and var in caplog.records[-1].getMessage()
        assert len(caplog.records) == 2
        env = {var: "1"}
        assert onednn.avoid_onednn_crash(tmp_path / "epyc", env, modules={}) == "user"
        assert env == {var: "1"}
        env = {}
        assert onednn.avoid_onednn_crash(tmp_path / "epyc", env,
                                         modules={"tensorflow": sys}) == "too late"
        assert env == {} and "before starting Python" in caplog.records[-1].getMessage()
        n = len(caplog.records)
        for name in ("xeon_no_vnni", "missing"):
            assert onednn.avoid_onednn_crash(tmp_path / name, env, modules={}) == "not needed"
        assert env == {} and len(caplog.records) == n
    # on import, before TensorFlow: set here or not per this machine's
    # /proc/cpuinfo, a user's own value always kept
    code = ("import os, sys; from mobileone_tf.training import onednn as o; "
            "want = '0' if o.cpu_flags() & set(o.ONEDNN_DEFAULT_FLAGS) else None; "
            "assert os.environ.get(o.VARIABLE) == want, os.environ.get(o.VARIABLE); "
            "assert 'tensorflow' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k != var}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    code = "import os, mobileone_tf.training; assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '1'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**env, var: "1"})


def test_config_validation_names_the_setting():
    from mobileone_tf.training import TrainConfig
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="same length"):
        TrainConfig(image_sizes=(160, 224)).validate()
    with pytest.raises(ValueError, match="s9"):
        TrainConfig(variant="s9").validate()


# ---------------------------------------------------------------------------
# Output folders: a finished run is never touched; --overwrite / --resume
# ---------------------------------------------------------------------------
def test_output_dir_rules_and_clear_run(tmp_path):
    from mobileone_tf.training import rundir
    out = tmp_path / "run"
    assert rundir.check_output_dir(out) == "new"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert rundir.check_output_dir(out) == "new"   # other files are not a run
    (out / "log.csv").write_text("epoch,loss\r\n0,1.0\r\n1,0.9\r\n2,0.8\r\n")
    (out / "backup").mkdir()
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    with pytest.raises(FileExistsError, match="unfinished run \\(2 epochs"):
        rundir.check_output_dir(out)
    assert rundir.check_output_dir(out, resume=True) == "resume"
    assert rundir.check_output_dir(out, overwrite=True) == "overwrite"
    with pytest.raises(ValueError, match="exclude each other"):
        rundir.check_output_dir(out, overwrite=True, resume=True)
    assert [r["epoch"] for r in rundir.truncate_log(out, 2)] == ["0", "1"]
    assert (out / "log.csv").read_bytes() == b"epoch,loss\r\n0,1.0\r\n1,0.9\r\n"
    (out / "summary.json").write_text("{}")
    for kw in ({}, {"resume": True}):
        with pytest.raises(FileExistsError, match="finished run .*--overwrite"):
            rundir.check_output_dir(out, **kw)
    (out / "fused.keras").write_text("model")
    # a removal that fails part-way leaves no finished-looking run and no mix:
    # summary.json goes first, the rest stays a (resumable or overwritable) run
    real_rename, calls = os.rename, []

    def failing_rename(src, dst):
        calls.append(os.path.basename(src))
        if len(calls) == 2:
            raise OSError("disk gone")
        real_rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rundir.os, "rename", failing_rename)
        with pytest.raises(OSError, match="disk gone"):
            rundir.clear_run(out)
    assert calls == ["summary.json", "fused.keras"]
    assert rundir.run_state(out) == "unfinished"
    rundir.clear_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert rundir.check_output_dir(out) == "new"


def test_finished_run_is_never_touched_overwrite_starts_over(tmp_path):
    """A finished 1-epoch run: a rerun (library or script) refuses and changes
    no byte; --resume refuses too; --overwrite retrains: one log row, epochs 1."""
    cfg = _tiny_config(fused=True, run_eagerly=True, epochs=1, image_sizes=(32,),
                       resize_epochs=(0,), resize_reference_epochs=1)
    out = tmp_path / "run"
    training.train(cfg, _train_fn(), _val(), 3, str(out), steps_per_epoch=3)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"summary.json", "log.csv", "fused.weights.h5", "best.weights.h5"} <= set(before)
    for kw in ({}, {"resume": True}):
        with pytest.raises(FileExistsError, match="finished run"):
            training.train(cfg, _train_fn(), _val(), 3, str(out), steps_per_epoch=3, **kw)
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--train_data", str(tmp_path),
         "--output_dir", str(out), "--epochs", "1"],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "finished run" in errors[0] and "--overwrite" in errors[0]
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    s = training.train(cfg, _train_fn(), _val(), 3, str(out), steps_per_epoch=3,
                       overwrite=True)
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0"]
    summary = json.load(open(out / "summary.json"))
    assert summary["epochs"] == 1 == s["epochs"] and summary["resumed_at_epoch"] is None
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------
# Unreadable images: training ones skipped and named, validation ones refused
# ---------------------------------------------------------------------------
def test_unreadable_training_image_is_skipped_and_named(tmp_path, caplog):
    tr = _folder(tmp_path / "train", ["a", "b", "c"], n=6)
    va = _folder(tmp_path / "val", ["a", "b", "c"], n=1)
    bad = tmp_path / "train" / "b" / "broken.jpg"
    bad.write_text("not a jpeg")
    cfg = _tiny_config(fused=True, run_eagerly=True, epochs=1, batch_size=4,
                       image_sizes=(32,), resize_epochs=(0,), resize_reference_epochs=1)
    steps = []

    class Steps(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            steps.append(self.params["steps"])

    with caplog.at_level("WARNING", logger="mobileone_tf.training"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = training.run(cfg, tr, va, str(tmp_path / "run"), extra_callbacks=[Steps()])
    # train and validation data have their lengths: Keras never runs out of data
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert s["skipped_images"] == {"count": 1, "files": [str(bad)]}
    assert json.load(open(tmp_path / "run" / "summary.json"))["skipped_images"]["count"] == 1
    reports = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert any("epoch 1" in m for m in reports) and len(reports) >= 2, reports
    # the fit dataset has its length: 18 readable images // batch 4 (not "Unknown")
    assert steps == [4]
    # a broken validation image stops the run before anything is built, by name
    (tmp_path / "val" / "c" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="cut.png"):
        training.run(cfg, tr, va, str(tmp_path / "run2"))
    assert not (tmp_path / "run2").exists()
