"""Segmentation (mobileone_tf.segmentation): bad input named, the scores
against a hand-computed confusion matrix, the 360x480 deploy model exported
to TFLite and ONNX (verified against Keras), a run resumed from exactly the
weights of its last completed epoch and scored like a confusion matrix
counted here from its fused model's predictions, and
scripts/train_segmenter.py on a tiny slice of CamVid."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import import_or_missing  # noqa: E402

import_or_missing("keras_hub", extra="hub")

import keras  # noqa: E402
from PIL import Image  # noqa: E402

import mobileone_tf as mo  # noqa: E402
from mobileone_tf import cli, export, segmentation  # noqa: E402
from mobileone_tf.segmentation import data as seg_data  # noqa: E402
from mobileone_tf.segmentation import metrics as seg_metrics  # noqa: E402
from mobileone_tf.segmentation import runner  # noqa: E402
from mobileone_tf.segmentation.model import check_size  # noqa: E402
from mobileone_tf.training.callbacks import FailAt  # noqa: E402
from mobileone_tf.training.rundir import run_state  # noqa: E402
from tests.conftest import ROOT, require_shared  # noqa: E402
from tests.helpers import randomize_batchnorm, rel_max_diff  # noqa: E402


@pytest.mark.parametrize("size,side", [((360, 480), "height 360"), ((384, 500), "width 500"),
                                       ((16, 64), "height 16")])
def test_size_not_divisible_by_32_is_named(size, side):
    with pytest.raises(ValueError, match=f"{side} is not a multiple of 32"):
        check_size(size)
    with pytest.raises(ValueError, match=side):
        segmentation.build_segmenter("mobileone_s0", 11, size)


def _folder(root, masks):
    """A CamVid-layout folder with one 64x96 image (random pixels, PNG: read
    back exactly) per mask (all splits)."""
    for sub in ("images", "masks", "splits"):
        os.makedirs(root / sub, exist_ok=True)
    stems = []
    rng = np.random.default_rng(len(masks))
    for i, mask in enumerate(masks):
        stem = f"im{i}"
        image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
        stems.append(stem)
    for split in ("train", "val", "test"):
        (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def test_mask_value_outside_classes_is_named(tmp_path):
    good = np.zeros((64, 96), int)
    bad = good.copy()
    bad[3, 4] = 12
    root = _folder(tmp_path / "data", [good, bad])
    config = runner.SegConfig(epochs=1, batch_size=1, crop_size=(64, 96))
    with pytest.raises(ValueError, match=r"im1\.png: mask value 12 is outside the classes "
                                         r"0\.\.10 and ignore class 11"):
        runner.run(config, root, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
    assert seg_data.check_masks(seg_data.split_pairs(root, "train", limit=1), 11, 11) == (64, 96)
    with pytest.raises(FileNotFoundError, match="no split file"):
        seg_data.split_pairs(tmp_path, "train")


def test_scores_against_hand_computed_confusion_matrix():
    """:func:`metrics.evaluate` (what a run reports) over two batches of a
    stand-in model's logits, against the confusion matrix counted by hand."""
    # 3 classes; 3 = ignored. Batch 1: pixels (true, predicted) =
    # (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (3,2); batch 2: (1,0) (2,2) (3,1)
    true = [np.array([[0, 0, 1, 1, 2, 2, 3]]), np.array([[1, 2, 3]])]
    pred = [np.array([[0, 1, 1, 1, 2, 0, 2]]), np.array([[0, 2, 1]])]
    batches = [(np.zeros(t.shape + (3,), "float32"), t) for t in true]
    logits = iter([np.eye(3, dtype="float32")[p] for p in pred])
    got = seg_metrics.evaluate(lambda images, training: next(logits), batches, 3, 3,
                               ["a", "b", "c"])
    # confusion[true, pred] = [[1, 1, 0], [1, 2, 0], [1, 0, 2]] (8 labelled pixels)
    # a: TP 1, FP 2, FN 1 -> 1/4; b: TP 2, FP 1, FN 1 -> 2/4; c: TP 2, FN 1 -> 2/3
    expected = {"a": 1 / 4, "b": 2 / 4, "c": 2 / 3}
    assert got["per_class_iou"] == pytest.approx(expected)
    assert got["mean_iou"] == pytest.approx((1 / 4 + 2 / 4 + 2 / 3) / 3)
    assert got["pixel_accuracy"] == pytest.approx(5 / 8) and got["labelled_pixels"] == 8
    # a class absent from labels and predictions is left out of the mean
    absent = seg_metrics.scores(np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert absent["per_class_iou"] == {"a": 3 / 4, "b": 4 / 5, "c": None}
    assert absent["mean_iou"] == pytest.approx((3 / 4 + 4 / 5) / 2)


@pytest.fixture(scope="module")
def deploy_360x480():
    segmenter = randomize_batchnorm(segmentation.build_segmenter("mobileone_s0", 11, (384, 480)),
                                    seed=11)
    fused = mo.fuse(segmenter)
    return segmenter, fused, segmentation.deploy_model(fused, (360, 480))


def test_deploy_model_pads_and_names_outputs(deploy_360x480):
    segmenter, fused, deploy = deploy_360x480
    x = np.random.default_rng(2).uniform(0, 255, (1, 360, 480, 3)).astype("float32")
    padded = np.pad(x, ((0, 0), (0, 24), (0, 0), (0, 0)))
    want = segmenter.predict(padded, verbose=0)[:, :360]
    got = deploy.predict(x, verbose=0)
    assert got.shape == (1, 360, 480, 11) and deploy.layers[-1].name == "logits"
    assert rel_max_diff(want, got) <= 1e-5
    class_map = segmentation.deploy_model(fused, (360, 480), output="class_map")
    np.testing.assert_array_equal(class_map.predict(x, verbose=0), got.argmax(-1))
    with pytest.raises(ValueError, match="takes 384x480 images; deploying at 300x480 needs "
                                         "one built for 320x480"):
        segmentation.deploy_model(fused, (300, 480))


def test_backbone_doc_task_example(tmp_path):
    """docs/backbone.md's DeepLabV3+/RetinaNet example as written (Apple's S0
    checkpoint in the working folder): the segmenter fuses, deploys at 360x480
    and exports to TFLite (export's verification against Keras), and the file
    gives the Keras model's logits."""
    from mobileone_tf import runtime
    from tests.doc_examples import run_block
    shared = require_shared("mobileone_s0.pth.tar")
    (tmp_path / "mobileone_s0.pth.tar").symlink_to(shared / "mobileone_s0.pth.tar")
    ns = run_block("docs/backbone.md", 1, cwd=tmp_path)
    assert type(ns["fused"]).__name__ == "DeepLabV3ImageSegmenter"
    assert type(ns["detector"]).__name__ == "RetinaNetObjectDetector"
    path = tmp_path / "camvid_s0.tflite"
    (inp,), (out,) = runtime.tflite_io(str(path))
    assert list(inp["shape"]) == [1, 360, 480, 3]
    assert (out["name"], list(out["shape"])) == ("logits", [1, 360, 480, 11])
    x = np.random.default_rng(4).uniform(0, 255, (1, 360, 480, 3)).astype("float32")
    assert rel_max_diff(ns["deploy"].predict(x, verbose=0), runtime.run_tflite(str(path), x)) <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "mlpackage"])
