"""Issue 25: convert.py / classify.py / the weights cache refuse bad input
with one ``error:`` line naming the file or flag, before any long work, and
leave nothing half-written or overwritten.

Scripts run as a user runs them (a subprocess in a scratch folder); tiny
random-weight models (``--weights none``, 64 px) keep each run to seconds.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, require_shared

CONVERT = str(ROOT / "scripts" / "convert.py")
CLASSIFY = str(ROOT / "scripts" / "classify.py")
TINY = ["--weights", "none", "--input_size", "64", "--nometadata"]


def _run(script, *args, cwd, pythonpath=(), timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, pythonpath), str(ROOT)]))
    return subprocess.run([sys.executable, script, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error(proc, *words):
    """Exit != 0, exactly one ``error:`` line holding every word, no traceback."""
    assert proc.returncode != 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _listing(folder):
    return sorted(os.listdir(folder))


# --- row 1: palettize4 without scikit-learn ----------------------------------
def test_palettize_without_sklearn_refused_before_conversion(tmp_path, monkeypatch):
    from mobileone_tf import export
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(export.ExportError, match=r"scikit-learn.*mobileone_tf\[coreml-palettize\]"):
        export.check_options("coreml", str(tmp_path / "m.mlpackage"), quantize="palettize4")
    # the script, with an sklearn that fails to import (whether or not it is installed)
    stub = tmp_path / "stub" / "sklearn"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('scikit-learn stub: not installed')\n")
    out = tmp_path / "out"
    out.mkdir()
    proc = _run(CONVERT, "--format", "coreml", "--quantize", "palettize4", "--weights", "none",
                "--input_size", "64", "--output", "m.mlpackage", cwd=out,
                pythonpath=[stub.parent])
    _one_error(proc, "--quantize palettize4", "scikit-learn", "coreml-palettize")
    assert _listing(out) == []


# --- row 5: --input_size bounds; the staging folder never outlives the run ----
def test_input_size_bounds_checked_first(tmp_path):
    from mobileone_tf import export
    out = str(tmp_path / "m.tflite")
    with pytest.raises(export.ExportError, match=r"--input_size.*4096"):
        export.check_options("tflite", out, input_size=10000)
    with pytest.raises(export.ExportError, match=r"--input_size.*32"):
        export.check_options("onnx", str(tmp_path / "m.onnx"), input_size=16)
    with pytest.raises(export.ExportError, match=r"--batch_size"):  # 1000 x 224 x 224 pixels
        export.check_options("tflite", out, batch_size=1000, input_size=224)
    proc = _run(CONVERT, "--format", "tflite", "--weights", "none", "--nometadata",
                "--input_size", "10000", "--output", "big.tflite", cwd=tmp_path, timeout=120)
    _one_error(proc, "--input_size", "4096", "10000")
    assert _listing(tmp_path) == []


_SLOW_CONVERT = """
import runpy, sys, time
from mobileone_tf.export import tflite

def slow(model, path):  # the conversion, parked inside the staging folder
    print("STAGED", flush=True)
    time.sleep(300)

