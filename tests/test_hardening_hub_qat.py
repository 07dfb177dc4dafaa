"""Issue 25: user errors of scripts/qat.py and of KerasHub preset loading are
one line naming the flag or the preset file, raised before any work, with
nothing written and no file outside the preset directory opened."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mobileone_tf import quantization as q
from tests.conftest import ROOT, import_or_missing
from tests.test_quantization import SIZE, _write_images

SECRET = "root:x:0:0:root:/root:/bin/bash\n"
"""Content of a file outside the preset directory (like /etc/passwd)."""


# --- scripts/qat.py ------------------------------------------------------------
def _qat(tmp_path, *args):
    """Runs qat.py on 3 tiny images with an earlier --output and --overwrite;
    returns (process, output path). A run that does any training takes
    minutes: the short timeout fails it (and an endless one)."""
    folder = _write_images(tmp_path / "train", 3)
    out = tmp_path / "o.tflite"
    out.write_bytes(b"earlier result")
    proc = subprocess.run(
        [sys.executable, "scripts/qat.py", *map(str, (
            "--weights", "none", "--train_data", folder, "--image_size", SIZE, "--batch_size",
            1, "--calibration_steps", 0, "--overwrite", "--output", out, *args))],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, out


def _refused(proc, out, *needles):
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert out.read_bytes() == b"earlier result"
    assert sorted(os.listdir(out.parent)) == ["o.tflite", "train"]  # no staging file left
    return errors[0]


def test_qat_steps_per_epoch_minus_one_is_refused_at_once(tmp_path):
    # today: Keras' -1 ("run indefinitely") loops for ever over the 3 images
    line = _refused(*_qat(tmp_path, "--steps_per_epoch", -1), "--steps_per_epoch", ">= 1")
    assert "one pass" in line  # the error says what omitting the flag does


def test_qat_steps_per_epoch_zero_is_refused_at_once(tmp_path):
    # today: Keras' "steps_per_epoch must be positive, None or -1" after the model is built
    line = _refused(*_qat(tmp_path, "--steps_per_epoch", 0), "--steps_per_epoch")
    assert "-1" not in line.split(":", 2)[-1]  # no longer suggests the endless value


def test_qat_epochs_zero_is_refused(tmp_path):
    # today: an int8 file without any QAT, exit 0
    _refused(*_qat(tmp_path, "--epochs", 0), "--epochs", "convert.py --quantize int8")


def test_qat_help_says_bias_correction_follows_fine_tuning():
    proc = subprocess.run([sys.executable, "scripts/qat.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    help_line = text.split("--[no]bias_correction:")[1].split("(default")[0]
    assert "after fine-tuning" in help_line and "first" not in help_line, help_line
    assert "one pass" in text.split("--steps_per_epoch:")[1].split("(an integer)")[0]


@pytest.mark.parametrize("kwargs, name", [(dict(epochs=0), "epochs"),
                                          (dict(steps_per_epoch=-1), "steps_per_epoch"),
                                          (dict(steps_per_epoch=0), "steps_per_epoch")])
def test_qat_api_checks_schedule_before_reading_data(tmp_path, kwargs, name):
    # the folder is missing: the schedule error comes first, before any listing
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1"):
        q.qat_from_weights("s0", None, tmp_path / "missing", **kwargs)
    from mobileone_tf import export
    with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1"):
        export.qat_variant_to_tflite("s0", None, tmp_path / "missing", tmp_path / "o.tflite",
                                     **kwargs)
    assert os.listdir(tmp_path) == []


# --- KerasHub presets ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory):
    """A classifier preset written by make_preset from a random S0 checkpoint,
    and the checkpoint's classifier head (the independent reference)."""
    import_or_missing("keras_hub", extra="hub")
    import mobileone_tf as mo
    from mobileone_tf import hub, weights
    tmp = tmp_path_factory.mktemp("preset")
    model = mo.MobileOne("s0", weights=None, fused=True, classes=10,
                         input_shape=(SIZE, SIZE, 3))
    state = mo.models.get_state(model)
    rng = np.random.default_rng(0)
    state["head/kernel"] = rng.normal(0, 0.1, state["head/kernel"].shape).astype("float32")
    state["head/bias"] = rng.normal(0, 0.1, state["head/bias"].shape).astype("float32")
    checkpoint = weights.write_weights_h5(state, tmp / "s0.weights.h5", "s0", "fused")
    return hub.make_preset(checkpoint, tmp / "preset", fused=True), state


