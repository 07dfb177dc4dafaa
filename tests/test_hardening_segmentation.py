"""Issue 25: scripts/train_segmenter.py / mobileone_tf.segmentation on bad or
unusual input. Palette (P) and 16-bit (I;16) masks are read as the class
indices that were written (not as grey levels, not as zeros); a truncated
training JPEG or mask is named before training, and nothing is left in the
output folder (--resume refusing changed flags: tests/test_segmentation.py)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import import_or_missing  # noqa: E402

import_or_missing("keras_hub", extra="hub")

from PIL import Image  # noqa: E402

from mobileone_tf import cli  # noqa: E402
from mobileone_tf.segmentation import data as seg_data  # noqa: E402
from mobileone_tf.segmentation import runner  # noqa: E402
from mobileone_tf.training.callbacks import FailAt  # noqa: E402
from mobileone_tf.training.rundir import run_state  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_segmentation import _folder  # noqa: E402

# the known class indices of each mask: 0..11 (11 = void) in 64x96 patterns
MASKS = [np.arange(64 * 96).reshape(64, 96) % 12,
         (np.arange(64 * 96).reshape(64, 96) // 97) % 12,
         np.random.default_rng(3).integers(0, 12, (64, 96))]


def _palette_png(path, mask):
    """A P-mode PNG whose pixel values are ``mask`` and whose palette colours
    have grey levels unrelated to the indices."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette([c for i in range(256) for c in (255 - 20 * i % 256, 7 * i % 256, 100)])
    im.save(path)


def _16bit_png(path, mask):
    im = Image.fromarray(mask.astype(np.uint16))
    assert im.mode == "I;16"
    im.save(path)


def _script(*args):
    return subprocess.run([sys.executable, "scripts/train_segmenter.py", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def _assert_pipeline_yields(pairs, want):
    """The eval pipeline yields exactly ``want``; the training pipeline
    (scale 1, crop = image size) each mask or its mirror image."""
    (_, masks), = seg_data.eval_dataset(pairs, (64, 96), len(pairs), 11).take(1)
    np.testing.assert_array_equal(masks.numpy(), np.stack(want))
    ds = seg_data.train_dataset(pairs[:1], (64, 96), 1, 11, scale_range=(1.0, 1.0))
    for _, masks in ds.repeat(4):
        got = masks.numpy()[0]
        assert np.array_equal(got, want[0]) or np.array_equal(got, want[0][:, ::-1])


@pytest.mark.parametrize("writer", [_palette_png, _16bit_png], ids=["palette", "16bit"])
def test_palette_and_16bit_masks_are_class_indices(tmp_path, writer):
    root = _folder(tmp_path / "data", MASKS)
    pairs = seg_data.split_pairs(root, "train")
    for (_, mask_path), mask in zip(pairs, MASKS):
        writer(mask_path, mask)
    assert Image.open(pairs[0][1]).mode == ("P" if writer is _palette_png else "I;16")
    assert seg_data.check_masks(pairs, 11, 11) == (64, 96)
    _assert_pipeline_yields(pairs, MASKS)
    for (_, mask_path), mask in zip(pairs, MASKS):
        np.testing.assert_array_equal(seg_data.read_mask(mask_path, 11, 11), mask)


def test_rgb_mask_and_value_outside_classes_stay_errors(tmp_path):
    root = _folder(tmp_path / "data", MASKS[:2])
    (_, first), (_, second) = seg_data.split_pairs(root, "train")
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(first)
    with pytest.raises(ValueError, match=re.escape(f"{first}: mask mode RGB")):
        seg_data.read_mask(first, 11, 11)
    _16bit_png(second, np.full((64, 96), 300))
    with pytest.raises(ValueError, match=re.escape(f"{second}: mask value 300 is outside")):
        seg_data.read_mask(second, 11, 11)


def test_truncated_training_jpeg_is_named_before_training(tmp_path):
    root = _folder(tmp_path / "data", MASKS[:2])
    bad = root / "images" / "im1.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(bad, quality=95)
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])  # the header survives, the scan data does not
    out = tmp_path / "run"
    proc = _script("--data", root, "--output_dir", out, "--epochs", 1, "--batch_size", 1,
                   "--crop_size", "64,96", "--fused")
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert str(bad) in lines[0] and "truncated" in lines[0]
    assert not out.exists()  # no run folder: the next run starts fresh


def test_truncated_mask_is_named(tmp_path):
    root = _folder(tmp_path / "data", MASKS[:2])
    bad = root / "masks" / "im1.png"
    _palette_png(bad, MASKS[2])
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    config = runner.SegConfig(epochs=1, batch_size=1, crop_size=(64, 96), fused=True)
    with pytest.raises(ValueError) as info:
        runner.run(config, root, tmp_path / "run")
    line = cli.error_message(info.value)
    assert line.startswith(f"{bad}: ") and "truncated" in line, line
    assert not (tmp_path / "run").exists()


def test_run_failing_in_its_first_epoch_leaves_nothing(tmp_path):
    root = _folder(tmp_path / "data", MASKS[:2])
    config = runner.SegConfig(epochs=1, batch_size=1, crop_size=(64, 96), fused=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run(config, root, tmp_path / "run", callbacks=[FailAt(0, 0)])
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run(config, root, tmp_path / "kept", callbacks=[FailAt(0, 0)])
    assert os.listdir(tmp_path / "kept") == ["notes.txt"]
    assert run_state(tmp_path / "kept") == "new"