tflite.write_saved_model = slow
sys.argv = [sys.argv[1], "--format", "tflite", "--weights", "none", "--input_size", "64",
            "--nometadata", "--output", "m.tflite"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_staging_removed_on_sigterm(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CONVERT, CONVERT], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STAGED", line + proc.stderr.read()[-3000:]
        assert [n for n in _listing(tmp_path) if n.startswith(".m.tflite.tmp-")]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert _listing(tmp_path) == []


def test_staging_cleans_up_and_removes_folders_of_dead_processes(tmp_path):
    from mobileone_tf.export import common
    out = str(tmp_path / "m.tflite")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.tflite.tmp-{dead.pid}-0123abcd"  # left by a SIGKILLed export
    stale.mkdir()
    (stale / "model.tflite").write_bytes(b"partial")
    live = tmp_path / f".m.tflite.tmp-{os.getppid()}-4567abcd"  # a running export's: kept
    live.mkdir()
    other = tmp_path / ".other.tflite.tmp-1-89abcdef"  # another output's: kept
    other.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with common.staging(out) as tmp:
            assert os.path.isdir(tmp)
            assert not stale.exists()
            raise RuntimeError("boom")
    assert _listing(tmp_path) == sorted([live.name, other.name])


# --- row 6: labels.txt beside the output is not replaced silently -------------
def test_existing_labels_txt_refused_without_overwrite(tmp_path):
    (tmp_path / "labels.txt").write_text("mine\n")
    proc = _run(CONVERT, "--format", "tflite", *TINY, "--output", "m.tflite", cwd=tmp_path)
    _one_error(proc, str(tmp_path / "labels.txt"), "--overwrite")
    assert _listing(tmp_path) == ["labels.txt"]
    assert (tmp_path / "labels.txt").read_text() == "mine\n"


def test_existing_labels_txt_replaced_only_with_overwrite(tmp_path):
    import mobileone_tf
    from mobileone_tf import export
    (tmp_path / "labels.txt").write_text("mine\n")
    model = mobileone_tf.MobileOne("s0", weights=None, classes=3, input_shape=(None, None, 3))
    tiny = dict(input_size=64, verify=False)
    with pytest.raises(export.ExportError, match=r"labels\.txt exists"):  # ONNX writes one too
        export.to_onnx(model, str(tmp_path / "m.onnx"), **tiny)
    with pytest.raises(export.ExportError, match=r"labels\.txt exists"):
        export.to_tflite(model, str(tmp_path / "m.tflite"), metadata=False, **tiny)
    assert _listing(tmp_path) == ["labels.txt"]
    export.to_tflite(model, str(tmp_path / "m.tflite"), metadata=False, overwrite=True, **tiny)
    assert (tmp_path / "labels.txt").read_text().splitlines() == ["0", "1", "2"]
    # a second file of the same model beside it: the same names, nothing to refuse
    export.to_tflite(model, str(tmp_path / "m16.tflite"), quantize="float16", metadata=False,
                     **tiny)
    assert _listing(tmp_path) == ["labels.txt", "m.tflite", "m16.tflite"]


# --- row 10: Core ML takes the --labels file -----------------------------------
def _spec_class_labels(spec):
    """The ``classes`` strings of the ML program's ``classify`` op (read off
    the protobuf here, not with the package's reader)."""
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v.immediateValue.tensor.strings.values[0] for v in values]
    raise AssertionError("no classify op in the Core ML program")


