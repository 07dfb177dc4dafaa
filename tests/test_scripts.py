"""The success path of every script the README and docs/*.md show, run as a
user runs it (``python scripts/NAME.py ...`` in a subprocess from the
repository root), shrunk (32-224 px, one or two epochs, a few steps) and
checked against what its JSON / report / output file must say (issue 21).

Runs feed the next (module-scoped fixtures): Apple's S0 checkpoint ->
``port_weights.py`` -> ``evaluate.py`` (Keras) and ``convert.py`` -> ``evaluate.py
--model --include --reference``; ``train.py`` (crashed, then ``--resume``) ->
``fused.weights.h5`` -> ``convert.py --format saved_model`` -> ``evaluate.py
--model``. The killed runs of ``train.py`` / ``train_segmenter.py`` are the
scripts run as ``__main__`` with a ``FailAt`` crash injected into ``fit``
(deterministic, unlike a signal).

Covered elsewhere, not repeated here: ``classify.py`` without arguments and
with paths (tests/test_classify.py, tests/test_real_data.py), ``evaluate.py``
on all 1,300 images (tests/test_real_data.py), ``benchmark.py`` with one tiny
row (tests/test_benchmark.py::test_script_end_to_end_tiny).
"""

import csv
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, require_shared

README = (ROOT / "README.md").read_text()
QUANTIZATION_DOC = (ROOT / "docs" / "quantization.md").read_text()
VAL = "imagenet-val-1300"
S0 = "mobileone_s0.pth.tar"
#: the held-out globs exactly as the README's PTQ command shows them, and the
#: kept-float layers as docs/quantization.md shows them
EXCLUDE = re.search(r"--calibration_exclude '([^']+)'", README).group(1)
FLOAT_LAYERS = re.search(r"--float_layers ([\w,]+)", QUANTIZATION_DOC).group(1).split(",")
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
S0_CONVS = 43  # fused S0: stem + 2x(2 + 8 + 10 + 1) blocks, one conv each
CRASH = """import os, runpy, sys
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
from mobileone_tf.training.callbacks import FailAt
import keras
fit = keras.Model.fit
def crashing_fit(self, *args, callbacks=None, **kwargs):
    crash = FailAt(int(os.environ["CRASH_EPOCH"]), 0)
    return fit(self, *args, callbacks=list(callbacks or []) + [crash], **kwargs)
keras.Model.fit = crashing_fit
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run(script, *args, expect=0, env=None, crash_epoch=None, timeout=900):
    """``python scripts/{script}.py *args`` from the repository root (the test
    session's caches; ``MOBILEONE_TF_CHECKPOINTS``: ../shared/data); with
    ``crash_epoch``, run as ``__main__`` with a crash at that epoch's first batch."""
    env = dict(os.environ, MOBILEONE_TF_CHECKPOINTS=str(ROOT.parent / "shared" / "data"),
               **(env or {}))
    path = f"scripts/{script}.py"
    cmd = [sys.executable, path, *map(str, args)]
    if crash_epoch is not None:
        cmd = [sys.executable, "-c", CRASH, path, *map(str, args)]
        env["CRASH_EPOCH"] = str(crash_epoch)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == expect, f"{path} exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def last_json(stdout):
    """The JSON object a script printed last (indented: its first line is ``{``)."""
    start = 0 if stdout.startswith("{") else stdout.rindex("\n{") + 1
    end = stdout.rindex("}") + 1
    return json.loads(stdout[start:end])


def read_json(path):
    with open(path) as f:
        return json.load(f)


def corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("scripts")


@pytest.fixture(scope="module")
def shared():
    return require_shared(S0, f"{VAL}/labels.csv", "imagenette/train")


@pytest.fixture(scope="module")
def val_rows(shared):
    """The first 16 rows of imagenet-val-1300/labels.csv: ``(paths, labels)``."""
    with open(shared / VAL / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:16]
    require_shared(*[f"{VAL}/{r['file']}" for r in rows])
    return [str(shared / VAL / r["file"]) for r in rows], [int(r["label"]) for r in rows]


@pytest.fixture(scope="module")
def include(val_rows):
    return ",".join("*/" + os.path.basename(p) for p in val_rows[0])


@pytest.fixture(scope="module")
def calibration(shared, work):
    """README's layout (``.../imagenette/train/<synset>/``): 2 real Imagenette
    train images of each of 4 classes, plus an undecodable file matching each
    held-out glob of the README (read only if the exclusion fails)."""
    root = work / "calib" / "imagenette" / "train"
    patterns, kept = EXCLUDE.split(","), []
    for synset in sorted(os.listdir(shared / "imagenette" / "train"))[:4]:
        src = shared / "imagenette" / "train" / synset
        (root / synset).mkdir(parents=True)
        names = [n for n in sorted(os.listdir(src))
                 if not any(fnmatch.fnmatch(str(src / n), p) for p in patterns)][:2]
        for name in names:
            kept.append(root / synset / name)
            shutil.copy(src / name, kept[-1])
    held_out = [corrupt(root / "n01440764" / "n01440764_13.JPEG"),
                corrupt(root / "n01440764" / "ILSVRC2012_val_99999999.JPEG")]
    for path in held_out:  # each is left out by one README glob
        assert sum(fnmatch.fnmatch(str(path), p) for p in patterns) == 1, path
    return root, kept, held_out


# --- port_weights.py, evaluate.py (Keras), convert.py float32 -> evaluate --model ---
@pytest.fixture(scope="module")
def ported(shared, work):
    out = work / "s0.weights.h5"
    return run("port_weights", "--checkpoint", shared / S0, "--output", out), out


def test_port_weights_apple_s0(ported):
    proc, out = ported
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    # ../shared/data/README.md: Apple's fused S0, 2,078,504 parameters
    assert lines == {"layout": "apple", "variant": "s0", "form": "fused", "classes": "1000",
                     "parameters": "2,078,504", "wrote": str(out)}
    assert out.stat().st_size > 8_000_000


@pytest.fixture(scope="module")
def keras_eval(ported, shared, work, include):
    out = work / "keras.json"
    run("evaluate", "--variant", "s0", "--weights", ported[1], "--fused", "--data",
        shared / VAL, "--include", include, "--per_image", "--json", out)
    return read_json(out)


def test_evaluate_keras_include(keras_eval, val_rows):
    paths, labels = val_rows
    assert keras_eval["files"] == paths and keras_eval["labels"] == labels
    assert keras_eval["n"] == 16 and keras_eval["n_skipped"] == 0
    hits = np.equal(keras_eval["predictions"], labels)
    assert keras_eval["top1"] == pytest.approx(hits.mean())
    assert keras_eval["top1"] >= 0.6  # Apple's S0 (0.808 on all 1,300)


@pytest.fixture(scope="module")
def tflite_float(work):
    from tests.mediapipe_tasks import mediapipe_folder
    mediapipe_folder()  # the metadata writer (skips, or fails under CI, without PyPI)
    out, report = work / "float" / "mobileone_s0.tflite", work / "float.json"
    out.parent.mkdir()
    run("convert", "--variant", "s0", "--weights", "imagenet", "--format", "tflite",
        "--output", out, "--report", report)
    return out, read_json(report)


def test_convert_tflite_float32(tflite_float):
    from mobileone_tf import runtime
    path, report = tflite_float
    check = report["verification"]
    assert check["passed"] and check["rel_max_diff"] <= 1e-4 and check["top1_agreement"] == 1
    (inp,), (out,) = runtime.tflite_io(str(path))
    assert (inp["name"], inp["dtype"], list(inp["shape"])) == ("image", "float32",
                                                              [1, 224, 224, 3])
    assert (out["name"], list(out["shape"])) == ("probabilities", [1, 1000])
    ops = runtime.tflite_ops(str(path))  # README, docs/export.md: one conv per block, 5 PADs, one ADD
    assert sum(ops.get(op, 0) for op in CONV_OPS) == S0_CONVS
    assert ops["PAD"] == 5 and ops["ADD"] == 1 and "MUL" not in ops
    assert report["file_size_bytes"] / 1e6 == pytest.approx(8.34, abs=0.02)  # README table
    assert len((path.parent / "labels.txt").read_text().splitlines()) == 1000
    assert report["metadata"]


def test_evaluate_tflite_against_keras(tflite_float, keras_eval, shared, work, include):
    out = work / "tflite_eval.json"
    run("evaluate", "--model", tflite_float[0], "--data", shared / VAL, "--include", include,
        "--reference", work / "keras.json", "--per_image", "--json", out)
    result = read_json(out)
    assert result["n"] == 16 and result["files"] == keras_eval["files"]
    # README: float32 TFLite top-1 = Keras top-1 on every image
    assert result["predictions"] == keras_eval["predictions"]
    assert result["reference"]["agreement"] == 1.0 and result["reference"]["n"] == 16


# --- convert.py int8 (README's quick recipe + --float_layers, int8 I/O) ---------
@pytest.fixture(scope="module")
def int8(ported, calibration, work):
    folder, _, _ = calibration
    out, report = work / "int8" / "s0_int8.tflite", work / "int8.json"
    out.parent.mkdir()
    run("convert", "--variant", "s0", "--weights", ported[1], "--format", "tflite",
        "--quantize", "int8", "--bias_correction", "--calibration_data", folder,
        "--calibration_exclude", EXCLUDE, "--float_layers", ",".join(FLOAT_LAYERS),
        "--int8_io", "int8", "--nometadata", "--output", out, "--report", report)
    return out, read_json(report)


def test_convert_int8_exclusion_float_layers_io(int8, calibration):
    from mobileone_tf import runtime
    path, report = int8
    _, kept, _ = calibration
    # bias correction saw every calibration image left after the exclusion
    assert report["bias_correction"] == len(kept) == 8
    assert report["calibration"]["data"].endswith(f"without {EXCLUDE.replace(',', ', ')}")
    assert report["calibration"]["int8_io"] == "int8" and report["equalized"] is True
    assert report["float_layers"] == FLOAT_LAYERS
    (inp,), (out,) = runtime.tflite_io(str(path))
    assert inp["dtype"] == out["dtype"] == "int8"
    convs = [op for op in runtime.tflite_op_list(str(path)) if op["op"] in CONV_OPS]
    floats = [op["outputs"][0]["name"] for op in convs if op["outputs"][0]["dtype"] != "int8"]
    assert len(convs) == S0_CONVS and len(floats) == len(FLOAT_LAYERS), floats
    assert all(any(layer in name for name in floats) for layer in FLOAT_LAYERS), floats
    softmax = [op for op in runtime.tflite_op_list(str(path)) if op["op"] == "SOFTMAX"]
    assert [op["outputs"][0]["dtype"] for op in softmax] == ["float32"]
    assert report["xnnpack"]["partitions"] == 1  # docs/quantization.md: still one partition


def test_evaluate_int8_against_keras(int8, keras_eval, shared, work, include):
    out = work / "int8_eval.json"
    run("evaluate", "--model", int8[0], "--data", shared / VAL, "--include", include,
        "--reference", work / "keras.json", "--per_image", "--json", out)
    result = read_json(out)
    same = np.equal(result["predictions"], keras_eval["predictions"]).mean()
    assert result["n"] == 16 and result["reference"]["agreement"] == pytest.approx(same)
    assert same >= 0.75, same  # 8 calibration images (measured 15 of 16)


# --- convert.py onnx / coreml (+ verify_coreml.py) ------------------------------
def test_convert_onnx(ported, work):
    import onnx
    out, report = work / "s0.onnx", work / "onnx.json"
    run("convert", "--variant", "s0", "--weights", ported[1], "--format", "onnx",
        "--input_size", "64", "--output", out, "--report", report)
    report = read_json(report)
    assert report["verification"]["passed"] and report["verification"]["rel_max_diff"] <= 1e-4
    proto = onnx.load(str(out))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == S0_CONVS and "BatchNormalization" not in ops


def test_convert_coreml_and_verify_coreml(ported, work):
    package = work / "MobileOneS0.mlpackage"
    report = work / "coreml.json"
    run("convert", "--variant", "s0", "--weights", "imagenet", "--format", "coreml",
        "--input_size", "64", "--output", package, "--report", report)
    report = read_json(report)
    assert report["verification"] and all(report["verification"].values())
    assert {"classLabel", "classLabelProbs"} <= {o["name"] for o in report["outputs"]}
    # checked against the weights port_weights.py wrote, not the ones it came from
    proc = run("verify_coreml", package, "--variant", "s0", "--weights", ported[1])
    assert proc.stdout.strip().splitlines()[-1] == "PASS"
    result = last_json(proc.stdout)
    assert result["passed"] and result["checks"]["conv_weights_fp16_equal"] is True


# --- train.py: --overwrite, a crash, --resume -> convert saved_model -> evaluate -
COLOURS = {"blue": (20, 40, 230), "green": (30, 200, 40), "red": (220, 30, 30)}


def colour_folder(root, per_class):
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40, 40), rgb).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(ported, work):
    """README's fine-tuning command, shrunk; --overwrite over a finished run,
    crashed in epoch 1, then --resume."""
    train, val = colour_folder(work / "train", 4), colour_folder(work / "val", 2)
    out = work / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"fake": "finished run"}')
    (out / "log.csv").write_text("epoch,accuracy\n7,0.5\n")
    (out / "notes.txt").write_text("mine")
    args = ["--variant", "s0", "--fused", "--weights", ported[1], "--classes", "3",
            "--train_data", train, "--val_data", val, "--epochs", "2",
            "--freeze_backbone_epochs", "1", "--batch_size", "6", "--lr_reference_batch", "6",
            "--image_sizes", "32", "--resize_epochs", "0", "--resize_reference_epochs", "2",
            "--eval_image_size", "32", "--crop_scale_min", "0.35", "--base_lr", "0.04",
            "--warmup_epochs", "0.1", "--ema_decay", "0", "--weight_decay", "1e-5",
            "--min_weight_decay", "1e-5", "--clip_grad_norm", "1.0", "--output_dir", out]
    crashed = run("train", *args, "--overwrite", crash_epoch=1, expect=1)
    assert "FailAt: simulated crash at epoch 1" in crashed.stderr
    assert not (out / "summary.json").exists() and (out / "notes.txt").read_text() == "mine"
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]  # the old run's rows went
    proc = run("train", *args, "--resume")
    return out, read_json(out / "summary.json"), proc


