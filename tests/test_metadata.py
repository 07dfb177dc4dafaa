"""TFLite metadata written by ``export.to_tflite`` (issue 13), read back by an
independent reader: MediaPipe's ``MetadataDisplayer`` (its flatbuffer schema
and associated-file unpacking) in a subprocess, and MediaPipe Tasks'
``ImageClassifier``, which refuses a float model without
``NormalizationOptions``. Random-weight S0 (no ../shared/data needed);
MediaPipe is installed into the session's Keras cache by the explicit install
(or taken from ``$MOBILEONE_TF_MEDIAPIPE_DIR``), skipped when pip cannot
reach PyPI; an export never installs it by itself.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import data, export
from mobileone_tf.export import common, metadata
from tests import mediapipe_tasks
from tests.conftest import ROOT

SAMPLES = sorted(str(p) for p in (ROOT / "samples").glob("*.jpg"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, torchvision


@pytest.fixture(scope="module")
def folder():
    return mediapipe_tasks.mediapipe_folder()


@pytest.fixture(scope="module")
def s0():
    return mo.MobileOne("s0", weights=None, input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def float_export(folder, s0, tmp_path_factory):
    """Default float32 export with the user's own 1000 labels (``labels=FILE``)."""
    tmp = tmp_path_factory.mktemp("float")
    names = [f"thing {i:04d}, kind {i % 7}" for i in range(1000)]
    (tmp / "names.txt").write_text("\n".join(names) + "\n")
    path, report = export.to_tflite(s0, str(tmp / "s0.tflite"), labels=str(tmp / "names.txt"))
    return path, report, names, tmp


def _tensor(meta, kind):
    return meta["subgraph_metadata"][0][f"{kind}_tensor_metadata"][0]


def test_fields_read_back(folder, float_export):
    path, report, names, tmp = float_export
    assert report["verification"]["passed"]  # LiteRT on the file with metadata == Keras
    assert b"TFLITE_METADATA" in open(path, "rb").read()  # the metadata buffer's name
    read = metadata.read_tflite_metadata(path, folder)
    meta = read["metadata"]
    assert meta["name"] == "MobileOne-S0"
    assert meta["version"] == mo.__version__
    assert meta["author"] == common.AUTHOR and meta["license"] == common.DEFAULT_LICENSE
    for words in ("MobileOne-S0", "1000 classes", "float32", "0..255", "1x224x224x3"):
        assert words in meta["description"], words
    assert meta["min_parser_version"] == "1.0.0"
    image = _tensor(meta, "input")
    assert image["name"] == "image"
    assert image["content"]["content_properties_type"] == "ImageProperties"
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    [unit] = image["process_units"]
    assert unit["options_type"] == "NormalizationOptions"
    assert unit["options"] == {"mean": [0.0], "std": [1.0]}  # normalization inside the model
    assert image["stats"] == {"min": [0.0], "max": [255.0]}
    out = _tensor(meta, "output")
    assert out["name"] == "probabilities"
    assert "process_units" not in out  # no score calibration
    [labels] = out["associated_files"]
    assert labels["name"] == "labels.txt" and labels["type"] == "TENSOR_AXIS_LABELS"
    assert read["files"]["labels.txt"].splitlines() == names
    assert (tmp / "labels.txt").read_text().splitlines() == names  # the file beside
    assert report["metadata"]["raw_pixel_input"] is True


def test_mediapipe_classifier_takes_the_file(folder, float_export, s0, tmp_path):
    """MediaPipe Tasks loads the file (it needs the NormalizationOptions),
    names the classes from the packed labels and reproduces Keras' scores."""
    path, _, names, _ = float_export
    images = data.load_images(SAMPLES, 224).astype(np.uint8)
    result = mediapipe_tasks.run("classify", path, images, folder, tmp_path)
    assert result["tensorflow"] is False
    assert [result["names"][i] for i in range(1000)] == names
    keras = fuse_predict(s0, images)
    np.testing.assert_array_equal(np.argmax(result["scores"], 1), np.argmax(keras, 1))
    # float32 in another summation order (XNNPACK vs TensorFlow's kernels;
    # how far apart depends on the CPU: 3.9e-5 seen on the CI machine,
    # < 2e-5 on this AVX2 EPYC). The random-weight model's logits span
    # hundreds, so 1e-4 in probability is a ~1e-6 relative logit error.
    np.testing.assert_allclose(result["scores"], keras, atol=1e-4)


