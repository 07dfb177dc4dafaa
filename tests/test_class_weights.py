"""Class weighting of the segmentation trainer (issue 22): median frequency
(SegNet) and ENet weights against a hand-computed example, the weighted loss
against PyTorch's ``CrossEntropyLoss(weight=..., ignore_index=...)`` (in a
subprocess), bad weight files named in one line, and a tiny run of the
trainer with ``--class_weights median_frequency`` on the EfficientNet-Lite0
encoder whose saved model scores as counted here."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, import_or_missing, require_modules

import_or_missing("keras_hub", extra="hub")

from mobileone_tf import cli  # noqa: E402
from mobileone_tf.segmentation import runner, weighting  # noqa: E402

V = 3  # the void class of the hand example (classes 0, 1, 2)
MASKS = [np.array([[0, 0], [0, 1]]), np.array([[1, 1], [2, V]])]


def test_median_frequency_and_enet_by_hand():
    """Class 0: 3 pixels in the one 4-pixel image where it appears
    (freq 3/4); class 1: 3 pixels in 4 + 3 labelled pixels (3/7); class 2:
    1 in 3 (1/3). Median 3/7: weights 4/7, 1, 9/7. ENet with p = 3/7, 3/7,
    1/7: 1/ln(1.02 + p)."""
    pixels, image_pixels = weighting.class_pixel_counts(MASKS, 3, ignore_class=V)
    np.testing.assert_array_equal(pixels, [3, 3, 1])
    np.testing.assert_array_equal(image_pixels, [4, 7, 3])
    mf = weighting.class_weights("median_frequency", MASKS, 3, V)
    np.testing.assert_allclose(mf, [4 / 7, 1.0, 9 / 7], rtol=1e-12)
    enet = weighting.class_weights("enet", MASKS, 3, V)
    np.testing.assert_allclose(enet, [2.6984883, 2.6984883, 6.6277823], rtol=1e-6)
    assert weighting.class_weights("none", MASKS, 3, V) is None
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no training pixel"):
        weighting.class_weights("median_frequency", [np.array([[0, 1]])], 3, V)


def test_weighted_loss_equals_pytorch(tmp_path):
    require_modules("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 5, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 5, 6)).astype(np.int64)  # 3 = ignored
    weights = np.array([0.5, 2.0, 7.0], np.float32)
    np.savez(tmp_path / "in.npz", logits=logits, labels=labels, weights=weights)
    code = ("import numpy as np, torch; d = np.load('in.npz'); "
            "f = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(d['weights']), "
            "ignore_index=3); print(float(f(torch.from_numpy(d['logits']).permute(0, 3, 1, 2), "
            "torch.from_numpy(d['labels']))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    want = float(proc.stdout.split()[-1])
    loss = weighting.weighted_cross_entropy(weights, ignore_class=3)
    assert float(loss(labels.astype(np.int32), logits)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("values,message", [
    ([1.0, 2.0], "2 weight\\(s\\) for 11 classes"),
    ([1.0] * 10 + [-0.5], "weight of class 10 is -0.5"),
    ("x", "not a JSON list of numbers")])
def test_bad_weight_file_is_named(tmp_path, values, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(values) if values != "x" else "{x")
    config = runner.SegConfig(class_weights=str(path))
    with pytest.raises(ValueError) as info:
        config.check()
    line = cli.error_message(info.value)
    assert line.startswith(f"--class_weights {path}: ") and "\n" not in line, line
    assert __import__("re").search(message, line), line


def test_script_names_a_bad_weight_file_before_reading_data(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("[1, 2, 3]")
    proc = subprocess.run(
        [sys.executable, "scripts/train_segmenter.py", "--data", str(tmp_path / "absent"),
         "--output_dir", str(tmp_path / "run"), "--class_weights", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0] == f"error: --class_weights {path}: 3 weight(s) for 11 classes (one per " \
                       "class, in class-index order)"
    assert not (tmp_path / "run").exists()


def test_weighted_run_on_lite0_encoder(tmp_path):
    """The trainer with median frequency weights on the EfficientNet-Lite0
    encoder: the weights it records are the median frequency weights of the
    training masks counted here, and its saved model (``fused.keras``, the
    Lite backbone revived from its config) scores as a confusion matrix
    counted here."""
    from tests.test_segmentation import _folder, _scores_by_hand
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 12, (64, 96)) for _ in range(4)]
    data_dir = _folder(tmp_path / "data", masks)
    config = runner.SegConfig(backbone="efficientnet_lite0", epochs=1, batch_size=2,
                              crop_size=(64, 96), class_weights="median_frequency")
    summary = runner.run(config, data_dir, tmp_path / "run")
    freq = []
    for c in range(11):
        present = [m for m in masks if (m == c).any()]
        freq.append(sum((m == c).sum() for m in present) / sum((m != 11).sum() for m in present))
    np.testing.assert_allclose(summary["class_weights"], np.median(freq) / np.array(freq),
                               rtol=1e-5)
    want = _scores_by_hand(tmp_path / "run", data_dir, [f"im{i}" for i in range(4)])
    assert summary["test"]["mean_iou"] == pytest.approx(want["mean_iou"], abs=1e-9)
    assert summary["config"]["class_weights"] == "median_frequency"
