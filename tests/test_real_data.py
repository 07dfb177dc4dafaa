"""Acceptance on real data: Apple's released S0 checkpoint, ported, on 1,300
real ImageNet validation images reproduces the independent PyTorch figures
(top-1 0.808, top-5 0.949; ../shared/data/README.md), and the fused and
branched paths agree image by image."""

import json
import subprocess
import sys

import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import data, evaluation
from tests.conftest import ROOT


def test_s0_imagenet_val_1300(shared_data, test_tmp):
    out = test_tmp / "eval_s0.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--variant=s0",
         f"--weights={shared_data / 'mobileone_s0.pth.tar'}", "--fused",
         f"--data={shared_data / 'imagenet-val-1300'}", f"--json={out}", "--per_image"],
        capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n"] == 1300
    assert round(result["top1"], 3) == 0.808
    assert round(result["top5"], 3) == 0.949

    # the branched (train-time) form, initialised from the fused checkpoint,
    # predicts the same class on every image (subset, to keep the suite fast)
    paths, labels = data.list_examples(shared_data / "imagenet-val-1300")
    branched = mo.MobileOne("s0", weights=str(shared_data / "mobileone_s0.pth.tar"),
                            classifier_activation=None)
    images = data.load_images(paths[:96])
    preds = branched.predict(images, batch_size=32, verbose=0).argmax(-1)
    assert preds.tolist() == result["predictions"][:96]


def test_classify_script_prints_top5(shared_data):
    image = shared_data / "imagenet-val-1300" / "images" / "ILSVRC2012_val_00000347.JPEG"
    env = dict(__import__("os").environ, MOBILEONE_TF_CHECKPOINTS=str(shared_data))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "classify.py"), str(image),
                          "--variant=s0", "--weights=imagenet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].endswith("ILSVRC2012_val_00000347.JPEG") and len(lines) == 6
    assert "canoe (n02951358)" in lines[1]  # label 472 in labels.csv


def test_scripts_reject_bad_input(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "classify.py"),
                          str(tmp_path / "absent.jpg"), "--weights=none"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "No such image file" in run.stderr
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"),
                          f"--data={tmp_path}", "--weights=none", f"--json={tmp_path / 'r.json'}"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "neither labels.csv nor class subfolders" in run.stderr
    assert not (tmp_path / "r.json").exists()


def test_evaluate_counts_top1_top5():
    scores = np.eye(6, 10, dtype="float32") + np.linspace(0, 0.5, 10)[None]
    labels = np.array([0, 1, 2, 9, 8, 0])
    result = evaluation.evaluate(lambda x: scores[: len(x)], [(np.zeros((6, 1)), labels)],
                                 progress=False)
    # rows 0-2 right; rows 3-4 have 9 and 8 in their top 5; row 5's label 0 ranks last
    assert result["top1"] == pytest.approx(3 / 6)
    assert result["top5"] == pytest.approx(5 / 6)
