"""The settings of a training run: :class:`TrainConfig`, the one place that
holds their defaults, and the command-line flags generated from it.

Defaults follow the MobileOne paper (Vasu et al., CVPR 2023, Sec. 4) and the
public mmpretrain reproduction (``configs/mobileone/mobileone-s*_8xb32_in1k.py``
over ``_base_/schedules/imagenet_bs256_coslr_coswd_300e.py``):

* SGD, momentum 0.9 (no Nesterov), lr 0.1 per 256 images (scaled linearly
  with the *global* batch size), 5-epoch linear warm-up from 0.001 x lr, then
  cosine decay to 1e-6, updated per step (mmpretrain steps the cosine per
  epoch);
* weight decay 1e-4 annealed by a cosine to 1e-5 over the run, coupled
  (PyTorch-style) L2, never on BatchNorm parameters or biases (see
  :mod:`mobileone_tf.training.optim`);
* label smoothing 0.1; EMA of the weights, decay 0.9995 (mmpretrain
  ``EMAHook(momentum=5e-4)``), used for validation and for the saved models;
* progressive resizing: random-resized-crop 160 px, 192 from epoch 37, 224
  from epoch 112 of 300 (boundaries scaled with ``epochs``), augmentation
  magnitude rising with it for S1-S4 (S0: none);
* 300 epochs.

Every field carries its command-line help in ``metadata["help"]``;
:func:`define_flags` turns the fields into absl flags (same names, same
defaults; ``jit_compile`` is ``--xla``) and :func:`from_flags` reads them back.

This module imports neither TensorFlow nor Keras.
"""

import dataclasses
from collections.abc import Sequence
from typing import Optional

from mobileone_tf import cli, dataflags, variants
from mobileone_tf.api_export import mobileone_export