def test_train_overwrite_crash_resume(trained):
    out, summary, proc = trained
    assert summary["resumed_at_epoch"] == 1 and summary["epochs"] == 2
    assert last_json(proc.stdout)["resumed_at_epoch"] == 1
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]
    assert last_json(proc.stdout)["class_names"] == sorted(COLOURS)  # index order
    assert summary["config"]["fused"] is True and summary["config"]["classes"] == 3
    assert {"fused.keras", "fused.weights.h5", "notes.txt"} <= set(os.listdir(out))
    assert "backup" not in os.listdir(out)


def test_trained_weights_convert_and_evaluate(trained, work):
    out, summary, _ = trained
    saved, report = work / "trained_saved_model", work / "saved_model.json"
    run("convert", "--variant", "s0", "--weights", out / "fused.weights.h5", "--classes", "3",
        "--format", "saved_model", "--input_size", "32", "--output", saved, "--report", report)
    assert read_json(report)["verification"]["passed"]
    result_path = work / "trained_eval.json"
    run("evaluate", "--model", saved, "--data", work / "val", "--image_size", "32",
        "--json", result_path)
    result = read_json(result_path)
    assert result["n"] == 6 and result["n_skipped"] == 0  # the 6 images written
    # the same model scored by training's tf.data pipeline (solid colours: same pixels)
    assert result["top1"] == pytest.approx(summary["final_val_top1"], abs=1e-6)


