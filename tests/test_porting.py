"""Porting against an independent implementation: timm's MobileOne (random
weights, randomised BatchNorm statistics) run by PyTorch in a subprocess, its
state dict in every supported key layout; and Apple's released S0 checkpoint
on real images."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import mobileone_tf as mo
from mobileone_tf import models, porting, variants
from tests.conftest import ROOT
from tests.helpers import rel_max_diff

VARIANTS = ["s0", "s1", "s2", "s3", "s4"]
FILES = ["timm_branched.pth", "timm_fused.pth", "timm_fused.safetensors",
         "apple_branched.pth", "apple_fused.pth", "mmpretrain_branched.pth",
         "mmpretrain_fused.pth"]


@pytest.fixture(scope="session")
def torch_ref(test_tmp, request):
    """Runs tests/torch_reference.py once (in its own process)."""
    for module in ("torch", "timm"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")
    out = test_tmp / "torch_ref"
    if not (out / "s4" / "reference.npz").exists():
        cmd = [sys.executable, str(ROOT / "tests" / "torch_reference.py"), str(out)]
        shared = ROOT.parent / "shared" / "data"
        if (shared / "mobileone_s0.pth.tar").is_file():
            cmd += ["--shared", str(shared)]
        subprocess.run(cmd, check=True, timeout=900)
    return out


_MODELS = {}


def _model(variant, fused):
    key = (variant, fused)
    if key not in _MODELS:
        _MODELS.clear() if len(_MODELS) > 2 else None
        _MODELS[key] = mo.MobileOne(variant, weights=None, fused=fused, input_shape=(64, 64, 3),
                                    classifier_activation=None)
    return _MODELS[key]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_layout_matches_timm_logits(torch_ref, variant):
    ref = np.load(torch_ref / variant / "reference.npz")
    # timm's own fused/unfused agreement, and exact parameter counts vs ours
    assert rel_max_diff(ref["logits"], ref["fused_logits"]) < 1e-4
    branched, fused = _model(variant, False), _model(variant, True)
    assert sum(int(np.prod(w.shape)) for w in branched.trainable_weights) == int(ref["params"])
    assert fused.count_params() == int(ref["params_fused"])
    for name in FILES:
        port = porting.port_checkpoint(torch_ref / variant / name)
        layout, form = name.split(".")[0].split("_")
        assert (port.variant, port.layout, port.form, port.classes) == (variant, layout, form, 1000)
        for model in (branched, fused):  # same form, and converted across forms
            models.assign_state(model, port.state)
            out = model.predict(ref["input"], verbose=0)
            err = rel_max_diff(ref["logits"], out)
            assert err <= 1e-4, (name, model.name, err)


def test_readers_agree(torch_ref):
    for path in (torch_ref / "s4" / "timm_fused.pth", torch_ref / "s0" / "apple_branched.pth"):
        a = porting.read_checkpoint(path, use_torch=True)
        b = porting.read_checkpoint(path, use_torch=False)
        assert sorted(a) == sorted(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_real_apple_s0_matches_pytorch_on_real_images(torch_ref, shared_data):
    ref = np.load(torch_ref / "real_s0.npz")
    ckpt = shared_data / "mobileone_s0.pth.tar"
    a = porting.read_checkpoint(ckpt, use_torch=True)
    b = porting.read_checkpoint(ckpt, use_torch=False)
    assert all(np.array_equal(a[k], b[k]) for k in a) and len(a) == 88
    for fused in (True, False):
        model = mo.MobileOne("s0", weights=str(ckpt), fused=fused, classifier_activation=None)
        logits = model.predict(ref["input"], verbose=0)
        assert rel_max_diff(ref["logits"], logits) <= 1e-4
        assert (logits.argmax(-1) == ref["logits"].argmax(-1)).all()
    assert (ref["logits"].argmax(-1) == ref["labels"]).mean() >= 0.75


def _port_script(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "port_weights.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_port_script_round_trip(torch_ref, tmp_path):
    out = tmp_path / "s4.weights.h5"
    run = _port_script(f"--checkpoint={torch_ref / 's4' / 'mmpretrain_branched.pth'}",
                       f"--output={out}")
    assert run.returncode == 0, run.stderr
    assert "mmpretrain" in run.stdout and "s4" in run.stdout
    state, attrs = porting.read_weights_h5(out)
    assert attrs["variant"] == "s4" and attrs["form"] == "branched"
    ref = np.load(torch_ref / "s4" / "reference.npz")
    model = mo.MobileOne("s4", weights=str(out), fused=True, input_shape=(64, 64, 3),
                         classifier_activation=None)
    assert rel_max_diff(ref["logits"], model.predict(ref["input"], verbose=0)) <= 1e-4
    again = _port_script(f"--checkpoint={torch_ref / 's4' / 'timm_fused.pth'}", f"--output={out}")
    assert again.returncode != 0 and "exists" in again.stderr
    # a ported S4 file refuses an S0 model with a message naming both
    with pytest.raises(ValueError, match="MobileOne-S4"):
        mo.MobileOne("s0", weights=str(out), fused=True)


def _bad_checkpoints(torch_ref, tmp_path):
    from safetensors.numpy import save_file
    good = porting.read_checkpoint(torch_ref / "s0" / "apple_fused.pth")
    missing = dict(good)
    del missing["stage2.3.reparam_conv.bias"]
    unexpected = dict(good, **{"stage9.extra.weight": np.zeros(3, np.float32)})
    shapes = dict(good, **{"stage1.1.reparam_conv.weight": np.zeros((48, 48, 3, 3), np.float32)})
    cases = {}
    for name, sd, message in (("missing", missing, "stage2.3.reparam_conv.bias"),
                              ("unexpected", unexpected, "stage9.extra.weight"),
                              ("shapes", shapes, r"stage1.1.reparam_conv.weight: got \(48, 48, 3, 3\)")):
        path = tmp_path / f"{name}.safetensors"
        save_file(sd, str(path))
        cases[name] = (path, message)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(2048))
    cases["junk"] = (junk, "not a PyTorch")
    return cases


def test_port_script_bad_input_writes_nothing(torch_ref, tmp_path):
    cases = _bad_checkpoints(torch_ref, tmp_path)
    cases["variant"] = (torch_ref / "s0" / "timm_fused.pth", "MobileOne-S0 weights")
    for name, (path, message) in cases.items():
        out = tmp_path / f"{name}.weights.h5"
        args = [f"--checkpoint={path}", f"--output={out}"]
        if name == "variant":
            args.append("--variant=s1")
        run = _port_script(*args)
        assert run.returncode != 0, name
        assert __import__("re").search(message, run.stderr), (name, run.stderr[-2000:])
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]


def test_not_a_mobileone_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, str(path))
    with pytest.raises(ValueError, match="Not a MobileOne checkpoint"):
        porting.port_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        porting.port_checkpoint(tmp_path / "absent.pth")


def test_restricted_reader_refuses_code(tmp_path):
    """A checkpoint whose pickle references anything but tensors is refused
    before any of it runs."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        porting.read_checkpoint(path, use_torch=False)
    assert not (tmp_path / "pwned").exists()


def test_block_prefixes_follow_apple_indexing():
    assert porting.block_prefix("apple", "stem") == "stage0"
    assert porting.block_prefix("apple", "stage3_19") == "stage3.19"
    assert porting.block_prefix("timm", "stage1_0") == "stages.0.0"
    assert porting.block_prefix("mmpretrain", "stage4_1") == "backbone.stage4.1"
    assert len(variants.block_specs("s0")) == 43
