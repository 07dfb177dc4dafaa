"""Acceptance on real data: Apple's released S0 checkpoint, ported, on 1,300
real ImageNet validation images reproduces the independent PyTorch figures
(top-1 0.808, top-5 0.949; ../shared/data/README.md), and the fused and
branched paths agree image by image. Skips (naming the missing files) when
any file it needs under ../shared/data is absent."""

import json
import os
import subprocess
import sys

import mobileone_tf as mo
from mobileone_tf import data
from tests.conftest import ROOT, require_shared
from tests.image_fixtures import shared_csv_images

CHECKPOINT = "mobileone_s0.pth.tar"
VAL = "imagenet-val-1300"


def test_s0_imagenet_val_1300(test_tmp):
    paths = shared_csv_images(VAL)
    root = require_shared(CHECKPOINT)
    out = test_tmp / "eval_s0.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--variant=s0",
         f"--weights={root / CHECKPOINT}", "--fused", f"--data={root / VAL}",
         f"--json={out}", "--per_image", "--overwrite"],
        capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n"] == 1300 and result["n_skipped"] == 0 and result["skipped"] == []
    assert result["files"] == paths
    assert round(result["top1"], 3) == 0.808
    assert round(result["top5"], 3) == 0.949

    # the branched (train-time) form, initialised from the fused checkpoint,
    # predicts the same class on every image (subset, to keep the suite fast)
    branched = mo.MobileOne("s0", weights=str(root / CHECKPOINT), classifier_activation=None)
    images = data.load_images(paths[:96])
    preds = branched.predict(images, batch_size=32, verbose=0).argmax(-1)
    assert preds.tolist() == result["predictions"][:96]


def test_classify_script_prints_top5():
    image = f"{VAL}/images/ILSVRC2012_val_00000347.JPEG"
    root = require_shared(CHECKPOINT, image)
    env = dict(os.environ, MOBILEONE_TF_CHECKPOINTS=str(root))
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "classify.py"),
                          str(root / image), "--variant=s0", "--weights=imagenet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].endswith("ILSVRC2012_val_00000347.JPEG") and len(lines) == 6
    assert "canoe (n02951358)" in lines[1]  # label 472 in labels.csv
