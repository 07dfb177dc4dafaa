"""Input pipelines: listing, eval transform vs an independent PIL/torchvision
implementation, training pipeline, unusual images and bad input."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mobileone_tf import data


def _torchvision_like(path, size=224, crop_pct=0.875):
    """Independent reference: torchvision Resize(int(size/crop_pct)) +
    CenterCrop(size) on a PIL image (bilinear), written out longhand."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = int(size / crop_pct)
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


def _smooth_image(rng, h, w):
    """A natural-ish image (smooth gradients + noise), uint8 RGB."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 17.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    img = 127 + 100 * base + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path, array, mode=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    im.save(path, fmt)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ImageFolder with 3 classes: JPEG, PNG, greyscale, CMYK and one corrupt file."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    _save(str(root / "b_cls" / "1.jpg"), _smooth_image(rng, 300, 400))
    _save(str(root / "b_cls" / "2.PNG"), _smooth_image(rng, 260, 180))
    _save(str(root / "a_cls" / "grey.jpeg"), _smooth_image(rng, 240, 320), mode="L")
    _save(str(root / "a_cls" / "cmyk.jpg"), _smooth_image(rng, 330, 250), mode="CMYK")
    _save(str(root / "c_cls" / "sub" / "3.jpg"), _smooth_image(rng, 500, 640))
    (root / "c_cls" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "c_cls" / "notes.txt").write_text("ignored")
    return root


def test_list_image_folder_sorted_and_recursive(folder):
    paths, labels = data.list_examples(folder)
    names = [os.path.relpath(p, folder) for p in paths]
    assert names == ["a_cls/cmyk.jpg", "a_cls/grey.jpeg", "b_cls/1.jpg", "b_cls/2.PNG",
                     "c_cls/broken.jpg", "c_cls/sub/3.jpg"]
    assert labels == [0, 0, 1, 1, 2, 2]


def test_list_synsets_and_labels_csv(tmp_path):
    rng = np.random.default_rng(1)
    for syn in ("n01440764", "n02102040"):
        _save(str(tmp_path / "sets" / syn / "x.jpg"), _smooth_image(rng, 40, 40))
    mapping = {"n01440764": 0, "n02102040": 217}
    _, labels = data.list_examples(tmp_path / "sets", synset_to_index=mapping)
    assert labels == [0, 217]
    with pytest.raises(ValueError, match="n02102040"):
        data.list_examples(tmp_path / "sets", synset_to_index={"n01440764": 0})
    csv_dir = tmp_path / "csv"
    _save(str(csv_dir / "images" / "a.jpg"), _smooth_image(rng, 40, 40))
    (csv_dir / "labels.csv").write_text("file,label\nimages/a.jpg,7\n")
    paths, labels = data.list_examples(csv_dir)
    assert labels == [7] and paths[0].endswith("images/a.jpg")
    (csv_dir / "labels.csv").write_text("file,label\nimages/a.jpg,7\nimages/gone.jpg,3\n")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        data.list_examples(csv_dir)
    (csv_dir / "labels.csv").write_text("path,cls\nimages/a.jpg,7\n")
    with pytest.raises(ValueError, match="file,label"):
        data.list_examples(csv_dir)


def test_read_class_index(shared_data):
    full = data.read_class_index(shared_data / "imagenet_classes.csv")
    nette = data.read_class_index(shared_data / "imagenette" / "classes.csv")
    assert len(full) == 1000 and full["n01440764"] == 0
    assert all(full[s] == i for s, i in nette.items())


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.list_examples(tmp_path / "missing")
    with pytest.raises(ValueError, match="neither labels.csv nor class subfolders"):
        data.list_examples(tmp_path)
    (tmp_path / "empty_cls").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.list_examples(tmp_path)
    with pytest.raises(ValueError, match="no images"):
        data.image_folder_dataset(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        data.eval_dataset(tmp_path, image_size=10)
    with pytest.raises(ValueError, match="augment"):
        data.train_dataset(tmp_path, 2, augment="autoaugment")


def test_decode_grey_cmyk_png(folder):
    for name in ("a_cls/grey.jpeg", "a_cls/cmyk.jpg", "b_cls/2.PNG"):
        path = str(folder / name)
        image = data.decode_image(tf.io.read_file(path)).numpy()
        ref = np.asarray(Image.open(path).convert("RGB"), np.int32)
        assert image.shape == ref.shape and image.dtype == np.uint8
        # JPEG: accurate IDCT is bit-exact with PIL; CMYK conversion within 2 levels
        assert np.abs(image.astype(np.int32) - ref).max() <= (2 if "cmyk" in name else 0)


def _eval_transform_diffs(paths):
    tf_max, tf_mean = 0.0, []
    for p in paths:
        ref = _torchvision_like(p)
        pil = data.pil_eval_transform(p).astype(np.float32)
        np.testing.assert_array_equal(pil, ref)
        out = data.eval_transform(data.decode_image(tf.io.read_file(p))).numpy()
        assert out.shape == (224, 224, 3) and out.dtype == np.float32
        d = np.abs(out - ref)
        tf_max, tf_mean = max(tf_max, float(d.max())), tf_mean + [float(d.mean())]
    return tf_max, float(np.mean(tf_mean))


def test_eval_transform_generated_images(folder):
    # includes a downscale (500x640 -> 256) where antialiasing matters
    paths = [str(folder / n) for n in ("b_cls/1.jpg", "b_cls/2.PNG", "a_cls/grey.jpeg",
                                        "c_cls/sub/3.jpg")]
    tf_max, tf_mean = _eval_transform_diffs(paths)
    assert tf_max <= 2 and tf_mean < 0.5, (tf_max, tf_mean)


def test_eval_transform_real_images(shared_data):
    paths, _ = data.list_examples(shared_data / "imagenet-val-1300")
    nette, _ = data.list_examples(shared_data / "imagenette" / "val")
    tf_max, tf_mean = _eval_transform_diffs(paths[:40] + nette[:20])
    # measured: max 1 level, mean ~0.17 levels (PIL's fixed-point rounding)
    assert tf_max <= 1 and tf_mean < 0.3, (tf_max, tf_mean)


def test_eval_dataset_pil_exact(folder, tmp_path):
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
    for image, p in zip(images, paths):
        np.testing.assert_array_equal(image, _torchvision_like(p))
    tf_images = np.concatenate([b[0].numpy() for b in data.eval_dataset(root, backend="tf")])
    assert np.abs(tf_images - images).max() <= 2


def test_eval_dataset_raises_on_corrupt(folder):
    with pytest.raises(tf.errors.OpError):
        list(data.eval_dataset(folder, batch_size=8))


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
    ds = data.train_dataset(str(tmp_path / "train-*"), batch_size=4, image_size=48,
                            label_offset=-1, seed=0, deterministic=True)
    batches = list(ds)
    assert len(batches) == 1 and batches[0][0].shape == (4, 48, 48, 3)
    assert sorted(batches[0][1].numpy().tolist()) == [0, 0, 1, 1]
    with pytest.raises(FileNotFoundError, match="TFRecord"):
        data.train_dataset(str(tmp_path / "nothing-*"), batch_size=2)


def test_image_folder_dataset_unlabelled(folder):
    batches = list(data.image_folder_dataset(folder, batch_size=4, image_size=64))
    assert not isinstance(batches[0], tuple)
    assert sum(b.shape[0] for b in batches) == 5  # broken.jpg skipped, notes.txt ignored
    assert batches[0].shape[1:] == (64, 64, 3) and batches[0].dtype == tf.float32
    assert data.find_undecodable(data.list_images(folder)) == [str(folder / "c_cls" / "broken.jpg")]