def fuse_predict(model, images):
    return mo.fuse(model).predict(images.astype(np.float32), verbose=0)


def test_normalization_outside_and_logits(folder, tmp_path):
    """``include_preprocessing=False``: per-channel ImageNet mean/std in
    pixels (255 m, 255 s); a logits top gets no 0..1 stats; 5 user labels."""
    model = mo.MobileOne("s0", weights=None, input_shape=(None, None, 3), classes=5,
                         classifier_activation=None, include_preprocessing=False)
    (tmp_path / "five.txt").write_text("a\nb\nc\nd\ne\n\n")
    path, report = export.to_tflite(model, str(tmp_path / "m.tflite"), input_size=64,
                                    labels=str(tmp_path / "five.txt"))
    meta = metadata.read_tflite_metadata(path, folder)
    image = _tensor(meta["metadata"], "input")
    options = image["process_units"][0]["options"]
    np.testing.assert_allclose(options["mean"], [255 * m for m in MEAN], rtol=1e-6)
    np.testing.assert_allclose(options["std"], [255 * s for s in STD], rtol=1e-6)
    out = _tensor(meta["metadata"], "output")
    assert out["name"] == "logits" and not out.get("stats")  # no 0..1 range for logits
    assert meta["files"]["labels.txt"].splitlines() == list("abcde")
    assert report["metadata"]["raw_pixel_input"] is False


def test_labels_file_errors(s0, tmp_path):
    """A labels file with the wrong count or an empty line: one ExportError
    naming the file, nothing written."""
    (tmp_path / "short.txt").write_text("a\nb\n")
    (tmp_path / "hole.txt").write_text("a\n\nb\n")
    with pytest.raises(export.ExportError, match=r"short\.txt has 2 names; the model has 1000"):
        export.to_tflite(s0, str(tmp_path / "x.tflite"), labels=str(tmp_path / "short.txt"))
    with pytest.raises(export.ExportError, match=r"hole\.txt: line 2 is empty"):
        export.to_tflite(s0, str(tmp_path / "x.tflite"), labels=str(tmp_path / "hole.txt"))
    with pytest.raises(FileNotFoundError):
        export.to_tflite(s0, str(tmp_path / "x.tflite"), labels=str(tmp_path / "none.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hole.txt", "short.txt"]


@pytest.fixture(scope="module")
def tiny():
    """A small non-MobileOne Keras model (exports in a few seconds)."""
    import keras
    inp = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inp)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name="tiny")


def test_nometadata_and_other_models(folder, tiny, tmp_path):
    """``metadata=False``: no metadata at all; a model that is not a
    MobileOne still gets name, normalization and a features output."""
    bare, report = export.to_tflite(tiny, str(tmp_path / "bare.tflite"), fuse=False,
                                    input_size=32, metadata=False)
    assert "metadata" not in report
    assert metadata.read_tflite_metadata(bare, folder) == {"metadata": None, "files": {}}
    path, _ = export.to_tflite(tiny, str(tmp_path / "tiny.tflite"), fuse=False, input_size=32)
    meta = metadata.read_tflite_metadata(path, folder)["metadata"]
    assert meta["name"] == "tiny"
    assert _tensor(meta, "output")["name"] == "features"
    assert "associated_files" not in _tensor(meta, "output")


def test_failures_leave_nothing(tiny, tmp_path, monkeypatch):
    """A writer that fails, or no MediaPipe: one-line ExportError (the install
    command, the offline route and --nometadata in it), nothing written and
    nothing installed by the export itself."""
    broken = tmp_path / "broken" / "mediapipe"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.setenv(metadata.ENV_DIR, str(broken.parent))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(export.ExportError, match="broken on purpose"):
        export.to_tflite(tiny, str(out / "m.tflite"), fuse=False, input_size=32)
    assert not list(out.iterdir())
    monkeypatch.setenv(metadata.ENV_DIR, str(tmp_path / "empty"))
    monkeypatch.setattr(metadata, "in_environment", lambda: False)  # nor the [metadata] extra
    with pytest.raises(export.ExportError) as e:  # --metadata: required
        export.to_tflite(tiny, str(out / "m.tflite"), fuse=False, input_size=32, metadata=True)
    message = str(e.value)
    assert "\n" not in message and "--nometadata" in message, message
    assert "python -m mobileone_tf.export.mediapipe_install" in message, message
    assert "offline" in message and metadata.ENV_DIR in message, message
    assert not list(out.iterdir()) and not (tmp_path / "empty").exists()