def test_segmenter_exports_at_360x480(deploy_360x480, tmp_path, fmt):
    """ONNX runs and matches Keras (export's strict verification); Core ML is
    spec-checked (no Core ML runtime on Linux). TFLite:
    test_backbone_doc_task_example."""
    _, _, deploy = deploy_360x480
    to = {"onnx": export.to_onnx, "mlpackage": export.to_coreml}[fmt]
    path, report = to(deploy, str(tmp_path / f"segmenter.{fmt}"), input_size=(360, 480),
                      fuse=False)
    assert os.path.exists(path)
    (output,) = report["outputs"]
    assert output["name"] == "logits"
    if fmt == "mlpackage":
        checks = export.coreml.check_coreml(path, deploy)["checks"]
        assert all(checks.values()), checks
        return
    assert list(output["shape"]) == [1, 360, 480, 11]
    assert report["verification"]["passed"] is True
    assert report["verification"]["rel_max_diff"] <= 1e-4


class _Weights(keras.callbacks.Callback):
    """Copies of every model variable when the first training step of a
    ``fit`` starts and at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.first, self.epoch_end = None, {}

    def _copy(self):
        return [np.array(v.numpy()) for v in self.model.weights]

    def on_train_batch_begin(self, batch, logs=None):
        if self.first is None:
            self.first = self._copy()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end[epoch] = self._copy()


def _scores_by_hand(run_dir, data_dir, stems, num_classes=11, ignore=11):
    """The run's fused model (``fused.keras``) on the PNG images, and IoU /
    pixel accuracy from a confusion matrix counted here with NumPy."""
    model = keras.saving.load_model(str(run_dir / "fused.keras"), compile=False)
    cm = np.zeros((num_classes, num_classes), np.int64)
    for stem in stems:
        image = np.asarray(Image.open(data_dir / "images" / f"{stem}.png"), np.float32)
        mask = np.asarray(Image.open(data_dir / "masks" / f"{stem}.png")).astype(int)
        pred = model.predict(image[None], verbose=0)[0].argmax(-1)
        keep = mask != ignore
        np.add.at(cm, (mask[keep], pred[keep]), 1)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = [t / u if u else None for t, u in zip(tp, union)]
    return {"per_class_iou": dict(zip(seg_data.CAMVID_CLASSES, iou)),
            "mean_iou": np.mean([v for v in iou if v is not None]),
            "pixel_accuracy": tp.sum() / cm.sum(), "labelled_pixels": int(cm.sum())}


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    """A fused 2-epoch run killed at the first step of its epoch 1 (the
    branched step needs TF_ENABLE_ONEDNN_OPTS=0, which the script sets; see
    tests/hub_worker.py): its config, data folder, run folder and the
    weights it had at its first step and at the end of epoch 0."""
    tmp = tmp_path_factory.mktemp("crashed")
    rng = np.random.default_rng(0)
    data_dir = _folder(tmp / "data", [rng.integers(0, 12, (64, 96)) for _ in range(4)])
    config = runner.SegConfig(epochs=2, batch_size=2, crop_size=(64, 96), fused=True,
                              learning_rate=1e-4)
    out = tmp / "run"
    first = _Weights()
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run(config, data_dir, out, callbacks=[first, FailAt(1, 0)])
    assert run_state(out) == "unfinished"
    return config, data_dir, out, first


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_resume_refuses_changed_flags(crashed_run):
    """--resume with other training flags: one line naming each, nothing written."""
    _, data_dir, out, _ = crashed_run
    before = _snapshot(out)
    changed = runner.SegConfig(epochs=3, batch_size=1, crop_size=(64, 96), fused=True,
                               learning_rate=1e-3, seed=5)
    with pytest.raises(ValueError) as info:
        runner.run(changed, data_dir, out, resume=True)
    line = cli.error_message(info.value)
    for part in ("--epochs was 2, not 3", "--batch_size was 2, not 1",
                 "--learning_rate was 0.0001, not 0.001", "--seed was 0, not 5"):
        assert part in line, line
    assert "fused" not in line and "crop_size" not in line
    assert _snapshot(out) == before  # nothing written


def test_resume_of_fused_run_without_fused_says_so(crashed_run):
    """scripts/train_segmenter.py --resume reaches the runner's check."""
    _, data_dir, out, _ = crashed_run
    before = _snapshot(out)
    proc = subprocess.run(
        [sys.executable, "scripts/train_segmenter.py", "--data", str(data_dir), "--output_dir",
         str(out), "--epochs", "2", "--batch_size", "2", "--crop_size", "64,96",
         "--learning_rate", "1e-4", "--resume"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --resume: "), proc.stderr[-3000:]
    assert "the run was fused: add --fused" in lines[0]
    assert _snapshot(out) == before


def test_runner_resumes_and_refuses_a_finished_run(crashed_run, tmp_path):
    """The killed run (moved to another folder, as a user may) continues from
    exactly (bit for bit) the weights it had at the end of epoch 0; a
    finished one is refused; its test scores equal a confusion matrix counted
    from its fused model."""
    config, data_dir, crashed, first = crashed_run
    out = tmp_path / "moved"
    shutil.copytree(crashed, out)  # the fixture's folder stays unfinished for the others
    with pytest.raises(FileExistsError, match="--resume"):
        runner.run(config, data_dir, out)
    resumed = _Weights()
    summary = runner.run(config, data_dir, out, resume=True, callbacks=[resumed])
    assert summary["epochs_run_here"] == 1 and summary["log_rows"] == 2
    # the resumed run starts from the weights saved at the end of epoch 0,
    # not from a fresh model nor from the crashed step of epoch 1
    saved, start = first.epoch_end[0], resumed.first
    assert sorted(first.epoch_end) == [0] and len(saved) == len(start)
    assert any(not np.array_equal(a, b) for a, b in zip(saved, first.first))  # it trained
    for a, b in zip(saved, start):
        np.testing.assert_array_equal(a, b)
    assert sorted(resumed.epoch_end) == [1]
    test = summary["test"]
    assert test["images"] == 4
    want = _scores_by_hand(out, data_dir, [f"im{i}" for i in range(4)])
    assert test["labelled_pixels"] == want["labelled_pixels"]
    assert test["per_class_iou"] == pytest.approx(want["per_class_iou"], abs=1e-9)
    assert test["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-9)
    assert test["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], abs=1e-9)
    with pytest.raises(FileExistsError, match="finished run"):
        runner.run(config, data_dir, out)


@pytest.mark.skipif(not os.environ.get("MOBILEONE_TF_SEGMENTATION_ALL"),
                    reason="slow (2 subprocess runs, ~2 min): MOBILEONE_TF_SEGMENTATION_ALL=1")
def test_train_segmenter_script_on_camvid_slice(tmp_path):
    shared = require_shared("camvid/splits/train.txt", "mobileone_s0.pth.tar")
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/train_segmenter.py", "--data", str(shared / "camvid"),
           "--weights", str(shared / "mobileone_s0.pth.tar"), "--limit", "2", "--epochs", "1",
           "--batch_size", "2", "--crop_size", "64,96", "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for split in ("val", "test"):
        scores = summary[split]
        assert 0.0 <= scores["mean_iou"] <= 1.0 and scores["images"] == 2
        assert set(scores["per_class_iou"]) == set(seg_data.CAMVID_CLASSES)
    assert {"fused.keras", "best.weights.h5", "last.weights.h5", "log.csv"} <= set(
        os.listdir(out))
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "error:" in again.stderr and "finished run" in again.stderr
