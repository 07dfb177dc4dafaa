"""The settings of a quantization-aware training run (:class:`QatOptions`),
the one place that holds their defaults and help; ``scripts/qat.py``
generates its training flags from them (:mod:`mobileone_tf.dataflags`).

Also :data:`INT8_IO`, the input/output types of an int8 TFLite file (PTQ and
QAT alike). Imports neither TensorFlow nor TFMOT.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from mobileone_tf.dataflags import option
from mobileone_tf.api_export import mobileone_export

mobileone_export("mobileone_tf.quantization")("INT8_IO")
INT8_IO = ("float", "int8", "uint8")
"""Input/output tensor types of an int8 TFLite file: ``"float"`` (float32,
QUANTIZE/DEQUANTIZE at the edges), ``"int8"`` or ``"uint8"``."""

AUGMENTS = ("crop_flip", "random_resized_crop", "none")
MIXES = ("none", "mixup", "cutmix")


@mobileone_export("mobileone_tf.quantization")
@dataclasses.dataclass(frozen=True)
class QatOptions:
    """How a fused MobileOne is fine-tuned for int8 (distillation from the
    float model; :func:`mobileone_tf.quantization.quantization_aware_training`).
    The file's writing (int8 I/O, verification, metadata, overwrite) is an
    :class:`mobileone_tf.export.options.ExportOptions`."""

    epochs: int = option(1, "QAT epochs (>= 1)", "int")
    steps_per_epoch: Optional[int] = option(None, "batches per epoch (>= 1; default: one pass "
                                            "over the training images)", "int")
    batch_size: int = option(32, "training batch size", "int")
    image_size: Optional[int] = option(None, "training/export input size (pixels; default: "
                                       "the model's, 224 for a variant)", "int")
    learning_rate: float = option(1e-5, "Adam learning rate (cosine decay)", "float")
    temperature: float = option(2.0, "distillation temperature", "float")
    label_weight: float = option(0.0, "weight of the label loss (labelled datasets only)",
                                 "float", flag=None)
    calibration_exclude: Optional[Sequence[str]] = option(
        None, "leave out the training image paths matching these globs (a held-out slice, "
        "e.g. '*/tiny-imagenet-202/images/*_2[0-4].JPEG'); convert.py's flag of the same "
        "name does this for calibration images", "list")
    augment: str = option("crop_flip", "training image transform (none: the eval centre "
                          "crop)", "enum", choices=AUGMENTS)
    equalize: bool = option(True, "equalize activation ranges before quantizing (exact float "
                            "rescaling, quantization.equalize_activations)", "bool")
    calibration_steps: int = option(10, "batches to set the activation ranges before QAT (0: "
                                    "TFMOT's [-6, 6])", "int")
    freeze_ranges: bool = option(False, "keep the calibrated activation ranges during QAT",
                                 "bool")
    bias_correction: bool = option(False, "after fine-tuning, correct the biases for the "
                                   "export's int8 weight rounding", "bool")
    mix: str = option("none", "blend training images in pairs before distillation "
                      "(function matching)", "enum", choices=MIXES)
    mix_alpha: float = option(1.0, "MixUp Beta(alpha, alpha) / CutMix strength", "float")
    checkpoint_dir: Optional[str] = option(None, "checkpoint each epoch here and resume",
                                           "string")
    resume: bool = option(True, "resume from checkpoint_dir", "bool", flag=None)
    seed: int = option(0, "shuffling and augmentation seed", "int", flag=None)
    verbose: int = option(1, "Keras fit verbosity", "int", flag=None)

    def validate(self):
        """Returns ``self``; raises ValueError naming the setting (and its flag)
        that cannot work (the schedule first: nothing is read before)."""
        from mobileone_tf.quantization.distillation import check_schedule
        check_schedule(self.epochs, self.steps_per_epoch)
        for name in ("batch_size",) + (("image_size",) if self.image_size is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} (--{name}) must be an integer >= 1; got {value!r}")
        if int(self.calibration_steps) < 0:
            raise ValueError("calibration_steps (--calibration_steps) must be >= 0; got "
                             f"{self.calibration_steps!r}")
        if self.augment not in AUGMENTS + (True, False):
            raise ValueError(f"augment (--augment) must be one of {AUGMENTS}; got "
                             f"{self.augment!r}")
        if self.mix not in MIXES + (None,):
            raise ValueError(f"mix (--mix) must be one of {MIXES}; got {self.mix!r}")
        if isinstance(self.calibration_exclude, str):
            raise ValueError("calibration_exclude (--calibration_exclude) must be a list of "
                             f"globs; got {self.calibration_exclude!r}")
        return self

    def dataset_augment(self):
        """``augment`` as :func:`mobileone_tf.quantization.qat_dataset` takes it."""
        return False if self.augment in ("none", False) else self.augment

    def fine_tune_mix(self):
        """``mix`` as :func:`mobileone_tf.quantization.fine_tune` takes it."""
        return None if self.mix in ("none", None) else self.mix


@mobileone_export("mobileone_tf.quantization")
def qat_options(options=None, **keywords):
    """``options`` (default :class:`QatOptions`) with ``keywords`` replacing
    fields.

    Raises:
        TypeError: a keyword that is no field of :class:`QatOptions`.
    """
    options = QatOptions() if options is None else options
    names = {f.name for f in dataclasses.fields(QatOptions)}
    unknown = sorted(set(keywords) - names)
    if unknown:
        raise TypeError(f"unexpected QAT options {unknown}; QatOptions fields: {sorted(names)}")
    return dataclasses.replace(options, **keywords) if keywords else options
