"""Input pipelines: listing and label checks, decoding and bad images, the
eval transform against real torchvision (subprocess), training and unlabelled
pipelines."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobileone_tf import data
from tests.conftest import REQUIRE_REFERENCE, ROOT, SHARED_DATA, require_modules, require_shared
from tests.image_fixtures import save, smooth_image, write_bad_images

TORCHVISION_REF = ROOT / "tests" / "torchvision_reference.py"


# --------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageFolder with 3 classes: JPEG, PNG, greyscale, CMYK and one corrupt file."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    save(str(root / "b_cls" / "1.jpg"), smooth_image(rng, 300, 400))
    save(str(root / "b_cls" / "2.PNG"), smooth_image(rng, 260, 180))
    save(str(root / "a_cls" / "grey.jpeg"), smooth_image(rng, 240, 320), mode="L")
    save(str(root / "a_cls" / "cmyk.jpg"), smooth_image(rng, 330, 250), mode="CMYK")
    save(str(root / "c_cls" / "sub" / "3.jpg"), smooth_image(rng, 500, 640))
    (root / "c_cls" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "c_cls" / "notes.txt").write_text("ignored")
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Generated images covering the transform's cases: portrait/landscape,
    downscale (antialiasing) and upscale, half-pixel crop offsets, greyscale,
    CMYK, RGBA PNG, palette GIF, WebP, BMP."""
    root = tmp_path_factory.mktemp("generated")
    rng = np.random.default_rng(5)
    cases = [("land.jpg", 300, 400, None), ("port.png", 260, 180, None),
             ("big.jpg", 500, 640, None), ("small.jpg", 100, 150, None),
             ("half.png", 256, 257, None), ("grey.jpeg", 240, 320, "L"),
             ("cmyk.jpg", 330, 250, "CMYK"), ("rgba.png", 230, 300, "RGBA"),
             ("pal.gif", 240, 250, "P"), ("photo.webp", 270, 280, None),
             ("bitmap.bmp", 226, 300, None)]
    return [save(str(root / name), smooth_image(rng, h, w), mode)
            for name, h, w, mode in cases]


def real_image_paths():
    """40 imagenet-val-1300 and 20 imagenette/val images (reference data:
    skips, or fails under CI, when missing)."""
    shared = require_shared("imagenet-val-1300/labels.csv", "imagenette/val")
    with open(shared / "imagenet-val-1300" / "labels.csv", newline="") as f:
        rows = [r["file"] for r in csv.DictReader(f)][:40]
    paths = [str(shared / "imagenet-val-1300" / r) for r in rows]
    paths += data.list_images(shared / "imagenette" / "val")[::200][:20]
    assert len(paths) == 60 and all(os.path.isfile(p) for p in paths)
    return paths


