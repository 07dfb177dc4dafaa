"""Porting PyTorch checkpoints: parity with an independent PyTorch forward pass.

References: timm ``mobileone_s0..s4`` (random weights, randomised BatchNorm
statistics) saved in every supported key layout, and Apple's real fused S0
checkpoint run in PyTorch on real ImageNet images (tests/torch_reference.py,
in a subprocess).
"""

import functools
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mobileone_tf import models, weights
from tests.checkpoint_writer import save_state
from tests.helpers import rel_max_diff
from tests.torch_fixtures import torch_ref  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("s0", "s1", "s2", "s3", "s4")
LAYOUT_FILES = {  # file suffix -> (layout, form)
    "timm.pth": ("timm", "branched"),
    "timm_reparam.pth": ("timm", "fused"),
    "timm_reparam.safetensors": ("timm", "fused"),
    "apple.pth": ("apple", "branched"),
    "apple_fused.pth": ("apple", "fused"),
    "mmpretrain.pth": ("mmpretrain", "branched"),
    "mmpretrain_fused.pth": ("mmpretrain", "fused"),
}
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _model(variant, fused, size=64):
    return models.MobileOne(variant, weights=None, input_shape=(size, size, 3),
                            include_preprocessing=False, classifier_activation=None,
                            fused=fused)


def _logits(model, x):
    return np.asarray(model(x, training=False))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layout_matches_pytorch(torch_ref, variant):
    ref = np.load(torch_ref / f"{variant}.npz")
    x = ref["x_nhwc"]
    for suffix, (layout, form) in LAYOUT_FILES.items():
        path = torch_ref / f"{variant}_{suffix}"
        result = weights.port_checkpoint(path)
        assert (result.variant, result.layout, result.form, result.classes) == \
            (variant, layout, form, 1000), suffix
        for fused in (False, True):
            model = _model(variant, fused)
            if fused:
                models.assign_state(model, result.state)
            else:
                models.load_weights(model, path)
            diff = rel_max_diff(_logits(model, x), ref["logits"])
            assert diff <= TOL, (suffix, "fused" if fused else "branched", diff)


def test_fused_checkpoint_into_branched_model_is_exact(torch_ref):
    """load_fused: the branched model gives the fused model's outputs."""
    ref = np.load(torch_ref / "s0.npz")
    path = torch_ref / "s0_apple_fused.pth"
    branched, fused = _model("s0", False), _model("s0", True)
    models.load_weights(branched, path)
    models.load_weights(fused, path)
    a, b = _logits(branched, ref["x_nhwc"]), _logits(fused, ref["x_nhwc"])
    assert rel_max_diff(a, b) <= 1e-5
    assert rel_max_diff(a, ref["logits_reparam"]) <= TOL
    assert "stage1_0/conv_kxk/3/kernel" in models.get_state(branched)


def test_readers_agree_on_generated_checkpoints(torch_ref):
    a = weights.read_checkpoint(torch_ref / "s0_timm.pth")
    assert not any(k.endswith("num_batches_tracked") for k in a)
    b = np.load(torch_ref / "s0_timm_torchload.npz")  # torch.load in the subprocess
    assert sorted(a) == sorted(b.files)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_zip_reader_matches_torch_load_on_real_checkpoint(torch_ref, shared_data):
    a = weights.read_checkpoint(shared_data / "mobileone_s0.pth.tar")
    b = np.load(torch_ref / "real_s0_torchload.npz")
    assert sorted(a) == sorted(b.files) and len(a) == 88
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_real_s0_matches_pytorch_on_real_images(torch_ref, shared_data):
    ref = np.load(torch_ref / "real_s0.npz")
    for fused in (True, False):
        model = models.MobileOne("s0", weights=str(shared_data / "mobileone_s0.pth.tar"),
                                 input_shape=(224, 224, 3), classifier_activation=None,
                                 fused=fused)
        logits = _logits(model, ref["x_nhwc"])
        assert rel_max_diff(logits, ref["logits"]) <= TOL
        assert np.array_equal(logits.argmax(1), ref["logits"].argmax(1))


