"""The preset table (mobileone_tf.weights.presets) against Apple's published
figures, files and evaluation transform (hard-coded here from the paper and
the ml-mobileone README), the generated manifest, and user-supplied sha256."""

import hashlib
import json
import os

import numpy as np
import pytest

from mobileone_tf import weights
from mobileone_tf.weights import presets
from tests.conftest import ROOT, require_shared

# MobileOne paper (Vasu et al., CVPR 2023), ImageNet-1k top-1 (%), and the
# ml-mobileone README model zoo.
PAPER_TOP1 = {"s0": 71.4, "s1": 75.9, "s2": 77.4, "s3": 78.1, "s4": 79.4}
APPLE = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/"
EXPECTED = {f"mobileone_{v}{tag}_imagenet": (v, form, f"mobileone_{v}{tag}.pth.tar")
            for v in PAPER_TOP1 for tag, form in (("", "fused"), ("_unfused", "branched"))}
S0_SHA256 = "968b1f851cee94b5516f68b50c710a74a6d60d5b1759bbf53528b7b860cc6a97"


def test_table_is_apples_release():
    assert set(presets.PRESETS) == set(EXPECTED) and len(EXPECTED) == 10
    for name, (variant, form, file) in EXPECTED.items():
        p = presets.get_preset(name)
        assert (p.name, p.variant, p.form, p.file, p.url) == (name, variant, form, file,
                                                              APPLE + file)
        assert p.top1 == PAPER_TOP1[variant]
        assert p.num_classes == 1000 and "ml-mobileone" in p.license
        # Apple / timm eval: resize the short side to 256, centre crop 224
        assert (p.image_size, p.crop_pct, p.resize) == (224, 0.875, 256)
        assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
        assert p.sha256 == (S0_SHA256 if name == "mobileone_s0_imagenet" else None)


def test_variants_table_agrees_with_the_paper():
    from mobileone_tf import variants
    assert {v: variants.VARIANTS[v].top1 for v in PAPER_TOP1} == PAPER_TOP1


def test_s0_sha256_is_the_real_file():
    shared = require_shared("mobileone_s0.pth.tar")
    digest = hashlib.sha256((shared / "mobileone_s0.pth.tar").read_bytes()).hexdigest()
    assert presets.get_preset("mobileone_s0_imagenet").sha256 == digest == S0_SHA256


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        presets.get_preset("mobileone_s5_imagenet")
    message = str(info.value)
    assert "mobileone_s5_imagenet" in message
    assert all(name in message for name in EXPECTED)


def test_manifest_is_current():
    """checkpoints/manifest.json is the table's (regenerate it with
    presets.write_manifest after editing the table), and holds Apple's files."""
    text = (ROOT / "checkpoints" / "manifest.json").read_text()
    assert text == presets.manifest_text(), (
        "checkpoints/manifest.json is stale: python -c \"from mobileone_tf.weights import "
        "presets; presets.write_manifest('checkpoints/manifest.json')\"")
    rows = json.loads(text)["presets"]
    assert {r["name"]: (r["variant"], r["form"], r["file"]) for r in rows} == EXPECTED
    assert {r["name"]: r["top1"] for r in rows} == {
        n: PAPER_TOP1[v] for n, (v, _, _) in EXPECTED.items()}


def test_eval_transform_defaults_are_resize_256_crop_224(tmp_path):
    """The data code's default eval transform is the table's: PIL bilinear
    resize of the short side to 256, centre crop 224 (done here directly)."""
    from PIL import Image
    from mobileone_tf import data
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(path)
    resized = Image.open(path).convert("RGB").resize((341, 256), Image.BILINEAR)
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)
    expected = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
    np.testing.assert_array_equal(data.load_image(path), expected)


def test_in_model_normalization_is_the_tables():
    from mobileone_tf import models
    assert models.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert models.IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.fixture
def offline_home(offline_keras_home):
    """Empty Keras cache, no mirror, no network (``offline_keras_home``)."""
    return offline_keras_home


def test_user_supplied_sha256_is_checked(offline_home, tmp_path, monkeypatch):
    """An unknown hash is not checked; one given in $MOBILEONE_TF_SHA256 is
    (a mirrored file that differs is refused before it is ported)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "mobileone_s1.pth.tar").write_bytes(b"not Apple's file")
    monkeypatch.setenv(weights.ENV_MIRROR, str(mirror))
    assert presets.sha256_for("mobileone_s1_imagenet") is None
    with pytest.raises(ValueError, match="mobileone_s1.pth.tar"):  # unchecked: the port refuses
        weights.preset_weights_path("mobileone_s1_imagenet")
    other = "ab" * 32
    monkeypatch.setenv(presets.ENV_SHA256,
                       f"mobileone_s1.pth.tar={other.upper()}, x.bin={'0' * 64}")
    assert presets.sha256_for("mobileone_s1_imagenet") == other
    with pytest.raises(ValueError,
                       match=rf"sha256 [0-9a-f]{{64}} does not match the known {other}"):
        weights.preset_weights_path("mobileone_s1_imagenet")
    assert not os.listdir(offline_home / "models" / "mobileone_tf")
    monkeypatch.setenv(presets.ENV_SHA256, "mobileone_s1.pth.tar=1234")
    with pytest.raises(ValueError,
                       match=r"\$MOBILEONE_TF_SHA256: entry 'mobileone_s1.pth.tar=1234'"):
        presets.sha256_for("mobileone_s1_imagenet")
    monkeypatch.setenv(presets.ENV_SHA256, f"mobileone_s0.pth.tar={other}")
    with pytest.raises(ValueError, match=f"published sha256 is {S0_SHA256}"):
        presets.sha256_for("mobileone_s0_imagenet")


def test_one_preset_does_not_fall_back_to_the_other_form(offline_home, monkeypatch):
    """weights="imagenet" may serve a branched model from the fused file; a
    named preset is exactly its own file (the error names it)."""
    shared = require_shared("mobileone_s0.pth.tar")
    monkeypatch.setenv(weights.ENV_MIRROR, str(shared))
    with pytest.raises(FileNotFoundError) as info:
        weights.preset_weights_path("mobileone_s0_unfused_imagenet")
    message = str(info.value)
    assert APPLE + "mobileone_s0_unfused.pth.tar" in message
    assert "mobileone_s0.pth.tar " not in message and "(or " not in message
    assert not os.listdir(offline_home / "models" / "mobileone_tf")
