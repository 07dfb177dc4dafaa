"""``weights="imagenet"`` resolution (cache -> mirror -> download) and class names."""

import csv
import json
import os

import numpy as np
import pytest

from mobileone_tf import models, weights
from tests.conftest import require_shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_home(offline_keras_home):
    """Empty Keras cache, no mirror, no network (``offline_keras_home``)."""
    return offline_keras_home


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@pytest.fixture
def mirror(tmp_path, monkeypatch, shared_data):
    folder = tmp_path / "mirror"
    folder.mkdir()
    os.symlink(shared_data / "mobileone_s0.pth.tar", folder / "mobileone_s0.pth.tar")
    monkeypatch.setenv(weights.ENV_MIRROR, str(folder))
    return folder


def test_mirror_then_cache_reuse(fresh_home, mirror, monkeypatch):
    path = weights.imagenet_weights_path("s0", fused=True)
    assert path == str(fresh_home / "models" / "mobileone_tf" / "mobileone_s0.weights.h5")
    state, attrs = weights.read_weights_h5(path, with_attrs=True)
    assert attrs["variant"] == "s0" and attrs["form"] == "fused"
    assert attrs["source"].endswith("/mobileone_s0.pth.tar")
    assert weights.count_params(state) == 2_078_504
    assert os.stat(path).st_mode & 0o777 == _umask_mode()  # issue 12: not 0600
    # second call: served from the cache even with the mirror gone
    monkeypatch.delenv(weights.ENV_MIRROR)
    mtime = os.path.getmtime(path)
    # a branched model has no unfused checkpoint here: the fused file serves it
    assert weights.imagenet_weights_path("s0", fused=False) == path
    assert weights.imagenet_weights_path("s0", fused=True) == path
    assert os.path.getmtime(path) == mtime
    assert sorted(os.listdir(os.path.dirname(path))) == ["mobileone_s0.weights.h5"]


def test_imagenet_models_from_mirror(fresh_home, mirror):
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    fused = models.MobileOne("s0", weights="imagenet", fused=True, input_shape=(64, 64, 3))
    branched = models.MobileOne("s0", weights="imagenet", input_shape=(64, 64, 3))
    a, b = np.asarray(fused(x)), np.asarray(branched(x))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()  # float32 branch sums
    assert abs(float(a.sum()) - 1.0) < 1e-4  # softmax probabilities


def test_offline_error_names_file_and_folder(fresh_home):
    with pytest.raises(FileNotFoundError) as info:
        weights.imagenet_weights_path("s2", fused=False)
    msg = str(info.value)
    assert weights.BASE_URL + "mobileone_s2_unfused.pth.tar" in msg
    assert "URL fetch failure" in msg
    assert weights.BASE_URL + "mobileone_s2.pth.tar" in msg
    assert weights.ENV_MIRROR in msg and "unset" in msg
    with pytest.raises(FileNotFoundError, match="mobileone_s1.pth.tar"):
        models.MobileOne("s1", weights="imagenet", fused=True)
    assert not os.listdir(fresh_home / "models" / "mobileone_tf")


def test_wrong_sha256_is_refused(fresh_home, tmp_path, monkeypatch):
    folder = tmp_path / "badmirror"
    folder.mkdir()
    (folder / "mobileone_s0.pth.tar").write_bytes(b"corrupted download")
    monkeypatch.setenv(weights.ENV_MIRROR, str(folder))
    with pytest.raises(ValueError, match=r"sha256 [0-9a-f]{64} does not match.*968b1f85"):
        weights.imagenet_weights_path("s0", fused=True)
    assert not os.listdir(fresh_home / "models" / "mobileone_tf")


def test_packaged_class_index_matches_the_reference_list(fresh_home, monkeypatch):
    """The packaged index equals the independent class list of ../shared/data
    (index, synset; name = the first lemma, Keras style), needs no network and
    no mirror."""
    shared_data = require_shared("imagenet_classes.csv")
    monkeypatch.delenv(weights.ENV_MIRROR, raising=False)
    index = models.imagenet_class_index()
    with open(shared_data / "imagenet_classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(index) == len(rows) == 1000
    for (synset, name), row in zip(index, rows):
        assert synset == row["synset"]
        assert name == row["name"].split(",")[0].strip().replace(" ", "_")
    assert index[0] == ("n01440764", "tench") and index[285] == ("n02124075", "Egyptian_cat")
    assert models.imagenet_synset_to_index()["n01443537"] == 1
    decoded = models.decode_predictions(np.eye(1000, dtype="float32")[[1]], top=1)
    assert decoded[0][0][:2] == ("n01443537", "goldfish")
    assert not os.listdir(fresh_home)  # nothing downloaded or cached


# Pinned from Apple's ml-mobileone README ("Model Zoo", ImageNet-1K table:
# "S0 (unfused)" ... "S4 (unfused)" links); Apple publishes no checksums. The
# only published sha256 is S0's fused file, from ../shared/data/README.md.
APPLE_BASE = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/"
APPLE_URLS = {(v, form): APPLE_BASE + f"mobileone_{v}{suffix}.pth.tar"
              for v in ("s0", "s1", "s2", "s3", "s4")
              for form, suffix in (("fused", ""), ("branched", "_unfused"))}
PUBLISHED_SHA256 = {("s0", "fused"):
                    "968b1f851cee94b5516f68b50c710a74a6d60d5b1759bbf53528b7b860cc6a97"}


def test_manifest_urls_and_hashes_are_apples():
    """checkpoints/manifest.json and the code's table give Apple's URLs and
    only published hashes (an unpublished hash would refuse Apple's file)."""
    with open(os.path.join(ROOT, "checkpoints", "manifest.json")) as f:
        manifest = json.load(f)["presets"]
    table = [vars(p) for p in weights.PRESETS.values()]
    for rows in (manifest, table):
        assert {(e["variant"], e["form"]): e["url"] for e in rows} == APPLE_URLS
        assert {(e["variant"], e["form"]): e["sha256"] for e in rows
                if e["sha256"]} == PUBLISHED_SHA256
        assert all(e["url"].endswith("/" + e["file"]) for e in rows)


def test_published_s0_hash_is_the_shared_file(shared_data):
    """The pinned hash is the one of Apple's S0 file in ../shared/data."""
    digest = weights.sha256sum(shared_data / "mobileone_s0.pth.tar")
    assert digest == PUBLISHED_SHA256[("s0", "fused")]


def test_decode_predictions_semantics(fresh_home, tmp_path, monkeypatch):
    """keras.applications semantics: (synset, name, score), best first, one
    list per image; (batch, 1000) only."""
    preds = np.random.default_rng(1).random((3, 1000)).astype("float32")
    decoded = models.decode_predictions(preds, top=4)
    index = models.imagenet_class_index()
    for row, result in zip(preds, decoded):
        expected = sorted(range(1000), key=lambda i: -row[i])[:4]
        assert [r[:2] for r in result] == [index[i] for i in expected]
        assert [r[2] for r in result] == [float(row[i]) for i in expected]
        assert all(isinstance(r[2], float) for r in result)
    for bad in (np.zeros((2, 10)), np.zeros(1000)):
        with pytest.raises(ValueError, match=r"shape \(samples, 1000\)"):
            models.decode_predictions(bad)
