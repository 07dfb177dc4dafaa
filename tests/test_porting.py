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

from mobileone_tf import models, porting
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
        result = porting.port_checkpoint(path)
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
    a = porting.read_checkpoint(torch_ref / "s0_timm.pth", reader="zip")
    assert not any(k.endswith("num_batches_tracked") for k in a)
    b = np.load(torch_ref / "s0_timm_torchload.npz")  # torch.load in the subprocess
    assert sorted(a) == sorted(b.files)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_zip_reader_matches_torch_load_on_real_checkpoint(torch_ref, shared_data):
    a = porting.read_checkpoint(shared_data / "mobileone_s0.pth.tar", reader="zip")
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
    result = porting.port_checkpoint(torch_ref / "s4_timm.pth")
    path = porting.write_weights_h5(result.state, tmp_path / "s4.weights.h5", "s4",
                                    result.form, source="test")
    state, attrs = porting.read_weights_h5(path, with_attrs=True)
    assert attrs["variant"] == "s4" and attrs["form"] == "branched"
    assert attrs["format"] == porting.H5_FORMAT and attrs["classes"] == 1000
    assert sorted(state) == sorted(result.state)
    for fused in (False, True):  # branched file into the fused model: fuses
        model = _model("s4", fused)
        models.load_weights(model, path)
        assert rel_max_diff(_logits(model, ref["x_nhwc"]), ref["logits"]) <= TOL


def test_h5_variant_mismatch_fails_clearly(torch_ref, tmp_path):
    result = porting.port_checkpoint(torch_ref / "s1_timm_reparam.pth")
    path = porting.write_weights_h5(result.state, tmp_path / "s1.weights.h5", "s1",
                                    "fused")
    with pytest.raises(ValueError, match=r"MobileOne-S1 \(fused\).*wrong shapes|MobileOne-S1"):
        models.load_weights(_model("s2", True), path)


def test_port_script_end_to_end(torch_ref, tmp_path, capsys):
    out = tmp_path / "s0.weights.h5"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "port_weights.py"),
           "--checkpoint", str(torch_ref / "s0_apple.pth"), "--output", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layout: apple" in proc.stdout and "variant: s0" in proc.stdout
    assert "form: branched" in proc.stdout
    state, attrs = porting.read_weights_h5(out, with_attrs=True)
    assert attrs["variant"] == "s0" and attrs["form"] == "branched"
    # refuses to overwrite (file untouched); a wrong variant writes nothing
    mtime = os.path.getmtime(out)
    assert run_script(cmd[2:]) != 0
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert os.path.getmtime(out) == mtime
    out2 = tmp_path / "bad.weights.h5"
    assert run_script(cmd[2:-1] + [out2, "--variant", "s1"]) != 0
    assert "does not fit MobileOne-S1" in capsys.readouterr().err
    assert not out2.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0.weights.h5"]
    assert run_script(cmd[2:] + ["--overwrite"]) == 0


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
def _save_zip_checkpoint(path, state):
    """A torch-format zip checkpoint written without torch (for bad inputs):
    ``data.pkl`` references ``torch._utils._rebuild_tensor_v2`` and
    ``torch.FloatStorage`` exactly as ``torch.save`` does."""
    import io

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    path = str(path)
    name = os.path.basename(path).split(".")[0]
    storages, obj = {}, {}
    for i, (k, v) in enumerate(state.items()):
        arr = np.ascontiguousarray(v, np.float32)
        storages[str(i)] = arr
        strides = tuple(int(np.prod(arr.shape[j + 1:])) for j in range(arr.ndim))
        obj[k] = _Tensor(_Storage(str(i), arr.size), arr.shape, strides)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    here = __name__.encode()
    data = buf.getvalue().replace(
        b"c" + here + b"\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v2\n"
    ).replace(b"c" + here + b"\nFloatStorage\n", b"ctorch\nFloatStorage\n")
    assert here not in data
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/data.pkl", data)
        z.writestr(f"{name}/byteorder", "little")
        for key, arr in storages.items():
            z.writestr(f"{name}/data/{key}", arr.tobytes())


class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class FloatStorage:  # pickled by reference, renamed to torch.FloatStorage
    pass


def _rebuild_tensor_v2(*args):  # pickled by reference, renamed to torch._utils
    raise AssertionError


class _Tensor:
    def __init__(self, storage, shape, strides):
        self.args = (storage, 0, tuple(shape), strides, False)

    def __reduce__(self):
        import collections
        return (_rebuild_tensor_v2, self.args + (collections.OrderedDict(),))


@pytest.fixture(scope="module")
def s0_fused_state(torch_ref):
    return porting.read_checkpoint(torch_ref / "s0_apple_fused.pth")


@functools.lru_cache(maxsize=None)
def _script():
    import importlib.util
    from absl import flags
    # other scripts loaded in this process (e.g. export_acceptance) may have
    # defined flags of the same names: absl forbids redefinition
    for name in ("checkpoint", "output", "variant", "overwrite"):
        if name in flags.FLAGS:
            delattr(flags.FLAGS, name)
    spec = importlib.util.spec_from_file_location(
        "port_weights", os.path.join(ROOT, "scripts", "port_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args):
    """Runs scripts/port_weights.py main() in-process (absl flags); returns rc."""
    module = _script()
    module.FLAGS.unparse_flags()
    module.FLAGS(["port_weights.py"] + [str(a) for a in args])
    return module.main([])


def _expect_error(path, match, variant=None, out=None):
    with pytest.raises(ValueError, match=match):
        porting.port_checkpoint(path, variant=variant)
    if out is not None:  # the port script writes nothing either
        args = ["--checkpoint", path, "--output", out]
        if variant:
            args += ["--variant", variant]
        assert run_script(args) != 0
        assert not os.path.exists(out) and not any(
            p.endswith(".tmp") for p in os.listdir(os.path.dirname(out)))


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
    _save_zip_checkpoint(path, state)
    _expect_error(path, r"missing keys: \['stage2_3/reparam/bias'\]")


def test_unexpected_keys(s0_fused_state, tmp_path):
    state = dict(s0_fused_state, **{"stage1.0.extra.weight": np.zeros((3, 3), np.float32)})
    path = tmp_path / "unexpected.pth"
    _save_zip_checkpoint(path, state)
    _expect_error(path, r"unexpected keys.*stage1\.0\.extra\.weight \(3, 3\)",
                  out=tmp_path / "y.weights.h5")
    state = dict(s0_fused_state, **{"stage5.0.reparam_conv.bias": np.zeros(3, np.float32)})
    _save_zip_checkpoint(path, state)
    _expect_error(path, r"unexpected keys.*stage5\.0\.reparam_conv\.bias")


def test_wrong_shapes(s0_fused_state, tmp_path):
    state = dict(s0_fused_state)
    state["linear.weight"] = np.zeros((1000, 1000), np.float32)
    path = tmp_path / "shape.pth"
    _save_zip_checkpoint(path, state)
    _expect_error(path, r"linear\.weight -> head/kernel: expected \(1024, 1000\), "
                        r"got \(1000, 1000\)", variant="s0")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="not a PyTorch zip checkpoint|not a readable"):
        porting.port_checkpoint(bad)
    z = tmp_path / "other.pth"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    _expect_error(z, "not a PyTorch checkpoint", out=tmp_path / "z.weights.h5")
    with pytest.raises(FileNotFoundError):
        porting.port_checkpoint(tmp_path / "absent.pth")


def test_refuses_arbitrary_globals(tmp_path):
    """The zip reader never executes pickled code."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"a": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|os)\.system"):
        porting.port_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
