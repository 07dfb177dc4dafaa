"""KerasHub presets by name (mobileone_tf.hub.named_presets): Apple's real S0
checkpoint (``$MOBILEONE_TF_CHECKPOINTS=../shared/data``, a temporary
``KERAS_HOME``) loaded with ``MobileOneBackbone.from_preset`` and
``keras_hub.models.ImageClassifier.from_preset``, checked on real ImageNet
validation images against their labels; the second load reads the cached
folder offline; unknown names and unavailable checkpoints fail clearly."""

import csv
import os

import numpy as np
import pytest

from tests.conftest import ROOT, import_or_missing, require_shared

keras_hub = import_or_missing("keras_hub", extra="hub")

from mobileone_tf import data, weights  # noqa: E402
from mobileone_tf import hub  # noqa: E402

NAMES = {f"mobileone_s{i}{tag}_imagenet" for i in range(5) for tag in ("", "_unfused")}
# timm features_only for mobileone_s0 at 224x224: (stride, channels) of P1..P5
S0_PYRAMID = {"P1": (112, 48), "P2": (56, 48), "P3": (28, 128), "P4": (14, 256), "P5": (7, 1024)}
N_IMAGES = 50


@pytest.fixture
def home(offline_keras_home):
    """Empty Keras cache, no mirror, no network (``offline_keras_home``)."""
    return offline_keras_home


def _real_images(shared, n):
    root = shared / "imagenet-val-1300"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    return (data.load_images([str(root / r["file"]) for r in rows]),
            np.array([int(r["label"]) for r in rows]))


def test_backbone_doc_preset_example(home, monkeypatch, capsys):
    """docs/backbone.md's presets example; by name: ported once, then read offline."""
    shared = require_shared("mobileone_s0.pth.tar", "imagenet-val-1300/labels.csv")
    monkeypatch.setenv(weights.ENV_MIRROR, str(shared))
    assert NAMES <= set(hub.MobileOneBackbone.presets)
    assert NAMES <= set(hub.MobileOneImageClassifier.presets)
    assert NAMES <= set(keras_hub.models.ImageClassifier.presets)
    images, labels = _real_images(shared, N_IMAGES)

    # docs/backbone.md's example, as written (the bundled photos)
    from tests.doc_examples import run_block
    from tests.test_classify import CATS, COFFEE
    example = run_block("docs/backbone.md", 0, cwd=ROOT)
    top1 = example["logits"].argmax(-1)
    assert example["logits"].shape == (2, 1000) and top1[0] in CATS and top1[1] in COFFEE, top1
    backbone = example["backbone"]
    assert type(backbone) is hub.MobileOneBackbone
    assert (backbone.variant, backbone.fused) == ("s0", True)
    import keras
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    normalized = (images[:2] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225])
    features = pyramid.predict(normalized.astype("float32"), verbose=0)
    assert {k: (v.shape[1], v.shape[3]) for k, v in features.items()} == S0_PYRAMID
    direct = hub.MobileOneBackbone("s0", fused=True, weights=str(shared / "mobileone_s0.pth.tar"))
    expected = keras.Model(direct.inputs, direct.pyramid_outputs).predict(
        normalized.astype("float32"), verbose=0)
    for level in S0_PYRAMID:  # Apple's weights, not a fresh initialisation
        scale = np.abs(expected[level]).max()
        assert scale > 0 and np.abs(features[level] - expected[level]).max() <= 1e-5 * scale

    classifier = example["classifier"]
    assert type(classifier) is hub.MobileOneImageClassifier
    logits = classifier.predict(images, verbose=0)
    correct = int((logits.argmax(-1) == labels).sum())
    # PyTorch fused S0 (Apple's code): 80.8 % on all 1,300 images; 39 of these 50
    assert correct >= 35, f"{correct} of {N_IMAGES} top-1 correct"
    assert type(keras_hub.models.Backbone.from_preset("mobileone_s0_imagenet")) \
        is hub.MobileOneBackbone

    # second use: no mirror, no ported checkpoint, no network -> the cached folder
    folder = hub.preset_dir("mobileone_s0_imagenet")
    cache = home / "models" / "mobileone_tf"
    assert sorted(os.listdir(cache)) == ["mobileone_s0.weights.h5", "presets"]
    os.remove(cache / "mobileone_s0.weights.h5")
    monkeypatch.delenv(weights.ENV_MIRROR)
    stamps = {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)}
    again = hub.MobileOneImageClassifier.from_preset("mobileone_s0_imagenet")
    np.testing.assert_array_equal(again.predict(images, verbose=0), logits)
    assert {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder)} == stamps
    assert sorted(os.listdir(cache)) == ["presets"]

    # a damaged cached folder is deleted and built again (from the mirror)
    with open(os.path.join(folder, "task.weights.h5"), "r+b") as f:
        f.truncate(100)
    monkeypatch.setenv(weights.ENV_MIRROR, str(shared))
    capsys.readouterr()
    rebuilt = hub.MobileOneImageClassifier.from_preset("mobileone_s0_imagenet")
    assert f"the cached preset folder {folder} was unusable" in capsys.readouterr().err
    np.testing.assert_allclose(rebuilt.predict(images[:4], verbose=0), logits[:4], rtol=0,
                               atol=1e-4 * np.abs(logits).max())  # another batch size


def test_unknown_name_lists_the_known_names(home):
    for cls in (hub.MobileOneBackbone, hub.MobileOneImageClassifier):
        with pytest.raises(ValueError) as info:
            cls.from_preset("mobileone_s5_imagenet")
        message = str(info.value)
        assert "unknown preset 'mobileone_s5_imagenet'" in message
        assert all(name in message for name in NAMES)
    assert not os.path.exists(home / "models")


def test_unavailable_checkpoint_is_named(home, monkeypatch):
    """Only the fused S0 file in the mirror and no network: the unfused
    preset's error names its file and URL (through KerasHub's own lookup),
    and nothing is left in the cache."""
    shared = require_shared("mobileone_s0.pth.tar")
    monkeypatch.setenv(weights.ENV_MIRROR, str(shared))
    unfused = weights.get_preset("mobileone_s0_unfused_imagenet").url
    for load in (hub.MobileOneBackbone.from_preset, keras_hub.models.ImageClassifier.from_preset):
        with pytest.raises(ValueError) as info:
            load("mobileone_s0_unfused_imagenet")
        assert unfused in str(info.value) and weights.ENV_MIRROR in str(info.value)
    assert [f for _, _, files in os.walk(home) for f in files] == []