def test_h5_roundtrip_and_form_conversion(torch_ref, tmp_path):
    ref = np.load(torch_ref / "s4.npz")
    result = weights.port_checkpoint(torch_ref / "s4_timm.pth")
    path = weights.write_weights_h5(result.state, tmp_path / "s4.weights.h5", "s4",
                                    result.form, source="test")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    state, attrs = weights.read_weights_h5(path, with_attrs=True)
    assert attrs["variant"] == "s4" and attrs["form"] == "branched"
    assert attrs["format"] == weights.H5_FORMAT and attrs["classes"] == 1000
    assert sorted(state) == sorted(result.state)
    for fused in (False, True):  # branched file into the fused model: fuses
        model = _model("s4", fused)
        models.load_weights(model, path)
        assert rel_max_diff(_logits(model, ref["x_nhwc"]), ref["logits"]) <= TOL


def test_h5_variant_mismatch_fails_clearly(torch_ref, tmp_path):
    result = weights.port_checkpoint(torch_ref / "s1_timm_reparam.pth")
    path = weights.write_weights_h5(result.state, tmp_path / "s1.weights.h5", "s1",
                                    "fused")
    with pytest.raises(FileExistsError, match="exists"):
        weights.write_weights_h5(result.state, path, "s1", "fused")
    with pytest.raises(ValueError, match=r"MobileOne-S1 \(fused\).*wrong shapes|MobileOne-S1"):
        models.load_weights(_model("s2", True), path)