@pytest.fixture(scope="module")
def torchvision_ref(generated, folder, tmp_path_factory):
    """``{path: uint8 (224, 224, 3)}``: real torchvision Resize(256) +
    CenterCrop(224) + ToTensor, run in a subprocess, on the generated images,
    the ImageFolder's decodable images and the real images present."""
    require_modules("torchvision")
    paths = generated + [str(folder / n) for n in ("b_cls/1.jpg", "a_cls/cmyk.jpg",
                                                    "c_cls/sub/3.jpg")]
    if REQUIRE_REFERENCE or SHARED_DATA.is_dir():  # real images too wherever they can be
        paths += real_image_paths()
    tmp = tmp_path_factory.mktemp("torchvision")
    (tmp / "paths.txt").write_text("\n".join(paths) + "\n")
    proc = subprocess.run([sys.executable, str(TORCHVISION_REF), str(tmp / "ref.npz"),
                           str(tmp / "paths.txt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip(paths, np.load(tmp / "ref.npz")["images"]))


# --------------------------------------------------------------------------
# listing and labels
# --------------------------------------------------------------------------

def test_list_image_folder_sorted_and_recursive(folder):
    paths, labels = data.list_examples(folder)
    names = [os.path.relpath(p, folder) for p in paths]
    assert names == ["a_cls/cmyk.jpg", "a_cls/grey.jpeg", "b_cls/1.jpg", "b_cls/2.PNG",
                     "c_cls/broken.jpg", "c_cls/sub/3.jpg"]
    assert labels == [0, 0, 1, 1, 2, 2]
    assert data.list_images(folder) == sorted(paths, key=lambda p: os.path.relpath(p, folder))
    assert data.IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def test_list_synsets_and_labels_csv(tmp_path):
    rng = np.random.default_rng(1)
    for syn in ("n01440764", "n02102040"):
        save(str(tmp_path / "sets" / syn / "x.jpg"), smooth_image(rng, 40, 40))
    mapping = {"n01440764": 0, "n02102040": 217}
    assert data.is_synset_folder(tmp_path / "sets")
    _, labels = data.list_examples(tmp_path / "sets", synset_to_index=mapping)
    assert labels == [0, 217]
    with pytest.raises(ValueError, match="n02102040"):
        data.list_examples(tmp_path / "sets", synset_to_index={"n01440764": 0})
    with pytest.raises(ValueError, match="n02102040: class index 217 out of range"):
        data.list_examples(tmp_path / "sets", synset_to_index=mapping, num_classes=10)
    csv_dir = tmp_path / "csv"
    save(str(csv_dir / "images" / "a.jpg"), smooth_image(rng, 40, 40))
    (csv_dir / "labels.csv").write_text("file,label\nimages/a.jpg,7\n")
    assert not data.is_synset_folder(csv_dir)
    paths, labels = data.list_examples(csv_dir)
    assert labels == [7] and paths[0].endswith("images/a.jpg")
    (csv_dir / "labels.csv").write_text("file,label\nimages/a.jpg,7\nimages/gone.jpg,3\n")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        data.list_examples(csv_dir)
    (csv_dir / "labels.csv").write_text("path,cls\nimages/a.jpg,7\n")
    with pytest.raises(ValueError, match="file,label"):
        data.list_examples(csv_dir)


@pytest.mark.parametrize("value, message", [
    ("1000", "label 1000 out of range for the model's 1000 classes (0..999)"),
    ("-1", "negative label -1"), ("cat", "label 'cat' is not an integer"),
    ("3.0", "label '3.0' is not an integer")])
def test_labels_csv_bad_label_names_the_row(tmp_path, value, message):
    rng = np.random.default_rng(2)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save(str(tmp_path / name), smooth_image(rng, 40, 40))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"file,label\na.jpg,0\nb.jpg,999\nc.jpg,{value}\n")
    with pytest.raises(ValueError) as e:
        data.list_examples(tmp_path, num_classes=1000)
    assert str(e.value) == f"{csv_path}:4 (c.jpg): {message}"
    if value == "1000":  # no class count: nothing to check against
        assert data.list_examples(tmp_path)[1] == [0, 999, 1000]
        with pytest.raises(ValueError, match=r"labels.csv:3 \(b.jpg\): label 999 out of range"):
            data.list_examples(tmp_path, num_classes=10)


def test_image_folder_more_classes_than_model(folder):
    with pytest.raises(ValueError, match="3 class folders, but the model has 2 classes"):
        data.list_examples(folder, num_classes=2)
    assert data.list_examples(folder, num_classes=3)[1][-1] == 2
    with pytest.raises(ValueError, match="num_classes"):
        data.list_examples(folder, num_classes=0)


def test_read_class_index():
    root = require_shared("imagenet_classes.csv", "imagenette/classes.csv")
    full = data.read_class_index(root / "imagenet_classes.csv")
    nette = data.read_class_index(root / "imagenette" / "classes.csv")
    assert len(full) == 1000 and full["n01440764"] == 0
    assert all(full[s] == i for s, i in nette.items())


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.list_examples(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not found"):
        data.list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither labels.csv nor class subfolders"):
        data.list_examples(tmp_path)
    (tmp_path / "empty_cls").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.list_examples(tmp_path)
    with pytest.raises(ValueError, match="no images"):
        data.image_folder_dataset(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        data.eval_dataset(tmp_path, image_size=10)
    with pytest.raises(ValueError, match="batch_size"):
        data.eval_dataset(tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="augment"):
        data.train_dataset(tmp_path, 2, augment="autoaugment")
    with pytest.raises(ValueError, match="square"):
        data.load_image(tmp_path / "x.jpg", (224, 200))


# --------------------------------------------------------------------------
# decoding and bad images (issue 12)
# --------------------------------------------------------------------------

def test_decoders_agree_with_pil(folder, generated):
    for path in [str(folder / n) for n in ("a_cls/grey.jpeg", "a_cls/cmyk.jpg")] + generated:
        ref = np.asarray(Image.open(path).convert("RGB"), np.int32)
        image = np.asarray(data.open_image(path), np.int32)
        np.testing.assert_array_equal(image, ref)
        graph = data.decode_image(tf.io.read_file(path)).numpy()
        assert graph.shape == ref.shape and graph.dtype == np.uint8
        # JPEG: accurate IDCT is bit-exact with PIL; CMYK conversion within 2 levels
        assert np.abs(graph.astype(np.int32) - ref).max() <= (2 if "cmyk" in path else 0), path


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "text"])
def test_open_image_names_the_file(tmp_path, kind):
    path = write_bad_images(tmp_path, np.random.default_rng(3))[kind]
    with pytest.raises(data.ImageDecodeError) as e:
        data.open_image(path)
    assert str(e.value).startswith(f"{path}: not a decodable image (")
    assert isinstance(e.value, ValueError) and e.value.paths == [path]
    for load in (data.load_image, data.pil_eval_transform):
        with pytest.raises(data.ImageDecodeError, match=f"^{path}: not a decodable image"):
            load(path)
    assert data.find_undecodable([path]) == [path]
    with pytest.raises(FileNotFoundError, match="No such image file: .*absent.jpg"):
        data.open_image(tmp_path / "absent.jpg")


def test_check_image_folder_names_bad_files(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(3):
        save(str(tmp_path / "val" / "cls" / f"{i}.jpg"), smooth_image(rng, 60, 60))
    paths, labels = data.check_image_folder(tmp_path / "val")
    assert len(paths) == 3 and labels == [0, 0, 0]
    bad = write_bad_images(tmp_path / "val" / "cls2", rng)
    with pytest.raises(data.ImageDecodeError) as e:
        data.check_image_folder(tmp_path / "val")
    assert str(e.value).startswith("3 undecodable images: ")
    assert sorted(e.value.paths) == sorted(bad.values())
    assert all(p in str(e.value) for p in bad.values())
    os.remove(bad["corrupt"]), os.remove(bad["text"])
    with pytest.raises(data.ImageDecodeError,
                       match=f"^{bad['truncated']}: not a decodable image"):
        data.check_image_folder(tmp_path / "val")


def test_describe_skipped():
    assert data.describe_skipped([]) == ""
    assert data.describe_skipped(["/b.jpg", "/a.jpg"], 10) == \
        "2 of 10 images skipped (not decodable): /a.jpg, /b.jpg"
    many = data.describe_skipped([f"/{i:02d}.jpg" for i in range(12)])
    assert many.startswith("12 images skipped") and many.endswith("/09.jpg, ... (2 more)")


# --------------------------------------------------------------------------
# eval transform vs real torchvision
# --------------------------------------------------------------------------

def _check_against_torchvision(paths, ref, tf_max_allowed, tf_mean_allowed):
    tf_max, tf_means = 0.0, []
    for p in paths:
        expected = ref[p]
        np.testing.assert_array_equal(data.pil_eval_transform(p), expected, err_msg=p)
        np.testing.assert_array_equal(data.load_image(p), expected.astype(np.float32))
        out = data.eval_transform(data.decode_image(tf.io.read_file(p))).numpy()
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        if "cmyk" in p:  # libjpeg's CMYK conversion differs from PIL's
            continue
        d = np.abs(out - expected.astype(np.float32))
        tf_max, tf_means = max(tf_max, float(d.max())), tf_means + [float(d.mean())]
    assert tf_max <= tf_max_allowed and np.mean(tf_means) < tf_mean_allowed, \
        (tf_max, np.mean(tf_means))


def test_eval_transform_vs_torchvision_generated(generated, torchvision_ref):
    _check_against_torchvision(generated, torchvision_ref, 2, 0.5)


def test_eval_transform_vs_torchvision_real(torchvision_ref):
    paths = real_image_paths()
    assert all(p in torchvision_ref for p in paths)
    # PIL path bit-exact; in-graph path: max 1 level, mean ~0.17 (PIL fixed point)
    _check_against_torchvision(paths, torchvision_ref, 1, 0.3)


def test_eval_dataset_equals_torchvision(folder, tmp_path, torchvision_ref):
    root = tmp_path / "ok"
    for name in ("b_cls/1.jpg", "a_cls/cmyk.jpg", "c_cls/sub/3.jpg"):
        dst = root / name.split("/")[0] / os.path.basename(name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((folder / name).read_bytes())
    paths, labels = data.list_examples(root)
    batches = list(data.eval_dataset(root, batch_size=2))
    images = np.concatenate([b[0].numpy() for b in batches])
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert batches[0][1].dtype == tf.int32
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), labels)
    sources = [str(folder / "a_cls/cmyk.jpg"), str(folder / "b_cls/1.jpg"),
               str(folder / "c_cls/sub/3.jpg")]  # list_examples order of the copies
    for image, src in zip(images, sources):
        np.testing.assert_array_equal(image, torchvision_ref[src].astype(np.float32))
    tf_images = np.concatenate([b[0].numpy() for b in data.eval_dataset(root, backend="tf")])
    assert np.abs(tf_images - images).max() <= 2
    np.testing.assert_array_equal(data.load_images(paths), images)


# --------------------------------------------------------------------------
# eval pipeline on bad images: raise naming the file, or skip and record
# --------------------------------------------------------------------------

def test_eval_dataset_raises_naming_corrupt(folder):
    with pytest.raises(tf.errors.OpError, match="broken.jpg: not a decodable image"):
        list(data.eval_dataset(folder, batch_size=8))


@pytest.mark.parametrize("backend", ["pil", "tf"])
def test_eval_dataset_skips_and_records(folder, tmp_path, backend):
    root = tmp_path / "mixed"
    for name in ("b_cls/1.jpg", "a_cls/grey.jpeg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((folder / name).read_bytes())
    bad = write_bad_images(root / "c_cls", np.random.default_rng(6))
    skipped = []
    ds = data.eval_dataset(root, batch_size=2, skipped=skipped, backend=backend)
    for _ in range(2):  # a second pass records nothing twice
        batches = list(ds)
        assert [b[0].shape[0] for b in batches] == [2]
        assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == [0, 1]
        assert sorted(skipped) == sorted(bad.values())


# --------------------------------------------------------------------------
# training and unlabelled pipelines
# --------------------------------------------------------------------------

def test_train_dataset_shapes_skip_corrupt_determinism(folder):
    kw = dict(batch_size=5, image_size=64, seed=3, deterministic=True, drop_remainder=False)
    a = list(data.train_dataset(folder, **kw))
    assert len(a) == 1  # 6 files, the corrupt one skipped
    images, labels = a[0]
    assert images.shape == (5, 64, 64, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255
    b = list(data.train_dataset(folder, **kw))
    np.testing.assert_array_equal(a[0][0].numpy(), b[0][0].numpy())
    np.testing.assert_array_equal(a[0][1].numpy(), b[0][1].numpy())
    # the skipped file, named
    assert data.find_undecodable(data.list_examples(folder)[0]) == \
        [str(folder / "c_cls" / "broken.jpg")]
    # progressive resizing: same call, another size
    small = next(iter(data.train_dataset(folder, **{**kw, "image_size": 32})))
    assert small[0].shape[1:] == (32, 32, 3)
    aug = next(iter(data.train_dataset(folder, **{**kw, "augment": "randaugment"})))
    assert aug[0].shape == (5, 64, 64, 3)


def test_train_dataset_tfrecords(folder, tmp_path):
    paths = [str(folder / "b_cls" / "1.jpg"), str(folder / "a_cls" / "grey.jpeg"),
             str(folder / "c_cls" / "broken.jpg")]
    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-{shard:05d}-of-00002")) as w:
            for i, p in enumerate(paths):
                feat = {"image/encoded": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[open(p, "rb").read()])),
                        "image/class/label": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[i + 1]))}
                w.write(tf.train.Example(features=tf.train.Features(feature=feat))
                        .SerializeToString())
    pattern = str(tmp_path / "train-*")
    assert data.is_tfrecord_source(pattern) and not data.is_tfrecord_source(folder)
    assert len(data.tfrecord_files(pattern)) == 2 and data.count_records(pattern) == 6
    ds = data.train_dataset(pattern, batch_size=4, image_size=48,
                            label_offset=-1, seed=0, deterministic=True)
    batches = list(ds)
    assert len(batches) == 1 and batches[0][0].shape == (4, 48, 48, 3)
    assert sorted(batches[0][1].numpy().tolist()) == [0, 0, 1, 1]
    evals = list(data.tfrecord_eval_dataset(pattern, batch_size=8, image_size=64))
    assert evals[0][0].shape == (4, 64, 64, 3)
    with pytest.raises(FileNotFoundError, match="TFRecord"):
        data.train_dataset(str(tmp_path / "nothing-*"), batch_size=2)