def test_coreml_uses_labels_file(tmp_path):
    names = [f"kind {i} — ü" for i in range(10)]
    (tmp_path / "ten.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    proc = _run(CONVERT, "--format", "coreml", "--weights", "none", "--classes", "10",
                "--input_size", "64", "--labels", "ten.txt", "--output", "m.mlpackage",
                "--noverify", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mobileone_tf import runtime
    ct = runtime.import_coremltools()
    spec = ct.models.MLModel(str(tmp_path / "m.mlpackage"), skip_model_load=True).get_spec()
    assert spec.description.predictedFeatureName == "classLabel"
    assert _spec_class_labels(spec) == names
    assert _listing(tmp_path) == ["m.mlpackage", "ten.txt"]  # Core ML writes no labels.txt


# --- row 12: bad labels text, a folder as output, classify --image_size -------
def test_labels_not_utf8_named(tmp_path):
    from mobileone_tf import export
    (tmp_path / "bad.txt").write_bytes(b"cat\ndo\xffg\n")
    with pytest.raises(export.ExportError, match=r"bad\.txt \(--labels\) is not UTF-8"):
        export.check_options("tflite", str(tmp_path / "m.tflite"), labels=str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match=r"none\.txt \(--labels\)"):
        export.check_options("onnx", str(tmp_path / "m.onnx"), labels=str(tmp_path / "none.txt"))
    proc = _run(CONVERT, "--format", "coreml", "--weights", "none", "--input_size", "64",
                "--labels", "bad.txt", "--output", "m.mlpackage", cwd=tmp_path)
    _one_error(proc, "bad.txt", "--labels", "UTF-8")
    assert _listing(tmp_path) == ["bad.txt"]


def test_output_that_is_a_folder_refused_first(tmp_path):
    (tmp_path / "existing.tflite").mkdir()
    (tmp_path / "existing.tflite" / "keep").write_text("x")
    proc = _run(CONVERT, "--format", "tflite", *TINY, "--output", "existing.tflite",
                "--overwrite", cwd=tmp_path)
    line = _one_error(proc, "existing.tflite", "--output", "folder")
    assert ".tmp-" not in line
    assert _listing(tmp_path) == ["existing.tflite"]
    assert _listing(tmp_path / "existing.tflite") == ["keep"]


def test_classify_image_size_zero_names_flag(tmp_path):
    proc = _run(CLASSIFY, "--weights", "none", "--image_size", "0", cwd=tmp_path, timeout=120)
    _one_error(proc, "--image_size")
    assert _listing(tmp_path) == []


# --- row 12: a truncated cached port ------------------------------------------
def _truncated_h5(path):
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "mobileone_tf.weights/1"
        f.create_dataset("stem/conv/kernel", data=np.ones((3, 3, 3, 48), np.float32))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def test_truncated_cached_port_is_deleted_and_ported_again(tmp_path, monkeypatch, capsys):
    shared = require_shared("mobileone_s0.pth.tar")
    from mobileone_tf import weights
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("MOBILEONE_TF_CHECKPOINTS", str(shared))
    cached = tmp_path / "keras" / "models" / "mobileone_tf" / "mobileone_s0.weights.h5"
    cached.parent.mkdir(parents=True)
    _truncated_h5(cached)
    path = weights.imagenet_weights_path("s0", fused=True)
    assert os.path.samefile(path, cached)
    warning = capsys.readouterr().err
    assert str(cached) in warning and "deleted" in warning
    state, attrs = weights.read_weights_h5(path, with_attrs=True)
    want = weights.port_checkpoint(str(shared / "mobileone_s0.pth.tar"), variant="s0").state
    assert (attrs["variant"], attrs["form"]) == ("s0", "fused")
    assert sorted(state) == sorted(want)
    assert all(np.array_equal(state[k], want[k]) for k in want)


def test_truncated_cached_port_without_source_says_it_was_a_cache(tmp_path, monkeypatch):
    from mobileone_tf import weights
    from mobileone_tf.weights import download
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("MOBILEONE_TF_CHECKPOINTS", raising=False)

    def offline(name, url, *args, **kwargs):
        raise OSError(f"offline: {url}")

    monkeypatch.setattr(download, "download_file", offline)
    cached = tmp_path / "keras" / "models" / "mobileone_tf" / "mobileone_s0.weights.h5"
    cached.parent.mkdir(parents=True)
    _truncated_h5(cached)
    with pytest.raises(FileNotFoundError) as info:
        weights.imagenet_weights_path("s0", fused=True)
    message = str(info.value)
    assert str(cached) in message and "cached port" in message and "deleted" in message
    assert "MOBILEONE_TF_CHECKPOINTS" in message
    assert not cached.exists()


# --- issue 24: one options object, one spelling per idea --------------------------
def test_options_keywords_and_errors_name_the_flag(tmp_path):
    from mobileone_tf import export
    options = export.export_options(quantize="int8", calibration_data=str(tmp_path),
                                    int8_io="uint8", batch_size=2)
    assert (options.quantize, options.batch_size) == ("int8", 2)
    assert (options.int8.calibration_data, options.int8.int8_io) == (str(tmp_path), "uint8")
    assert export.export_options(int8_io=False).int8.int8_io == "float"  # the old spelling
    with pytest.raises(TypeError, match="io"):
        export.export_options(io="int8")  # QAT's old name is no option
    for kwargs, words in [(dict(int8_io="int8"), ("--int8_io", "--quantize int8")),
                          (dict(quantize="int8", calibration_data=np.zeros((2, 64, 64, 3)),
                                calibration_exclude=["*"]), ("--calibration_exclude",)),
                          (dict(quantize="int8", calibration_data=str(tmp_path),
                                int8_io="uint8", float_layers=["stem_conv"]),
                           ("--float_layers", "--int8_io")),
                          (dict(outputs="scores"), ("--outputs",))]:
        with pytest.raises(export.ExportError) as e:
            export.check_options("tflite", str(tmp_path / "m.tflite"), **kwargs)
        assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), e.value
    assert not list(tmp_path.iterdir())


def _flag_help(script):
    proc = _run(str(ROOT / "scripts" / f"{script}.py"), "--help", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return " ".join(proc.stdout.split())


def test_convert_and_qat_spell_shared_settings_alike():
    """The int8 I/O type and the held-out globs have one flag name and one set of
    values in both scripts; QAT's old names are gone."""
    helps = {script: _flag_help(script) for script in ("convert", "qat")}
    for script, text in helps.items():
        assert "--int8_io: <float|int8|uint8>" in text, script
        assert "--calibration_exclude:" in text and "--[no]metadata:" in text, script
        assert "--io:" not in text and "--exclude:" not in text, script