# Augmentation magnitude (0..1, RandAugment factor) per resizing stage.
# MobileOne uses none for S0 and rising RandAugment-style strength for S1-S4.
DEFAULT_AUGMENT = {"s0": (0.0, 0.0, 0.0), "s1": (0.1, 0.2, 0.3),
                   "s2": (0.2, 0.35, 0.5), "s3": (0.2, 0.35, 0.5),
                   "s4": (0.2, 0.35, 0.5)}

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def _opt(default, help, **meta):
    """A field with its flag help (``meta``: ``flag`` = flag name, None for
    no flag; ``choices`` = enum values)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@mobileone_export("mobileone_tf.training")
@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; defaults = the paper's ImageNet recipe."""

    variant: str = _opt("s0", "MobileOne variant.", choices=tuple(sorted(variants.VARIANTS)))
    epochs: int = _opt(300, "Epochs.")
    batch_size: int = _opt(256, "Global batch size (split across replicas).")
    base_lr: float = _opt(0.1, "Learning rate per `lr_reference_batch` images.")
    lr_reference_batch: int = _opt(256, "Batch size that `base_lr` refers to (lr scales "
                                   "linearly with the global batch).")
    momentum: float = _opt(0.9, "SGD momentum.")
    nesterov: bool = _opt(False, "Nesterov momentum.")
    warmup_epochs: float = _opt(5.0, "Linear warm-up epochs.")
    warmup_start_factor: float = _opt(0.001, "Warm-up starts at this x lr.")
    min_lr: float = _opt(1e-6, "Final learning rate of the cosine.")
    weight_decay: float = _opt(1e-4, "Coupled L2 (PyTorch style) at the start.")
    min_weight_decay: float = _opt(1e-5, "Coupled L2 at the end (cosine).")
    label_smoothing: float = _opt(0.1, "Label smoothing.")
    ema_decay: float = _opt(0.9995, "EMA decay of the weights (0: off).")
    clip_grad_norm: float = _opt(0.0, "Clip gradients to this global L2 norm (0: off, the "
                                 "paper's recipe); use it when fine-tuning the "
                                 "BatchNorm-free fused model.")
    image_sizes: Sequence[int] = _opt((160, 192, 224), "Progressive train crop sizes (px).")
    resize_epochs: Sequence[int] = _opt((0, 37, 112), "Epochs (of resize_reference_epochs) "
                                        "where each image size starts.")
    resize_reference_epochs: int = _opt(300, "Epochs that resize_epochs refer to (the "
                                        "boundaries scale with epochs).")
    augment_magnitudes: Optional[Sequence[float]] = _opt(
        None, "RandAugment factor (0..1) per resizing stage (default per variant: "
        "S0 none, rising for S1-S4).")
    eval_image_size: int = _opt(224, "Validation crop size (px).")
    crop_scale_min: float = _opt(0.08, "Random-resized crop: smallest area fraction (0.08 "
                                 "torchvision/paper; larger, e.g. 0.35, for short fine-tuning).")
    # model / fine-tuning
    weights: Optional[str] = _opt(None, "Weights to start from: 'imagenet', a .weights.h5 or a "
                                  "PyTorch checkpoint path (library: also a state dict); "
                                  "none: random initialization.", convert=cli.weights_arg)
    classes: Optional[int] = _opt(None, "Number of classes (a new head); default: from the data.")
    fused: bool = _opt(False, "Train the fused (plain conv) model instead of the branched one.")
    freeze_backbone_epochs: int = _opt(0, "Train only the head for this many epochs.")
    # execution
    strategy: str = _opt("default", "tf.distribute strategy (multi_worker: one process per "
                         "host, each with its TF_CONFIG; see README).", choices=STRATEGIES)
    sync_batchnorm: bool = _opt(False, "Synchronized BatchNorm in the branched blocks: batch "
                                "statistics over the global batch of all replicas (Keras "
                                "BatchNormalization(synchronized=True)); for small "
                                "per-replica batches under mirrored/multi_worker.")
    mixed_precision: bool = _opt(False, "mixed_float16 on GPU, mixed_bfloat16 on TPU/CPU.")
    jit_compile: bool = _opt(False, "XLA-compile (jit_compile) the train step.", flag="xla")
    run_eagerly: bool = _opt(False, "Debug: run the train step eagerly (no tracing).")
    steps_per_epoch: Optional[int] = _opt(None, "Limit steps per epoch (default: one pass "
                                          "over the data).")
    validation_steps: Optional[int] = _opt(None, "Limit validation steps.")
    check_images: bool = _opt(True, "Decode every image of an ImageFolder once before "
                              "training: name unreadable training images (skipped) and "
                              "refuse unreadable validation images.")
    seed: int = _opt(0, "Random seed.")
    verbose: int = _opt(1, "Keras fit verbosity (0, 1, 2).", flag=None)

    def validate(self):
        """Raises ValueError naming the setting that cannot work."""
        variants.get_variant(self.variant)
        for name in ("epochs", "batch_size", "lr_reference_batch", "eval_image_size",
                     "resize_reference_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}: use "
                             f"{', '.join(STRATEGIES)}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not self.image_sizes:
            raise ValueError("image_sizes must list at least one size")
        self.stages()
        return self

    def resolved_augment(self):
        """Augmentation magnitude per resizing stage (floats)."""
        mags = self.augment_magnitudes
        if mags is None:
            mags = DEFAULT_AUGMENT[variants.get_variant(self.variant).name]
        return tuple(float(m) for m in mags)

    def stages(self):
        """``[(start_epoch, end_epoch, image_size, magnitude), ...]``."""
        if len(self.image_sizes) != len(self.resize_epochs):
            raise ValueError("image_sizes and resize_epochs must have the same "
                             f"length: {self.image_sizes} vs {self.resize_epochs}")
        mags = self.resolved_augment()
        if len(mags) < len(self.image_sizes):
            mags = mags + (mags[-1],) * (len(self.image_sizes) - len(mags))
        starts = [int(round(e * self.epochs / self.resize_reference_epochs))
                  for e in self.resize_epochs]
        starts[0] = 0
        out = []
        for i, (s, size) in enumerate(zip(starts, self.image_sizes)):
            end = starts[i + 1] if i + 1 < len(starts) else self.epochs
            end = min(end, self.epochs)
            if end > s:
                out.append((s, end, int(size), mags[i]))
        return out

    def to_json(self) -> dict:
        """The settings as JSON-ready values (a state dict in ``weights``
        becomes ``"<state dict>"``, tuples become lists)."""
        d = dataclasses.asdict(self)
        if not isinstance(d.get("weights"), (str, type(None))):
            d["weights"] = "<state dict>"
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------------------
# Command-line flags generated from the fields (mobileone_tf.dataflags)
# ---------------------------------------------------------------------------
@mobileone_export("mobileone_tf.training")
def define_flags(flag_values=None):
    """Defines one absl flag per :class:`TrainConfig` field (its name unless
    the field's metadata gives another, its default and help): integers,
    floats, booleans, strings (enums where the field lists ``choices``), and
    comma-separated lists for sequences (:func:`mobileone_tf.dataflags.define_flags`)."""
    dataflags.define_flags(TrainConfig, flag_values=flag_values)


@mobileone_export("mobileone_tf.training")
def from_flags(flag_values=None, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of parsed flags (see :func:`define_flags`).

    Raises:
        ValueError: a list flag with a value of the wrong type (names the flag).
    """
    return dataflags.from_flags(TrainConfig, flag_values=flag_values, **overrides)