# --- train_segmenter.py: a crash, then --resume ---------------------------------
def test_train_segmenter_crash_resume(work):
    from tests.test_segmentation import _folder  # skips (fails under CI) without KerasHub
    rng = np.random.default_rng(0)
    data = _folder(work / "camvid", [rng.integers(0, 12, (64, 96)) for _ in range(4)])
    out = work / "seg"
    args = ["--data", data, "--backbone", "mobileone_s0", "--weights", "none", "--fused",
            "--epochs", "2", "--batch_size", "2", "--crop_size", "64,96", "--output_dir", out]
    crashed = run("train_segmenter", *args, crash_epoch=1, expect=1)
    assert "FailAt: simulated crash at epoch 1" in crashed.stderr
    assert not (out / "summary.json").exists()
    run("train_segmenter", *args, "--resume")
    summary = read_json(out / "summary.json")
    assert summary["epochs_run_here"] == 1 and summary["log_rows"] == 2
    from mobileone_tf.segmentation import data as seg_data
    for split in ("val", "test"):
        scores = summary[split]
        assert scores["images"] == 4
        assert set(scores["per_class_iou"]) == set(seg_data.CAMVID_CLASSES)
        assert scores["mean_iou"] == pytest.approx(scores["keras_mean_iou"], abs=1e-6)


