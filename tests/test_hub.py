"""KerasHub integration (mobileone_tf.hub): the backbone against timm's
``features_only`` model, presets from Apple's checkpoint against an
independent PyTorch forward pass, KerasHub's DeepLabV3 and RetinaNet heads
on it (build, save/load, fuse), fine-tuning controls (in a subprocess:
tests/hub_worker.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import import_or_missing  # noqa: E402

keras_hub = import_or_missing("keras_hub", extra="hub")

import keras  # noqa: E402

import mobileone_tf as mo  # noqa: E402
from mobileone_tf import hub  # noqa: E402
from mobileone_tf.hub.fusion import fuse_hub_model  # noqa: E402
from mobileone_tf.layers import MobileOneBlock  # noqa: E402
from tests.helpers import randomize_batchnorm, rel_max_diff  # noqa: E402
from tests.torch_fixtures import torch_ref  # noqa: E402,F401 (fixture)

WORKER = os.path.join(os.path.dirname(__file__), "hub_worker.py")


@pytest.mark.parametrize("fused", [False, True])
def test_backbone_pyramid_matches_timm_features_only(torch_ref, fused):  # noqa: F811
    ref = np.load(torch_ref / "s0.npz")
    x = ref["x_nhwc"]  # already normalized: the backbone's default (KerasHub convention)
    encoder = hub.MobileOneBackbone("s0", fused=fused, image_shape=x.shape[1:],
                                    weights=str(torch_ref / "s0_timm.pth"))
    assert isinstance(encoder, keras_hub.models.FeaturePyramidBackbone)
    assert mo.model_info(encoder)["form"] == ("fused" if fused else "branched")
    outputs = keras.Model(encoder.inputs, encoder.pyramid_outputs).predict(x, verbose=0)
    assert sorted(outputs) == ["P1", "P2", "P3", "P4", "P5"]
    for info in mo.feature_info("s0"):
        got, want = outputs[info["level"]], ref[f"features_{info['level']}"]
        assert got.shape == want.shape and got.shape[-1] == info["channels"]
        assert rel_max_diff(want, got) <= 1e-4, info["level"]


def test_backbone_keras_round_trip_and_config(tmp_path):
    encoder = randomize_batchnorm(hub.MobileOneBackbone("s0", image_shape=(64, 96, 3),
                                                        freeze_stages=1, norm_eval=True), 3)
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is hub.MobileOneBackbone
    assert (loaded.freeze_stages, loaded.norm_eval, loaded.variant) == (1, True, "s0")
    assert not loaded.get_layer("stage1_0").trainable and loaded.get_layer("stage2_0").trainable
    x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype("float32")
    assert rel_max_diff(encoder.predict(x, verbose=0), loaded.predict(x, verbose=0)) == 0
    # the package's flat weight state goes in and out unchanged
    state = mo.models.get_state(encoder)
    fresh = hub.MobileOneBackbone("s0", image_shape=(64, 96, 3))
    mo.models.assign_state(fresh, state)
    assert rel_max_diff(encoder.predict(x, verbose=0), fresh.predict(x, verbose=0)) == 0
    with pytest.raises(ValueError, match="freeze_stages"):
        hub.MobileOneBackbone("s0", freeze_stages=5)


def test_preset_from_apple_checkpoint_matches_pytorch(torch_ref, shared_data,  # noqa: F811
                                                     tmp_path):
    real = np.load(torch_ref / "real_s0.npz")  # Apple's S0 in timm (PyTorch) on real images
    checkpoint = shared_data / "mobileone_s0.pth.tar"
    for fused in (False, True):
        preset = hub.make_preset(checkpoint, tmp_path / f"s0_{fused}", fused=fused)
        assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5",
                "preprocessor.json", "image_converter.json"} <= set(os.listdir(preset))
        classifier = keras_hub.models.ImageClassifier.from_preset(preset)
        assert type(classifier) is hub.MobileOneImageClassifier
        assert classifier.backbone.fused is fused
        logits = classifier.predict(real["x_nhwc"], verbose=0)  # converter: 224 + mean/std
        assert rel_max_diff(real["logits"], logits) <= 1e-4
        assert (logits.argmax(-1) == real["logits"].argmax(-1)).all()
    assert type(keras_hub.models.Backbone.from_preset(preset)) is hub.MobileOneBackbone
    with pytest.raises(FileExistsError, match="exists"):
        hub.make_preset(checkpoint, preset)


def _deeplab(size=(64, 96)):
    encoder = hub.MobileOneBackbone("s1", image_shape=(*size, 3))
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[6, 12, 18], low_level_feature_key="P2", image_shape=(*size, 3))
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=5)
    return randomize_batchnorm(segmenter, seed=7)


def test_deeplab_segmenter_save_load_and_fuse(tmp_path):
    segmenter = _deeplab()
    x = np.random.default_rng(1).normal(size=(2, 64, 96, 3)).astype("float32")
    y = segmenter.predict(x, verbose=0)
    assert y.shape == (2, 64, 96, 5)
    path = str(tmp_path / "segmenter.keras")
    segmenter.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(segmenter)
    assert rel_max_diff(y, loaded.predict(x, verbose=0)) == 0
    fused = mo.fuse(segmenter)
    assert type(fused) is keras_hub.models.DeepLabV3ImageSegmenter
    encoder = fused.backbone.image_encoder
    assert type(encoder) is hub.MobileOneBackbone and encoder.fused
    assert not any(isinstance(layer, MobileOneBlock) for layer in mo.models.all_layers(fused))
    assert rel_max_diff(y, fused.predict(x, verbose=0)) <= 1e-5
    assert not segmenter.backbone.image_encoder.fused  # the input model is untouched
    fused.save(str(tmp_path / "fused.keras"))
    again = keras.saving.load_model(str(tmp_path / "fused.keras"))
    assert rel_max_diff(y, again.predict(x, verbose=0)) <= 1e-5
    with pytest.raises(ValueError, match="holds no MobileOneBackbone"):
        fuse_hub_model(keras_hub.models.DeepLabV3Backbone(
            image_encoder=hub.ApplicationBackbone("MobileNetV3Large", image_shape=(64, 96, 3)),
            spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6],
            image_shape=(64, 96, 3)))


def test_mobilenetv3_pyramid():
    encoder = hub.ApplicationBackbone("MobileNetV3Large", image_shape=(64, 96, 3))
    shapes = {k: tuple(v.shape[1:]) for k, v in encoder.pyramid_outputs.items()}
    assert shapes == {"P1": (32, 48, 16), "P2": (16, 24, 24), "P3": (8, 12, 40),
                      "P4": (4, 6, 112), "P5": (2, 3, 960)}
    with pytest.raises(ValueError, match="unknown keras.applications"):
        hub.ApplicationBackbone("NoSuchNet")


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """tests/hub_worker.py in a subprocess without oneDNN (see its docstring)."""
    out = tmp_path_factory.mktemp("hub_worker")
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
    proc = subprocess.run([sys.executable, WORKER, str(out)], capture_output=True, text=True,
                          env=env, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"hub_worker.py failed:\n{proc.stderr[-4000:]}")
    with open(out / "results.json") as f:
        return json.load(f)


def test_freeze_stages_keeps_frozen_weights(worker_results):
    changes = worker_results["freeze2"]
    for stage in ("stem", "stage1", "stage2"):
        assert changes[stage] == {"weights": 0.0, "stats": 0.0}, stage
    for stage in ("stage3", "stage4"):
        assert changes[stage]["weights"] > 0 and changes[stage]["stats"] > 0, stage


def test_norm_eval_keeps_batchnorm_statistics(worker_results):
    for stage, change in worker_results["norm_eval"].items():
        assert change["stats"] == 0.0 and change["weights"] > 0, stage
    # the control: the same step without norm_eval moves the statistics
    assert all(c["stats"] > 0 for c in worker_results["plain"].values())


def test_retinanet_trains_fuses_exports(worker_results):
    """5 steps on one batch whose boxes match anchors: the loss is not 0 (a
    batch with no matched anchor gives exactly 0) and falls (measured 77 ->
    21), the encoder's weights move; then fuse, reload and export."""
    run = worker_results["retinanet"]
    loss = run["loss"]
    assert len(loss) == 5 and np.isfinite(loss).all() and loss[0] > 1.0, loss
    assert loss[-1] < 0.5 * loss[0], loss
    assert run["encoder_change"] > 0
    assert run["fused_class"] == "RetinaNetObjectDetector" and run["fused_blocks"] == 0
    assert max(run["rel_diff"].values()) <= 1e-5
    assert run["reloaded_class"] == "RetinaNetObjectDetector"
    assert max(run["reload_diff"].values()) == 0.0
    for fmt in ("tflite", "onnx"):  # run and compared with Keras by the exporter
        assert run["export"][fmt]["verification"]["passed"] is True, fmt
        (output,) = run["export"][fmt]["outputs"]
        assert output["name"] == hub.DETECTIONS and output["shape"][-1] == 4 + 3
    assert all(run["coreml"]["checks"].values()), run["coreml"]["checks"]
    assert [o["name"] for o in run["coreml"]["outputs"]] == [hub.DETECTIONS]
