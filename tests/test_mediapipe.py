"""MediaPipe Tasks on Apple's S0 exports, on real images (issue 13).

The reference is the Keras model with Apple's released weights (ported by the
package; the port itself is checked against an independent PyTorch forward
pass elsewhere); the client is MediaPipe Tasks 1.2.2 in a subprocess
(``tests/mediapipe_tasks.py``), reading only the ``.tflite`` file and its
metadata. Images: the three bundled sample photos and 50 ImageNet validation
images spread over ``imagenet-val-1300``, eval transform (resize 256, centre
crop 224) applied once and fed as the same uint8 pixels to both sides, so
MediaPipe's own resize is the identity.

``MOBILEONE_TF_MEDIAPIPE_ALL=1`` adds the float16 file (slow sweep).
"""

import ast
import csv
import os
import subprocess
import sys

import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import data, export, runtime
from mobileone_tf.export import acceptance
from mobileone_tf.export import metadata
from tests import doc_examples, mediapipe_tasks
from tests.conftest import ROOT

SAMPLES = sorted(str(p) for p in (ROOT / "samples").glob("*.jpg"))
VAL_IMAGES = 50
QUANTIZE = ["none", "float16"] if os.environ.get("MOBILEONE_TF_MEDIAPIPE_ALL") == "1" else ["none"]


@pytest.fixture(scope="module")
def folder():
    return mediapipe_tasks.mediapipe_folder()


@pytest.fixture(scope="module")
def apple_s0(shared_data):
    return acceptance.build_s0(shared_data / "mobileone_s0.pth.tar")


@pytest.fixture(scope="module")
def images(shared_data):
    """uint8 (53, 224, 224, 3): the samples, then 50 validation images."""
    paths, _ = acceptance.labelled(shared_data / "imagenet-val-1300")
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, VAL_IMAGES).astype(int)]
    return data.load_images(SAMPLES + picks, 224).astype(np.uint8)


@pytest.fixture(scope="module")
def names_file(shared_data, tmp_path_factory):
    """ImageNet's names from ../shared/data/imagenet_classes.csv (not the
    package's class index), one per line: given to the export as ``labels``."""
    with open(shared_data / "imagenet_classes.csv", newline="") as f:
        names = [row["name"] for row in csv.DictReader(f)]
    path = tmp_path_factory.mktemp("names") / "imagenet.txt"
    path.write_text("\n".join(names) + "\n")
    return str(path), names


@pytest.fixture(scope="module")
def keras_probs(apple_s0, images):
    return apple_s0.predict(images.astype(np.float32), batch_size=53, verbose=0)


@pytest.mark.parametrize("quantize", QUANTIZE)
def test_classifier_top1_and_names(folder, apple_s0, images, names_file, keras_probs, quantize,
                                   tmp_path):
    """float32 (and float16): MediaPipe's top-1 class and name equal Keras'
    on every image; float32 probabilities to 1e-5 (measured 2e-6 on these
    53 images, 8e-6 on 303)."""
    labels, names = names_file
    path, _ = export.to_tflite(apple_s0, str(tmp_path / "s0.tflite"), quantize=quantize,
                               labels=labels, verify=False)
    result = mediapipe_tasks.run("classify", path, images, folder, tmp_path)
    top1 = result["scores"].argmax(-1)
    np.testing.assert_array_equal(top1, keras_probs.argmax(-1))
    assert [result["names"][i] for i in top1] == [names[i] for i in keras_probs.argmax(-1)]
    if quantize == "none":
        np.testing.assert_allclose(result["scores"], keras_probs, rtol=0, atol=1e-5)
    cat, coffee = top1[:2]  # samples/chelsea.jpg, coffee.jpg
    assert 281 <= cat <= 285 and coffee in (504, 967, 968), (cat, coffee)
    if quantize == "none":  # docs/android.md's Python example on this file, as written
        (tmp_path / "mobileone_s0.tflite").symlink_to(path)
        (tmp_path / "samples").symlink_to(ROOT / "samples")
        code, _ = doc_examples.block_source("docs/android.md", 0)
        # The --no-deps folder has no OpenCV (a user's `pip install mediapipe` has):
        # the package's stand-in for it first, then the example as written.
        code = ("from mobileone_tf.export import metadata_worker\n"
                "metadata_worker.import_mediapipe()\n" + code)
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, env=metadata.worker_env(folder), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
        # (MediaPipe resizes the whole photo, no centre crop: a cat class, its own score)
        assert len(printed) == 5 and printed[0][0] in names[281:286], printed
        assert [p for _, p in printed] == sorted((p for _, p in printed), reverse=True)


def test_classifier_uint8_camera_input(folder, apple_s0, images, names_file, keras_probs,
                                       shared_data, tmp_path):
    """int8 PTQ with uint8 input/output (``int8_io="uint8"``): the input's
    quantization is (1, 0), so MediaPipe's raw pixels are the tensor. MediaPipe
    gives the top-1 of LiteRT on the same file on >= 98 % of the images and of
    Keras on >= 85 % (PTQ; measured 0.917 vs Keras on 300 images)."""
    labels, _ = names_file
    path, report = export.to_tflite(
        apple_s0, str(tmp_path / "s0_uint8.tflite"), quantize="int8", int8_io="uint8",
        calibration_data=str(shared_data / "imagenette" / "train"), calibration_steps=32,
        labels=labels, verify=False)
    assert report["inputs"][0]["dtype"] == "uint8"
    assert report["inputs"][0]["quantization"] == [1.0, 0]
    assert report["metadata"]["raw_pixel_input"] is True
    assert (report["metadata"]["mean"], report["metadata"]["std"]) == ([0.0], [1.0])
    result = mediapipe_tasks.run("classify", path, images, folder, tmp_path)
    top1 = result["scores"].argmax(-1)
    litert = runtime.run_tflite(path, images.astype(np.float32)).argmax(-1)
    assert np.mean(top1 == litert) >= 0.98, (top1, litert)
    assert np.mean(top1 == keras_probs.argmax(-1)) >= 0.85


def test_embedder_features(folder, shared_data, images, tmp_path):
    """``include_top=False, pooling="avg"``: MediaPipe's ImageEmbedder returns
    Keras' 1024 features (cosine > 0.9999 per image, while different images
    stay apart)."""
    model = mo.MobileOne("s0", weights=str(shared_data / "mobileone_s0.pth.tar"),
                         input_shape=(None, None, 3), include_top=False, pooling="avg")
    path, _ = export.to_tflite(model, str(tmp_path / "s0_features.tflite"), verify=False)
    subset = images[:13]
    got = mediapipe_tasks.run("embed", path, subset, folder, tmp_path)
    want = model.predict(subset.astype(np.float32), verbose=0)
    assert got.shape == want.shape == (13, 1024)
    got_unit, want_unit = (v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (got, want))
    cosine = got_unit @ want_unit.T
    assert np.diag(cosine).min() > 0.9999, np.diag(cosine)
    assert (cosine - np.eye(13)).max() < 0.99  # the images are told apart
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