# --- qat.py --bias_correction -----------------------------------------------------
def test_qat_bias_correction(ported, calibration, work):
    from mobileone_tf import runtime
    folder, _, held_out = calibration
    train = work / "qat_data" / "imagenette" / "train"
    shutil.copytree(folder, train)
    broken = corrupt(train / "n01440764" / "broken.jpg")  # not held out: skipped, named
    out, report = work / "qat" / "qat.tflite", work / "qat.json"
    out.parent.mkdir()
    proc = run("qat", "--variant", "s0", "--weights", ported[1], "--bias_correction",
               "--train_data", train, "--calibration_exclude", EXCLUDE, "--epochs", "1",
               "--steps_per_epoch", "2", "--batch_size", "4", "--image_size", "64",
               "--calibration_steps", "1", "--nometadata", "--output", out,
               "--report", report)
    assert str(broken) in proc.stdout + proc.stderr
    assert not any(p.name in proc.stdout + proc.stderr for p in held_out)
    # written as convert.py writes: verified against the QAT model, labels beside it
    report = read_json(report)
    assert report["qat"]["bias_correction"] > 0 and report["qat"]["skipped_images"] == [
        str(broken)]
    assert report["verification"]["num_images"] == 8 and "metadata" not in report
    assert len((out.parent / "labels.txt").read_text().splitlines()) == 1000
    assert sorted(os.listdir(out.parent)) == ["labels.txt", "qat.tflite"]
    (inp,), (logits,) = runtime.tflite_io(str(out))
    assert (inp["dtype"], list(inp["shape"])) == ("float32", [1, 64, 64, 3])
    assert (logits["dtype"], list(logits["shape"])) == ("float32", [1, 1000])
    ops = runtime.tflite_op_list(str(out))
    layers = [op for op in ops if op["op"] in (*CONV_OPS, "FULLY_CONNECTED")]
    # README: every conv and the classifier in int8 (the input normalization too:
    # one more depthwise conv, not folded into the stem here)
    assert len(layers) == S0_CONVS + 2 and layers[-1]["op"] == "FULLY_CONNECTED"
    assert {op["outputs"][0]["dtype"] for op in layers} == {"int8"}
    assert "SOFTMAX" not in {op["op"] for op in ops}  # logits out
    assert runtime.tflite_graph_report(str(out))["delegate_partitions"] == 1