def run_script(*args):
    """scripts/port_weights.py in a subprocess (cwd: the repository root)."""
    return subprocess.run([sys.executable, os.path.join("scripts", "port_weights.py")]
                          + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _error_line(proc):
    """The script's one ``error:`` line (status 1, no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_port_script_end_to_end(torch_ref, tmp_path):
    out = tmp_path / "s0.weights.h5"
    args = ["--checkpoint", torch_ref / "s0_apple.pth", "--output", out]
    proc = run_script(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layout: apple" in proc.stdout and "variant: s0" in proc.stdout
    assert "form: branched" in proc.stdout
    state, attrs = weights.read_weights_h5(out, with_attrs=True)
    assert attrs["variant"] == "s0" and attrs["form"] == "branched"
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()
    # refuses to overwrite (file untouched); a wrong variant writes nothing
    mtime = os.path.getmtime(out)
    assert "exists; pass --overwrite" in _error_line(run_script(*args))
    assert os.path.getmtime(out) == mtime
    out2 = tmp_path / "bad.weights.h5"
    line = _error_line(run_script(*args[:-1], out2, "--variant", "s1"))
    assert "does not fit MobileOne-S1" in line
    assert not out2.exists()
    assert "must end with .weights.h5" in _error_line(
        run_script(*args[:-1], tmp_path / "x.h5"))
    (tmp_path / "d.weights.h5").mkdir()
    assert "is a folder" in _error_line(run_script(*args[:-1], tmp_path / "d.weights.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.weights.h5", "s0.weights.h5"]
    assert run_script(*args, "--overwrite").returncode == 0


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s0_fused_state(torch_ref):
    return weights.read_checkpoint(torch_ref / "s0_apple_fused.pth")


def _expect_error(path, match, variant=None, out=None):
    with pytest.raises(ValueError, match=match):
        weights.port_checkpoint(path, variant=variant)
    if out is not None:  # the port script writes nothing either
        args = ["--checkpoint", path, "--output", out]
        if variant:
            args += ["--variant", variant]
        _error_line(run_script(*args))
        assert not os.path.exists(out) and not any(
            p.startswith(".partial-") for p in os.listdir(os.path.dirname(out)))


def test_wrong_variant(torch_ref, tmp_path):
    _expect_error(torch_ref / "s0_timm.pth",
                  r"does not fit MobileOne-S2\. It looks like MobileOne-S0\.(.|\n)*"
                  r"wrong shapes: \[.*'stages\.0\.0\.conv_kxk\.0\.conv\.weight -> "
                  r"stage1_0/conv_kxk/0/kernel: expected \(3, 3, 64, 1\), got \(3, 3, 48, 1\)'",
                  variant="s2", out=tmp_path / "x.weights.h5")


def test_missing_keys(s0_fused_state, tmp_path):
    state = dict(s0_fused_state)
    del state["stage2.3.reparam_conv.bias"]
    path = tmp_path / "missing.pth"
    save_state(path, state)
    _expect_error(path, r"missing keys: \['stage2_3/reparam/bias'\]")


def test_unexpected_keys(s0_fused_state, tmp_path):
    state = dict(s0_fused_state, **{"stage1.0.extra.weight": np.zeros((3, 3), np.float32)})
    path = tmp_path / "unexpected.pth"
    save_state(path, state)
    _expect_error(path, r"unexpected keys.*stage1\.0\.extra\.weight \(3, 3\)",
                  out=tmp_path / "y.weights.h5")
    state = dict(s0_fused_state, **{"stage5.0.reparam_conv.bias": np.zeros(3, np.float32)})
    save_state(path, state)
    _expect_error(path, r"unexpected keys.*stage5\.0\.reparam_conv\.bias")


def test_wrong_shapes(s0_fused_state, tmp_path):
    state = dict(s0_fused_state)
    state["linear.weight"] = np.zeros((1000, 1000), np.float32)
    path = tmp_path / "shape.pth"
    save_state(path, state)
    _expect_error(path, r"linear\.weight -> head/kernel: expected \(1024, 1000\), "
                        r"got \(1000, 1000\)", variant="s0")


def test_not_a_checkpoint(tmp_path):
    """Text, empty, other zips, other pickles: CheckpointError saying what the
    file is not; the script prints one error line naming the file."""
    cases = {
        "notes.pth": (b"this is not a checkpoint at all\n", "not a zip archive or a pickle"),
        "empty.pth": (b"", r"empty file \(0 bytes\)"),
        "gz.pth": (b"\x1f\x8b\x08\x00" + bytes(40), "not a zip archive or a pickle"),
        "dict.pkl": (pickle.dumps({"a": 1}, protocol=2), "a pickle but not a PyTorch checkpoint"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(weights.CheckpointError, match=match) as info:
            weights.port_checkpoint(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name))
    line = _error_line(run_script("--checkpoint", tmp_path / "notes.pth",
                                  "--output", tmp_path / "n.weights.h5"))
    assert str(tmp_path / "notes.pth") in line and "not a zip archive or a pickle" in line
    line = _error_line(run_script("--checkpoint", tmp_path / "empty.pth",
                                  "--output", tmp_path / "n.weights.h5"))
    assert "empty file" in line
    z = tmp_path / "other.pth"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    _expect_error(z, "not a PyTorch checkpoint", out=tmp_path / "z.weights.h5")
    with pytest.raises(FileNotFoundError):
        weights.port_checkpoint(tmp_path / "absent.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(list(cases) + ["other.pth"])


class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_refuses_pickle_payloads(tmp_path, container):
    """No code from the file runs; the message never suggests disabling the
    safety (torch's "weights_only=False" advice)."""
    marker = tmp_path / "pwned"
    payloads = {"system": _Payload(os.system, f"echo pwned > {marker}"),
                "eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
                "exec": _Payload(exec, f"open({str(marker)!r}, 'w')")}
    for name, payload in payloads.items():
        path = tmp_path / f"{name}.pth"
        data = pickle.dumps({"a": payload}, protocol=2)
        if container == "zip":
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("evil/data.pkl", data)
        else:  # a plain pickle: read as a legacy torch.save stream
            path.write_bytes(data)
        with pytest.raises(weights.CheckpointError,
                           match=r"refusing to unpickle (posix|os|builtins|__builtin__)\."
                                 f"{name}: only tensors") as info:
            weights.port_checkpoint(path)
        assert "weights_only" not in str(info.value)
        line = _error_line(run_script("--checkpoint", path, "--output", tmp_path / "o.weights.h5"))
        assert "refusing to unpickle" in line and "weights_only" not in line
        assert not marker.exists() and not (tmp_path / "o.weights.h5").exists()


def test_negative_stride_refused_by_script(s0_fused_state, tmp_path):
    """Issue 12: a tensor record with a negative stride crashed the reader
    (exit 139); now one error line names the tensor and its record."""
    from tests import checkpoint_writer as cw
    obj, storages = {}, {}
    for i, (key, value) in enumerate(s0_fused_state.items()):
        arr = np.ascontiguousarray(value, np.float32)
        storages[str(i)] = arr.tobytes()
        stride = cw.contiguous_strides(arr.shape)
        if key == "stage0.reparam_conv.bias":
            stride = (-1,)
        obj[key] = cw.Tensor(cw.Storage(str(i), "FloatStorage", arr.size), 0, arr.shape, stride)
    path = cw.write_zip(tmp_path / "neg.pth", cw.torch_pickle(obj), storages)
    out = tmp_path / "neg.weights.h5"
    line = _error_line(run_script("--checkpoint", path, "--output", out))
    assert "tensor 'stage0.reparam_conv.bias': negative stride" in line, line
    assert "stride (-1,)" in line and str(path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neg.pth"]
