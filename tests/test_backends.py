"""MobileOne on every Keras 3 backend: tests/backend_cases.py in a subprocess
per backend (``KERAS_BACKEND`` is fixed at import), each held to timm's
outputs (tests/torch_reference.py) and to KerasHub's own test harness; the
``.keras`` / ``.weights.h5`` files each backend writes load back here, on
TensorFlow, with timm's logits (and TensorFlow's ``.keras`` loads there)."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import keras

import mobileone_tf as mo
from tests.conftest import require_modules
from tests.helpers import rel_max_diff
from tests.torch_fixtures import torch_ref  # noqa: F401 (fixture)

CASES = pathlib.Path(__file__).with_name("backend_cases.py")
ROOT = CASES.parent.parent
#: backend -> (passed, skipped) of backend_cases.py: TensorFlow skips the
#: training run (tests/test_training.py covers it), JAX too (minutes of XLA
#: compilation), and JAX the float64 gradient check (see backend_cases.py).
EXPECTED = {"tensorflow": (13, 1), "jax": (12, 2), "torch": (14, 0)}
MODULES = {"tensorflow": (), "jax": ("jax",), "torch": ("torch",)}


def _ported(ref, weights):
    return mo.MobileOne("s0", weights=weights, include_preprocessing=False,
                        classifier_activation=None, input_shape=ref["x_nhwc"].shape[1:])


@pytest.fixture(scope="module")
def tensorflow_keras_file(torch_ref, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("tf_saved") / "s0.keras"
    _ported(np.load(torch_ref / "s0.npz"), str(torch_ref / "s0_timm.pth")).save(path)
    return path


@pytest.mark.parametrize("backend", list(EXPECTED))
def test_backend(backend, torch_ref, tensorflow_keras_file, tmp_path):  # noqa: F811
    require_modules("keras_hub", "grain", *MODULES[backend])
    env = dict(os.environ, KERAS_BACKEND=backend, MOBILEONE_TF_TORCH_REF=str(torch_ref),
               MOBILEONE_TF_BACKEND_OUT=str(tmp_path),
               MOBILEONE_TF_KERAS_FILE=str(tensorflow_keras_file))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           "-p", "no:xdist", "--noconftest", str(CASES)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{backend}:\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed)", summary)}
    assert (counts.get("passed", 0), counts.get("skipped", 0)) == EXPECTED[backend], summary

    ref = np.load(torch_ref / "s0.npz")
    x = ref["x_nhwc"]
    loaded = keras.models.load_model(tmp_path / f"{backend}.keras")
    assert rel_max_diff(ref["logits"], loaded.predict(x, verbose=0)) <= 1e-4
    ours = _ported(ref, str(tmp_path / f"{backend}.weights.h5"))
    assert rel_max_diff(ref["logits"], ours.predict(x, verbose=0)) <= 1e-4
    plain = _ported(ref, None)
    plain.load_weights(tmp_path / f"{backend}_keras.weights.h5")
    assert rel_max_diff(ref["logits"], plain.predict(x, verbose=0)) <= 1e-4


def test_scripts_name_the_backend_they_need(tmp_path):
    """The scripts run on TensorFlow: under another backend, one line saying so."""
    env = dict(os.environ, KERAS_BACKEND="jax")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), "--format",
                           "tflite", "--output", str(tmp_path / "m.tflite")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: convert.py runs on Keras' TensorFlow backend (KERAS_BACKEND=jax here): run it "
        "with KERAS_BACKEND=tensorflow; .keras and .weights.h5 files saved on any backend "
        "load there"]
    assert not list(tmp_path.iterdir())
