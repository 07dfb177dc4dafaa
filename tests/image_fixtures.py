"""Image test utilities: generated images, the three undecodable kinds of
issue 12, and the listed images of a shared-data folder (skips when any is
missing under ../shared/data)."""

import csv
import os

import numpy as np
from PIL import Image

from tests.conftest import require_shared


def shared_csv_images(folder, n=None):
    """The first ``n`` (``None``: all) images listed in ``folder/labels.csv``
    of the shared data; skips when the csv or any of those images is missing."""
    root = require_shared(f"{folder}/labels.csv")
    with open(root / folder / "labels.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)][:n]
    require_shared(*[f"{folder}/{name}" for name in files])
    return [str(root / folder / name) for name in files]


def smooth_image(rng, h, w):
    """A natural-ish image (smooth gradients + noise), uint8 RGB."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / 17.0 + c) * np.cos(y / 23.0 - c) for c in range(3)], -1)
    img = 127 + 100 * base + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path, array, mode=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    im.save(path, fmt)
    return str(path)


def write_bad_images(folder, rng):
    """The three undecodable kinds of issue 12: a corrupt JPEG (valid header,
    garbage body), a truncated JPEG (first half of a real one), a text file
    named .jpg. Returns {kind: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = save(str(folder / "_good.jpg.tmp"), smooth_image(rng, 120, 160), fmt="JPEG")
    raw = open(good, "rb").read()
    os.remove(good)
    bad = {"corrupt": folder / "corrupt.jpg", "truncated": folder / "truncated.jpg",
           "text": folder / "text.jpg"}
    bad["corrupt"].write_bytes(raw[:20] + bytes(rng.integers(0, 256, 400, dtype=np.uint8)))
    bad["truncated"].write_bytes(raw[: len(raw) // 2])
    bad["text"].write_text("this is not an image\n")
    return {k: str(v) for k, v in bad.items()}
