"""Test isolation: Keras, torch, onnxruntime and TF write under ~/.keras,
~/.cache and $TMPDIR; point all of them at one temporary folder. Must run
before TensorFlow/Keras are imported (pytest imports conftest first)."""

import os
import pathlib
import tempfile

_TMP = pathlib.Path(tempfile.mkdtemp(prefix="mobileone_tf_tests_"))
for _sub in ("keras", "cache", "torch", "tmp"):
    (_TMP / _sub).mkdir()
os.environ["KERAS_HOME"] = str(_TMP / "keras")
os.environ["XDG_CACHE_HOME"] = str(_TMP / "cache")
os.environ["TORCH_HOME"] = str(_TMP / "torch")
os.environ["TMPDIR"] = str(_TMP / "tmp")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("MOBILEONE_TF_CHECKPOINTS", None)
os.environ.pop("TF_USE_LEGACY_KERAS", None)
tempfile.tempdir = str(_TMP / "tmp")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (Apple's S0 checkpoint, real ImageNet images); skips
    the test when it is absent (a user's fresh clone has none)."""
    if not (SHARED_DATA / "mobileone_s0.pth.tar").is_file():
        pytest.skip(f"real reference data not found at {SHARED_DATA} "
                    "(see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def test_tmp():
    """The session's temporary root (already KERAS_HOME's parent)."""
    return _TMP