def _copy(tiny_preset, tmp_path):
    return shutil.copytree(tiny_preset[0], tmp_path / "preset")


def _load_error(preset, exc_type, *needles, **kwargs):
    from mobileone_tf import hub
    with pytest.raises(exc_type) as info:
        hub.load_preset(preset, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "root:" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_preset_loads_with_its_head(tiny_preset):
    from mobileone_tf import hub
    classifier = hub.load_preset(tiny_preset[0])
    assert type(classifier) is hub.MobileOneImageClassifier
    kernel, bias = classifier.output_dense.get_weights()
    np.testing.assert_array_equal(kernel, tiny_preset[1]["head/kernel"])
    np.testing.assert_array_equal(bias, tiny_preset[1]["head/bias"])


def test_preset_without_task_weights_is_refused(tiny_preset, tmp_path):
    # today: KerasHub loads it with a randomly initialised head, silently
    from mobileone_tf import hub
    preset = _copy(tiny_preset, tmp_path)
    os.remove(preset / "task.weights.h5")
    _load_error(preset, FileNotFoundError, str(preset / "task.weights.h5"), "backbone_only")
    backbone = hub.load_preset(preset, backbone_only=True)  # asked for explicitly
    assert type(backbone) is hub.MobileOneBackbone


def test_preset_without_model_weights_names_the_file(tiny_preset, tmp_path):
    # today: "`model.weights.json` doesn't exist in preset directory"
    preset = _copy(tiny_preset, tmp_path)
    os.remove(preset / "model.weights.h5")
    message = _load_error(preset, FileNotFoundError, str(preset / "model.weights.h5"))
    assert "model.weights.json" not in message
    _load_error(preset, FileNotFoundError, str(preset / "model.weights.h5"), backbone_only=True)


def test_preset_with_truncated_config_names_the_file(tiny_preset, tmp_path):
    # today: a bare JSONDecodeError
    preset = _copy(tiny_preset, tmp_path)
    text = (preset / "config.json").read_text()
    (preset / "config.json").write_text(text[: len(text) // 2])
    _load_error(preset, ValueError, str(preset / "config.json"), "not valid JSON")


@pytest.mark.parametrize("value", ["SECRET", "../secret.txt", "sub/../../secret.txt"])
def test_tampered_weights_entry_is_refused_unread(tiny_preset, tmp_path, value):
    # today: the backbone opens the named file and the error quotes its first line
    preset = _copy(tiny_preset, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    value = str(secret) if value == "SECRET" else value
    task = json.loads((preset / "task.json").read_text())
    task["config"]["backbone"]["config"]["weights"] = value
    (preset / "task.json").write_text(json.dumps(task))
    _load_error(preset, ValueError, str(preset / "task.json"),
                "'config.backbone.config.weights'", "plain file name")


def test_tampered_config_does_not_open_outside_files_in_keras_hub(tiny_preset, tmp_path):
    # KerasHub's own from_preset builds the backbone from the config: the
    # "weights" entry is ignored (never opened), the preset's weights load
    import keras_hub
    preset = _copy(tiny_preset, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    for name, keys in (("task.json", ("config", "backbone", "config")), ("config.json",
                                                                          ("config",))):
        config = json.loads((preset / name).read_text())
        node = config
        for key in keys:
            node = node[key]
        node["weights"] = str(secret)
        (preset / name).write_text(json.dumps(config))
    classifier = keras_hub.models.ImageClassifier.from_preset(str(preset))
    np.testing.assert_array_equal(classifier.output_dense.get_weights()[0],
                                  tiny_preset[1]["head/kernel"])
    assert keras_hub.models.Backbone.from_preset(str(preset)).variant == "s0"


def test_preset_file_linking_outside_is_refused_unread(tiny_preset, tmp_path):
    preset = _copy(tiny_preset, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    os.remove(preset / "config.json")
    os.symlink(secret, preset / "config.json")
    _load_error(preset, ValueError, str(preset / "config.json"), "outside the preset directory")
