"""Test isolation: Keras, torch, onnxruntime and TF write under ~/.keras,
~/.cache and $TMPDIR; point all of them at one temporary folder. Must run
before TensorFlow/Keras are imported (pytest imports conftest first)."""

import os
import pathlib
import re
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


class SharedPath(type(pathlib.Path())):
    """A path under ``../shared/data`` whose ``/`` skips the test (with the
    missing path as the reason) when the joined path does not exist, so a
    partly present ``../shared/data`` gives skips, not failures."""

    def __truediv__(self, key):
        path = super().__truediv__(key)
        if not path.exists():
            pytest.skip(f"reference data missing: {path} (see ../shared/data/README.md)")
        return path


def require_shared(*relpaths):
    """``../shared/data`` as a :class:`SharedPath`; skips the calling test
    unless the folder and every ``relpaths`` entry under it exist."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} "
                    "(see ../shared/data/README.md)")
    root = SharedPath(SHARED_DATA)
    for rel in relpaths:
        root / rel  # noqa: B018 (skips when missing)
    return root


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` (Apple's S0 checkpoint, real images) as a
    :class:`SharedPath`: skips when the folder, the checkpoint, or any path a
    test joins onto it is missing (a user's fresh clone has none)."""
    return require_shared("mobileone_s0.pth.tar")


_SHARED_PATH = re.compile(re.escape(str(SHARED_DATA)) + r"""[^\s'",:;)\]]*""")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that fails because a file under ``../shared/data`` is missing
    (read by the package or a subprocess, not through ``SharedPath``) is
    reported as skipped, naming the file."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        missing = sorted({p for p in _SHARED_PATH.findall(str(report.longrepr))
                          if not os.path.exists(p)})
        if missing:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0,
                               f"Skipped: reference data missing: {missing[0]}")


@pytest.fixture(scope="session")
def test_tmp():
    """The session's temporary root (already KERAS_HOME's parent)."""
    return _TMP
