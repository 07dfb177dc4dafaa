"""Independent reference for the eval transform: real ``torchvision.transforms``.

Run as a SCRIPT in a subprocess (importing torchvision after TensorFlow
crashes the process):

    python tests/torchvision_reference.py OUT.npz LIST.txt [--size 224 --resize 256]

``LIST.txt`` holds one image path per line. For each image:
``PIL.Image.open(path).convert("RGB")`` -> ``Resize(resize, BILINEAR)`` ->
``CenterCrop(size)`` -> ``ToTensor()`` (float 0..1, CHW). Writes ``images``:
uint8 ``(N, size, size, 3)`` = ``round(ToTensor * 255)`` in NHWC (exact: the
PIL output is uint8, ToTensor divides by 255).
"""

import argparse
import sys

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("paths")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--resize", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transform = transforms.Compose([
        transforms.Resize(args.resize, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.size),
        transforms.ToTensor(),
    ])
    with open(args.paths) as f:
        paths = [line.rstrip("\n") for line in f if line.strip()]
    out = []
    for path in paths:
        with Image.open(path) as im:
            t = transform(im.convert("RGB"))
        out.append(np.round(t.numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8))
    np.savez(args.out, images=np.stack(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
