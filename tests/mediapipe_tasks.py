"""MediaPipe Tasks, the real client of the exported ``.tflite`` files.

Run as a SCRIPT in a subprocess whose ``PYTHONPATH`` starts with the folder
that holds ``mediapipe`` (absl-py 2.x there; never imported beside
TensorFlow)::

    python tests/mediapipe_tasks.py classify MODEL IMAGES.npy OUT.json
    python tests/mediapipe_tasks.py embed MODEL IMAGES.npy OUT.npy

``IMAGES.npy``: uint8 ``(N, H, W, 3)`` RGB at the model's input size (so
MediaPipe's own resize is the identity). ``classify``: ``vision.ImageClassifier``
with every class returned -> ``{"scores": (N, C) by class index, "names":
{index: category_name}, "tensorflow": whether TF got imported}``. ``embed``:
``vision.ImageEmbedder`` (no L2 normalization, float) -> ``(N, D)`` embeddings.

The test modules import :func:`mediapipe_folder` and :func:`run` (light: no
MediaPipe, no TF at import).
"""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.abspath(__file__)


def mediapipe_folder():
    """The MediaPipe folder (``$MOBILEONE_TF_MEDIAPIPE_DIR``, or installed into
    the session's Keras cache by the package's explicit install,
    ``python -m mobileone_tf.export.mediapipe_install``: the test suite asks
    for it); skips the test (fails it under CI) when pip cannot install it."""
    from tests.conftest import missing_reference
    from mobileone_tf.export import ExportError, metadata
    try:
        return metadata.install_mediapipe()
    except ExportError as e:
        missing_reference(f"MediaPipe unavailable (no PyPI?): {e}")


def run(command, model, images, folder, tmp_path):
    """Runs this script's ``command`` on ``images`` (uint8 NHWC); returns the
    parsed result (see the module docstring)."""
    from mobileone_tf.export import metadata
    src, out = tmp_path / f"{command}_in.npy", tmp_path / f"{command}_out"
    np.save(src, np.ascontiguousarray(images, dtype=np.uint8))
    proc = subprocess.run([sys.executable, SCRIPT, command, str(model), str(src), str(out)],
                          check=False, capture_output=True, text=True,
                          env=metadata.worker_env(folder), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if command == "embed":
        return np.load(str(out) + ".npy")
    result = json.loads(out.read_text())
    result["scores"] = np.asarray(result["scores"], np.float32)
    result["names"] = {int(k): v for k, v in result["names"].items()}
    return result


def _image(mp, array):
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(array))


def main(command, model, images_path, out):
    from mobileone_tf.export import metadata_worker
    mp = metadata_worker.import_mediapipe()
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions
    images = np.load(images_path)
    base = BaseOptions(model_asset_path=model)
    if command == "classify":
        options = vision.ImageClassifierOptions(base_options=base, max_results=-1)
        scores, names = None, {}
        with vision.ImageClassifier.create_from_options(options) as task:
            for n, image in enumerate(images):
                categories = task.classify(_image(mp, image)).classifications[0].categories
                if scores is None:
                    scores = np.zeros((len(images), len(categories)), np.float32)
                for c in categories:
                    scores[n, c.index] = c.score
                    names[c.index] = c.category_name
        tf_loaded = sys.modules.get("tensorflow") is not None
        with open(out, "w") as f:
            json.dump({"scores": scores.tolist(), "names": names, "tensorflow": tf_loaded}, f)
    else:
        options = vision.ImageEmbedderOptions(base_options=base, l2_normalize=False,
                                              quantize=False)
        with vision.ImageEmbedder.create_from_options(options) as task:
            vectors = [task.embed(_image(mp, image)).embeddings[0].embedding for image in images]
        np.save(out + ".npy", np.stack(vectors).astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:5])