def test_image_folder_dataset_unlabelled(folder):
    batches = list(data.image_folder_dataset(folder, batch_size=4, image_size=64))
    assert not isinstance(batches[0], tuple)
    assert sum(b.shape[0] for b in batches) == 5  # broken.jpg skipped, notes.txt ignored
    assert batches[0].shape[1:] == (64, 64, 3) and batches[0].dtype == tf.float32
    # the first image is cmyk.jpg through the in-graph eval transform
    first = data.eval_transform(data.decode_image(tf.io.read_file(
        str(folder / "a_cls" / "cmyk.jpg"))), 64)
    np.testing.assert_array_equal(batches[0][0].numpy(), first.numpy())
    aug = list(data.image_folder_dataset(folder, batch_size=2, image_size=64, augment=True,
                                         shuffle=True, seed=1, drop_remainder=True))
    assert [b.shape for b in aug] == [(2, 64, 64, 3)] * 2
    assert all(0 <= float(tf.reduce_min(b)) and float(tf.reduce_max(b)) <= 255 for b in aug)
    assert data.find_undecodable(data.list_images(folder)) == \
        [str(folder / "c_cls" / "broken.jpg")]


def test_image_batches_spread_over_folder(generated):
    folder = os.path.dirname(generated[0])
    paths = data.list_images(folder)
    batches = list(data.image_batches(folder, 64, batch_size=2, max_batches=3))
    assert [b.shape for b in batches] == [(2, 64, 64, 3)] * 3 and batches[0].dtype == np.float32
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, 6).astype(int)]
    np.testing.assert_array_equal(batches[-1][-1], data.load_image(picks[-1], 64))
    assert list(data.image_batches(folder, 64, batch_size=len(paths) + 1, max_batches=1)) == []


def test_list_images_follows_symlinked_folders_once(tmp_path):
    """A data folder linked into place is listed; a link loop or a second link
    to the same folder lists nothing twice."""
    real = tmp_path / "real" / "class_a"
    real.mkdir(parents=True)
    for name in ("1.jpg", "2.png", "notes.txt"):
        (real / name).write_bytes(b"x")
    top = tmp_path / "top"
    top.mkdir()
    (top / "images").symlink_to(tmp_path / "real", target_is_directory=True)
    (top / "again").symlink_to(tmp_path / "real", target_is_directory=True)
    (real / "loop").symlink_to(top, target_is_directory=True)
    found = data.list_images(top)
    assert [os.path.basename(p) for p in found] == ["1.jpg", "2.png"]