# --- quant_sensitivity.py -----------------------------------------------------------
def test_quant_sensitivity_scan(ported, calibration, work):
    _, kept, _ = calibration
    calib, holdout = work / "sens_calib", work / "sens_holdout"
    for path in kept[::2]:  # one image per class; synset folders give labels
        (holdout / path.parent.name).mkdir(parents=True)
        shutil.copy(path, holdout / path.parent.name / path.name)
    calib.mkdir()
    for path in kept[3::2]:  # 3 other images
        shutil.copy(path, calib / path.name)
    out = work / "scan.json"
    run("quant_sensitivity", "--variant", "s0", "--weights", ported[1], "--calibration_data",
        calib, "--holdout_data", holdout, "--output", out, "--input_size", "64",
        "--calibration_steps", "3", "--error_images", "4", "--num_threads", "1")
    report = read_json(out)
    assert report["calibration"]["images"] == 3
    assert report["holdout"]["images"] == 4 and report["holdout"]["labelled"] is True
    layers = report["layers"]  # docs/quantization.md: 44 layers (43 convs + the classifier)
    assert len(layers) == S0_CONVS + 1 and set(FLOAT_LAYERS) <= {x["name"] for x in layers}
    assert sorted(x["rank"] for x in layers) == list(range(1, S0_CONVS + 2))
    assert all(math.isfinite(x["sqnr_db"]) for x in layers)
    assert (work / "scan.md").read_text().count("\n") > S0_CONVS


# --- export_acceptance.py -------------------------------------------------------------
def test_export_acceptance_float16(shared, work, keras_eval):
    from tests.mediapipe_tasks import mediapipe_folder
    mediapipe_folder()
    report = work / "acceptance.json"
    run("export_acceptance", "--checkpoint", shared / S0, "--eval_data", shared / VAL,
        "--limit", "8", "--formats", "tflite_float16", "--workdir", work / "acceptance",
        "--report", report)
    result = read_json(report)
    assert result["num_images"] == 8
    # the first 8 rows: evaluate.py's Keras predictions give the same top-1
    hits = np.equal(keras_eval["predictions"][:8], keras_eval["labels"][:8])
    assert result["keras"]["top1"] == pytest.approx(hits.mean())
    f16 = result["tflite_float16"]
    assert f16["top1_differs_from_keras"] == 0 and f16["top1"] == result["keras"]["top1"]
    assert f16["file_mb"] == pytest.approx(4.20, abs=0.02)  # README's table
