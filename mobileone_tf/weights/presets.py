"""The preset table: every ImageNet-1k checkpoint Apple released for MobileOne.

One row (:class:`Preset`) per file of Apple's ml-mobileone README (S0-S4,
fused and unfused), in the style of timm's ``default_cfgs`` and KerasHub's
``*_presets.py``: the preset name, Apple's file name and URL, its sha256,
the licence, the evaluation transform (input size, crop fraction, mean and
std) and Apple's published top-1. Everything else reads this table:

* :mod:`mobileone_tf.weights.pretrained` (``weights="imagenet"``);
* ``checkpoints/manifest.json``, generated from it by :func:`write_manifest`
  (``python -c "from mobileone_tf.weights import presets;
  presets.write_manifest('checkpoints/manifest.json')"`` in the repository
  root; a test checks the file is current);
* the eval transform defaults of :mod:`mobileone_tf.data`
  (:data:`EVAL_IMAGE_SIZE`, :data:`EVAL_CROP_PCT`) and the in-model
  normalization (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`);
* KerasHub: ``MobileOneBackbone.from_preset("mobileone_s0_imagenet")``
  (:mod:`mobileone_tf.hub.named_presets`).

Names: ``mobileone_sN_imagenet`` is Apple's ``mobileone_sN.pth.tar`` (the
fused, inference form); ``mobileone_sN_unfused_imagenet`` is
``mobileone_sN_unfused.pth.tar`` (the branched, training-time form).

sha256: Apple publishes no checksums. The table knows only the hash of the
S0 fused file (the reference copy in ``../shared/data``); the others are
``None`` and such a file is **not** hash-checked (the port still validates
every tensor record and shape). To have one checked, set
``MOBILEONE_TF_SHA256`` (:data:`ENV_SHA256`) to ``FILE=HEX`` entries
separated by commas or spaces, e.g.
``MOBILEONE_TF_SHA256="mobileone_s1.pth.tar=<64 hex digits>"``; it applies to
the mirror folder and to downloads (:func:`sha256_for`).

Licence: the weights come with Apple's ml-mobileone ``LICENSE`` (Apple's
sample-code licence); read it before redistributing them. Published top-1:
Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone",
CVPR 2023, and the ml-mobileone README (full 50,000-image ImageNet-1k
validation set, 224x224, resize 256 -> centre crop 224), held in
:data:`mobileone_tf.variants.VARIANTS` and read from there.

No TensorFlow, no Keras.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from mobileone_tf import fileio, variants
from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.weights")("BASE_URL")
BASE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/"
"""Where Apple serves the checkpoints (ml-mobileone README, "Model Zoo")."""

LICENSE = "apple-sample-code (ml-mobileone LICENSE)"
"""The weights' licence: Apple's ml-mobileone ``LICENSE`` file."""
LICENSE_URL = "https://github.com/apple/ml-mobileone/blob/main/LICENSE"

EVAL_IMAGE_SIZE = 224
"""Evaluation input size in pixels (square)."""
EVAL_CROP_PCT = 0.875
"""Evaluation crop fraction: short side resized to ``int(224 / 0.875)`` =
256, then the centre 224x224 (Apple's ``Resize(256)`` + ``CenterCrop(224)``,
timm's ``crop_pct``)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of images scaled to 0..1 (ImageNet)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of images scaled to 0..1 (ImageNet)."""

mobileone_export("mobileone_tf.weights")("ENV_SHA256")
ENV_SHA256 = "MOBILEONE_TF_SHA256"
"""Environment variable with user-supplied sha256 of files the table does
not know: ``FILE=HEX`` entries separated by commas or whitespace."""

_KNOWN_SHA256 = {
    "mobileone_s0.pth.tar": "968b1f851cee94b5516f68b50c710a74a6d60d5b1759bbf53528b7b860cc6a97",
}
FORMS = ("fused", "branched")
MANIFEST_FORMAT = "mobileone_tf.manifest/2"


@mobileone_export("mobileone_tf.weights")
@dataclasses.dataclass(frozen=True)
class Preset:
    """One released checkpoint and how to evaluate it.

    Attributes:
        name: preset name (``"mobileone_s0_imagenet"``,
            ``"mobileone_s0_unfused_imagenet"``).
        variant: ``"s0"`` .. ``"s4"``.
        form: ``"fused"`` (inference) or ``"branched"`` (Apple's ``*_unfused``).
        file: Apple's file name; url: where Apple serves it.
        sha256: hex digest, or ``None`` when unknown (not checked, see the
            module docstring).
        license: the licence of the weights.
        num_classes: 1000 (ImageNet-1k).
        image_size: evaluation input size (pixels, square).
        crop_pct: evaluation crop fraction (resize the short side to
            ``int(image_size / crop_pct)``, then centre-crop).
        mean, std: RGB normalization of images scaled to 0..1.
        top1: Apple's published ImageNet-1k top-1 (%).
    """

    name: str
    variant: str
    form: str
    file: str
    url: str
    sha256: str | None
    license: str
    num_classes: int
    image_size: int
    crop_pct: float
    mean: tuple
    std: tuple
    top1: float

    @property
    def resize(self) -> int:
        """The short side before the centre crop: ``int(image_size / crop_pct)``."""
        return int(self.image_size / self.crop_pct)

    @property
    def description(self) -> str:
        what = "fused (inference)" if self.form == "fused" else "unfused (training-time, branched)"
        return (f"MobileOne-{self.variant.upper()} {what}, ImageNet-1k, Apple's {self.file} "
                f"(top-1 {self.top1} %)")

    def as_dict(self) -> dict:
        """The row as JSON-ready plain values (lists for tuples)."""
        out = dataclasses.asdict(self)
        out.update(mean=list(self.mean), std=list(self.std))
        return out


@mobileone_export("mobileone_tf.weights")
def preset_name(variant, form="fused") -> str:
    """``"mobileone_s0_imagenet"`` (fused) / ``"mobileone_s0_unfused_imagenet"``.

    Raises:
        ValueError: unknown variant or form.
    """
    v = variants.get_variant(variant).name
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return f"mobileone_{v}{'' if form == 'fused' else '_unfused'}_imagenet"


def _row(variant, form) -> Preset:
    file = f"mobileone_{variant}{'' if form == 'fused' else '_unfused'}.pth.tar"
    return Preset(name=preset_name(variant, form), variant=variant, form=form, file=file,
                  url=BASE_URL + file, sha256=_KNOWN_SHA256.get(file), license=LICENSE,
                  num_classes=1000, image_size=EVAL_IMAGE_SIZE, crop_pct=EVAL_CROP_PCT,
                  mean=IMAGENET_MEAN, std=IMAGENET_STD, top1=variants.VARIANTS[variant].top1)


mobileone_export("mobileone_tf.weights")("PRESETS")
PRESETS = {p.name: p for p in (_row(v, f) for v in variants.VARIANTS for f in FORMS)}
"""``{name: Preset}``: S0 fused, S0 unfused, S1 fused, ... S4 unfused."""


@mobileone_export("mobileone_tf.weights")
def get_preset(name) -> Preset:
    """The :class:`Preset` named ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(name, Preset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown MobileOne preset {name!r}; known presets: "
                         f"{', '.join(PRESETS)}")
    return PRESETS[name]


def find_preset(variant, form) -> Preset:
    """The preset of a variant (``"s0"``..``"s4"``) and form (``"fused"`` /
    ``"branched"``). Raises ValueError for an unknown one."""
    return PRESETS[preset_name(variant, form)]


def user_sha256() -> dict:
    """``{file: sha256}`` from ``$MOBILEONE_TF_SHA256`` (empty when unset).

    Raises:
        ValueError: an entry that is not ``FILE=HEX`` with 64 hex digits
            (names the variable and the entry).
    """
    out = {}
    for entry in re.split(r"[,\s]+", os.environ.get(ENV_SHA256, "").strip()):
        if not entry:
            continue
        file, sep, digest = entry.partition("=")
        if not sep or not file or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise ValueError(f"${ENV_SHA256}: entry {entry[:100]!r} is not FILE=SHA256 "
                             "(64 hex digits)")
        out[file] = digest.lower()
    return out


@mobileone_export("mobileone_tf.weights")
def sha256_for(preset) -> str | None:
    """The sha256 to check a preset's file against: the table's, else the
    user's (:data:`ENV_SHA256`), else ``None`` (not checked).

    Raises:
        ValueError: a malformed ``$MOBILEONE_TF_SHA256``, or one that gives
            another hash for a file whose hash the table knows.
    """
    preset = get_preset(preset)
    user = user_sha256().get(preset.file)
    if preset.sha256 and user and user != preset.sha256:
        raise ValueError(f"${ENV_SHA256} gives {user} for {preset.file}, whose published "
                         f"sha256 is {preset.sha256}")
    return preset.sha256 or user


def manifest() -> dict:
    """The content of ``checkpoints/manifest.json``: every preset as a dict
    (:meth:`Preset.as_dict`)."""
    return {"format": MANIFEST_FORMAT,
            "source": "Apple ml-mobileone README (ImageNet-1k); generated from "
                      "mobileone_tf/weights/presets.py",
            "license_url": LICENSE_URL,
            "presets": [p.as_dict() for p in PRESETS.values()]}


def manifest_text() -> str:
    """:func:`manifest` as the file's text (2-space JSON, trailing newline)."""
    return json.dumps(manifest(), indent=2) + "\n"


def write_manifest(path) -> str:
    """Writes :func:`manifest_text` to ``path`` atomically; returns ``path``."""
    return fileio.atomic_write(path, manifest_text())