def test_default_without_writer_exports_and_says_so(tiny, tmp_path, monkeypatch):
    """The default (``metadata=None``, convert.py without --metadata/--nometadata)
    where MediaPipe's writer is not installed: the file is exported and
    verified without metadata, the report and its printed form say why and how
    to add it, and nothing is installed."""
    monkeypatch.setenv(metadata.ENV_DIR, str(tmp_path / "empty"))
    monkeypatch.setattr(metadata, "in_environment", lambda: False)  # nor the [metadata] extra
    path, report = export.to_tflite(tiny, str(tmp_path / "m.tflite"), fuse=False, input_size=32)
    assert report["metadata"].startswith("skipped: MediaPipe's TFLite metadata writer is not")
    assert "python -m mobileone_tf.export.mediapipe_install" in export.format_report(report)
    assert report["verification"]["passed"] is True
    assert b"TFLITE_METADATA" not in open(path, "rb").read()
    assert not (tmp_path / "empty").exists()


def test_install_command_offline(tmp_path):
    """``python -m mobileone_tf.export.mediapipe_install`` where pip reaches
    no index: one ``error:`` line (offline, the pip command, --nometadata),
    exit status 1, no folder and no staging folder left."""
    target = tmp_path / "mp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PIP_NO_INDEX="1", PIP_FIND_LINKS="",
               **{metadata.ENV_DIR: str(target)})
    proc = subprocess.run([sys.executable, "-m", "mobileone_tf.export.mediapipe_install"],
                          cwd=tmp_path, env=env, check=False, capture_output=True, text=True,
                          timeout=300)
    if metadata.in_environment():  # the [metadata] extra (tools/compat.sh): no pip at all
        assert proc.returncode == 0 and "nothing to install" in proc.stdout, proc.stderr[-3000:]
        assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())
        return
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
    for words in ("could not install", "offline", "pip install --no-deps --target DIR",
                  "--nometadata"):
        assert words in errors[0], errors[0]
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_environment_mediapipe_is_used_without_a_folder(tmp_path, monkeypatch):
    """With ``mediapipe`` in the environment (the ``[metadata]`` extra) and no
    folder: the metadata is wanted by default, the worker gets no extra
    ``PYTHONPATH`` entry, and the installer installs nothing (the real
    environment: tools/compat.sh's ``metadata`` row)."""
    monkeypatch.setenv(metadata.ENV_DIR, str(tmp_path / "none"))
    monkeypatch.setattr(metadata, "in_environment", lambda: True)
    assert metadata.wanted(None) is True and metadata.mediapipe_dir() == ""
    assert metadata.install_mediapipe() == "" and not list(tmp_path.iterdir())
    paths = metadata.worker_env("")["PYTHONPATH"].split(os.pathsep)
    assert "" not in paths and paths[0] == str(ROOT)
    monkeypatch.setattr(metadata, "in_environment", lambda: False)
    assert metadata.wanted(None) is False
    with pytest.raises(export.ExportError, match="nor in this environment.*metadata\\]"):
        metadata.mediapipe_dir()


def test_worker_imports_no_tensorflow(folder):
    """The worker module runs without TensorFlow (it blocks MediaPipe's
    optional import) and with MediaPipe's absl-py 2.x, not the main 1.4."""
    code = ("import sys; from mobileone_tf.export import metadata_worker as w; "
            "w.import_mediapipe(); import absl.flags, mediapipe; "
            "from importlib.metadata import version; "
            "print(sys.modules.get('tensorflow') is None, 'keras' in sys.modules, "
            "mediapipe.__file__.startswith(sys.argv[1]), version('absl-py'))")
    proc = subprocess.run([sys.executable, "-c", code, folder], check=False, capture_output=True,
                          text=True, env=metadata.worker_env(folder), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    no_tf, keras, ours, absl = proc.stdout.split()
    assert (no_tf, keras, ours) == ("True", "False", "True") and absl.startswith("2."), proc.stdout


def test_convert_cli_labels_and_nometadata(tmp_path):
    """``convert.py --labels FILE`` with the wrong count: one ``error:`` line
    naming the file, nothing written; ``--nometadata`` is accepted."""
    (tmp_path / "two.txt").write_text("a\nb\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert.py"), "--format", "tflite",
         "--weights", "none", "--output", "m.tflite", "--labels", "two.txt", "--nometadata"],
        cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "two.txt" in errors[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.txt"]
