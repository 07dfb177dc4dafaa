"""Scoring (top-1/top-5), folder evaluation with skipped images and label
checks, and the bad-input behaviour of scripts/classify.py and
scripts/evaluate.py (run in subprocesses: one ``error:`` line, no traceback)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mobileone_tf import evaluation, fileio
from tests.conftest import ROOT
from tests.image_fixtures import save, smooth_image, write_bad_images


def run_script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def assert_one_error_line(run, *needles):
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def mixed_folder(tmp_path):
    """labels.csv folder: 2 good images (labels 0 and 1) and the 3 bad kinds."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    save(str(root / "good0.jpg"), smooth_image(rng, 80, 100))
    save(str(root / "good1.png"), smooth_image(rng, 90, 70))
    bad = write_bad_images(root, rng)
    rows = ["good0.jpg,0", "corrupt.jpg,2", "good1.png,1", "truncated.jpg,3", "text.jpg,4"]
    (root / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    return root, bad


def test_evaluate_counts_top1_top5():
    scores = np.eye(6, 10, dtype="float32") + np.linspace(0, 0.5, 10)[None]
    labels = np.array([0, 1, 2, 9, 8, 0])
    result = evaluation.evaluate(lambda x: scores[: len(x)], [(np.zeros((6, 1)), labels)],
                                 progress=False)
    # rows 0-2 right; rows 3-4 have 9 and 8 in their top 5; row 5's label 0 ranks last
    assert result["top1"] == pytest.approx(3 / 6)
    assert result["top5"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="label 10 out of range for the model's 10 classes"):
        evaluation.evaluate(lambda x: scores[: len(x)], [(np.zeros((2, 1)), [0, 10])],
                            progress=False)
    assert evaluation.write_json is fileio.write_json


def test_evaluate_folder_skips_and_reports(mixed_folder):
    root, bad = mixed_folder

    def predict(images):  # class 0 first, class 1 second for every image
        return np.tile(np.array([[2, 1, 0, 0, 0]], np.float32), (len(images), 1))

    result = evaluation.evaluate_folder(predict, root, batch_size=2, image_size=64,
                                        progress=False)
    assert result["n"] == 2 and result["n_skipped"] == 3
    assert result["skipped"] == sorted(bad.values())
    assert result["labels"] == [0, 1] and result["predictions"] == [0, 0]
    assert result["top1"] == 0.5 and result["top5"] == 1.0
    assert [p.rsplit("/", 1)[1] for p in result["files"]] == ["good0.jpg", "good1.png"]
    # the class count comes from the model: label 3 is out of range of 3 classes
    with pytest.raises(ValueError, match=r"labels.csv:5 \(truncated.jpg\): label 3 out of range "
                                         r"for the model's 3 classes"):
        evaluation.evaluate_folder(lambda x: np.zeros((len(x), 3)), root, image_size=64,
                                   progress=False)
    for name in ("good0.jpg", "good1.png"):
        (root / name).write_bytes(b"gone bad")
    with pytest.raises(ValueError, match="no decodable image in .*5 of 5 images skipped"):
        evaluation.evaluate_folder(predict, root, image_size=64, progress=False)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "text"])
def test_classify_bad_image_one_error_line(tmp_path, kind):
    rng = np.random.default_rng(1)
    good = save(str(tmp_path / "good.jpg"), smooth_image(rng, 64, 64))
    path = write_bad_images(tmp_path, rng)[kind]
    run = run_script("classify.py", good, path, "--weights=none")
    assert_one_error_line(run, f"{path}: not a decodable image")
    assert run.stdout == ""


def test_classify_missing_or_no_image(tmp_path):
    run = run_script("classify.py", tmp_path / "absent.jpg", "--weights=none")
    assert_one_error_line(run, "No such image file", "absent.jpg")
    run = run_script("classify.py", "--weights=none", "--top=1")  # no image: the bundled samples
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [line for line in run.stdout.splitlines() if not line.startswith(" ")]
    assert [os.path.basename(p) for p in printed] == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]


def test_evaluate_script_skips_and_reports(mixed_folder, tmp_path):
    root, bad = mixed_folder
    out = tmp_path / "r.json"
    # labels 2..4 in range for the 1000-class model: skip and report
    run = run_script("evaluate.py", f"--data={root}", "--weights=none", "--image_size=64",
                     f"--json={out}", "--per_image")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n"] == 2 and result["n_skipped"] == 3
    assert result["skipped"] == sorted(bad.values()) and len(result["files"]) == 2
    assert "3 of 5 images skipped (not decodable): " + ", ".join(sorted(bad.values())) \
        in run.stdout
    # an existing result is not replaced without --overwrite
    again = run_script("evaluate.py", f"--data={root}", "--weights=none", f"--json={out}")
    assert_one_error_line(again, str(out), "--overwrite")
    # a label outside the model's 1000 classes: error naming the row, nothing written
    (root / "labels.csv").write_text("file,label\ngood0.jpg,0\ngood1.png,1000\n")
    run = run_script("evaluate.py", f"--data={root}", "--weights=none",
                     f"--json={tmp_path / 'r2.json'}")
    assert_one_error_line(run, "labels.csv:3 (good1.png): label 1000 out of range")
    assert not (tmp_path / "r2.json").exists()


def test_evaluate_script_help_and_bad_folder(tmp_path):
    run = run_script("evaluate.py", "--help")
    assert "skipped, counted and listed" in run.stdout  # absl exits 1 after --help
    run = run_script("evaluate.py", f"--data={tmp_path}", "--weights=none",
                     f"--json={tmp_path / 'r.json'}")
    assert_one_error_line(run, "neither labels.csv nor class subfolders")
    assert not (tmp_path / "r.json").exists()
