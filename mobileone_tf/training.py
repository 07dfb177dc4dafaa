"""Training and fine-tuning MobileOne with Keras ``fit`` (the paper's recipe).

Defaults follow the MobileOne paper (Vasu et al., CVPR 2023, Sec. 4) and the
public mmpretrain reproduction (``configs/mobileone/mobileone-s*_8xb32_in1k.py``
over ``_base_/schedules/imagenet_bs256_coslr_coswd_300e.py``):

* SGD, momentum 0.9 (no Nesterov), lr 0.1 per 256 images (scaled linearly
  with the *global* batch size), 5-epoch linear warm-up from 0.001 x lr, then
  cosine decay to 1e-6 (:class:`WarmupCosine`, updated per step; mmpretrain
  steps the cosine per epoch);
* weight decay 1e-4 annealed by a cosine to 1e-5 over the run
  (:class:`CosineWeightDecay`), never on BatchNorm parameters or biases;
* label smoothing 0.1; EMA of the weights, decay 0.9995 (mmpretrain
  ``EMAHook(momentum=5e-4)``), used for validation and for the saved models;
* progressive resizing: random-resized-crop 160 px, 192 from epoch 37, 224
  from epoch 112 of 300 (boundaries scaled with ``epochs``), augmentation
  magnitude rising with it for S1-S4 (S0: none);
* 300 epochs.

Weight decay, Keras vs PyTorch: Keras 3's ``weight_decay=`` is *decoupled*
(``w -= lr * wd * w`` after the update, outside momentum). PyTorch's
``SGD(weight_decay=)`` that the paper used is *coupled* L2 (``g += wd * w``
before momentum), which with momentum 0.9 decays ~10x more at steady state.
This module reproduces the coupled form exactly: :class:`SGDCoupledL2` adds
``wd(step) * w`` to the gradient of every decayed variable inside
``update_step`` (so it goes through momentum like PyTorch), with ``wd(step)``
the cosine-annealed schedule. Keras' own decoupled ``weight_decay`` stays off.

Fine-tuning from fused weights (Apple releases only the fused S0): the
branched train-time model is initialised so that its fused form equals the
given weights (:meth:`MobileOneBlock.load_fused` via
:func:`mobileone_tf.models.assign_state`: the kxk branch 0 carries the fused
kernel with an identity-like BatchNorm, the other branches start at zero
scale). Its output before any step equals the source model's (tested); the
extra branches then learn. ``fused=True`` trains the fused (plain conv) model
instead (faster, no re-parameterization benefit).

Model input: NHWC float32 RGB 0..255; output: softmax probabilities
(``(batch, classes)``); labels int class indices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Optional, Sequence

import numpy as np
import keras
import tensorflow as tf

from mobileone_tf import data as mo_data
from mobileone_tf import fileio
from mobileone_tf import models as mo_models
from mobileone_tf import porting
from mobileone_tf import variants

# Augmentation magnitude (0..1, RandAugment factor) per resizing stage.
# MobileOne uses none for S0 and rising RandAugment-style strength for S1-S4.
DEFAULT_AUGMENT = {"s0": (0.0, 0.0, 0.0), "s1": (0.1, 0.2, 0.3),
                   "s2": (0.2, 0.35, 0.5), "s3": (0.2, 0.35, 0.5),
                   "s4": (0.2, 0.35, 0.5)}


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; defaults = the paper's ImageNet recipe."""

    variant: str = "s0"
    epochs: int = 300
    batch_size: int = 256             # global batch (split across replicas)
    base_lr: float = 0.1              # per 256 images
    lr_reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    warmup_epochs: float = 5.0
    warmup_start_factor: float = 0.001
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    min_weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    ema_decay: float = 0.9995         # 0 disables EMA
    clip_grad_norm: float = 0.0       # global gradient-norm clip (0: off, the paper's recipe)
    image_sizes: Sequence[int] = (160, 192, 224)
    resize_epochs: Sequence[int] = (0, 37, 112)   # of `resize_reference_epochs`
    resize_reference_epochs: int = 300
    augment_magnitudes: Optional[Sequence[float]] = None  # default per variant
    eval_image_size: int = 224
    crop_scale_min: float = 0.08      # random-resized crop area range (min, 1); torchvision default
    # model / fine-tuning
    weights: Optional[str] = None     # None, "imagenet", path, or a state dict
    classes: Optional[int] = None     # None: from the training data
    fused: bool = False               # train the fused (plain conv) model
    freeze_backbone_epochs: int = 0
    # execution
    strategy: str = "default"         # default|mirrored|multi_worker|tpu
    mixed_precision: bool = False
    jit_compile: bool = False
    run_eagerly: bool = False         # Keras' debug switch: no tf.function tracing
    steps_per_epoch: Optional[int] = None   # None: one pass over the data
    validation_steps: Optional[int] = None
    seed: int = 0
    verbose: int = 1

    def resolved_augment(self):
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


# ---------------------------------------------------------------------------
# Schedules and optimizer
# ---------------------------------------------------------------------------
@keras.saving.register_keras_serializable("mobileone_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up then cosine decay, per optimizer step.

    ``lr(s) = base * (f + (1 - f) * s / W)`` for ``s < W``; then
    ``min + (base - min) * (1 + cos(pi * min(1, (s - W) / (T - W)))) / 2``.
    (mmpretrain ``LinearLR(start_factor=f)`` + ``CosineAnnealingLR``.)

    Args:
        base_lr: peak learning rate.
        total_steps: ``T``, steps of the whole run.
        warmup_steps: ``W`` (0: no warm-up).
        warmup_start_factor: ``f``.
        min_lr: final learning rate.
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0,
                 warmup_start_factor=0.001, min_lr=0.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        w = float(max(self.warmup_steps, 1))
        warm = self.base_lr * (self.warmup_start_factor
                               + (1.0 - self.warmup_start_factor) * step / w)
        t = (step - self.warmup_steps) / float(max(self.total_steps - self.warmup_steps, 1))
        t = tf.clip_by_value(t, 0.0, 1.0)
        cos = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + tf.cos(math.pi * t))
        return tf.where(step < self.warmup_steps, warm, cos)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor, "min_lr": self.min_lr}


@keras.saving.register_keras_serializable("mobileone_tf")
class CosineWeightDecay(WarmupCosine):
    """Weight decay annealed by a cosine from ``base`` to ``min`` over
    ``total_steps`` (mmpretrain ``CosineAnnealingParamScheduler`` on
    ``weight_decay``; no warm-up)."""

    def __init__(self, base, total_steps, min_value=0.0, **kwargs):
        super().__init__(base, total_steps, 0, 1.0, min_value)

    def get_config(self):
        return {"base": self.base_lr, "total_steps": self.total_steps,
                "min_value": self.min_lr}


@keras.saving.register_keras_serializable("mobileone_tf")
class SGDCoupledL2(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with PyTorch-style *coupled* L2 weight decay.

    ``g <- g + l2(step) * w`` before the momentum update, for every variable
    not excluded with :meth:`exclude_from_weight_decay` (this module excludes
    BatchNorm parameters and biases). Identical to ``torch.optim.SGD(
    momentum=m, weight_decay=l2, nesterov=False)`` (Keras' momentum form
    ``v = m v - lr g; w += v`` equals PyTorch's for a schedule-constant lr).

    Args:
        l2: float or a callable ``step -> value`` (e.g. :class:`CosineWeightDecay`).
        **kwargs: ``keras.optimizers.SGD`` arguments (``weight_decay``, the
            decoupled form, must stay None).
    """

    def __init__(self, l2=0.0, **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError("SGDCoupledL2 implements L2 itself; leave the "
                             "decoupled `weight_decay` at None.")
        super().__init__(**kwargs)
        self.l2 = l2

    def current_l2(self):
        if callable(self.l2):
            return self.l2(self.iterations)
        return tf.constant(float(self.l2))

    def apply(self, grads, trainable_variables=None):
        # l2(step) is computed once per step (not once per variable) and added
        # to the gradients before the (momentum) update, as torch.optim.SGD does.
        variables = list(self._trainable_variables if trainable_variables is None
                         else trainable_variables)
        grads = list(grads)
        if callable(self.l2) or self.l2:
            l2 = self.current_l2()
            grads = [g if g is None or not self._use_weight_decay(v)
                     else g + keras.ops.cast(l2, g.dtype) * keras.ops.cast(v, g.dtype)
                     for g, v in zip(grads, variables)]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        config = super().get_config()
        config["l2"] = (keras.saving.serialize_keras_object(self.l2)
                        if callable(self.l2) else self.l2)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        l2 = config.pop("l2", 0.0)
        if isinstance(l2, dict):
            l2 = keras.saving.deserialize_keras_object(l2, custom_objects=custom_objects)
        opt = super().from_config(config, custom_objects=custom_objects)
        opt.l2 = l2
        return opt


def no_decay_variables(model):
    """BatchNorm parameters and biases (and any 1-D variable): no weight decay."""
    out = []
    for v in model.trainable_variables:
        path = v.path
        if len(v.shape) <= 1 or "bias" in path or "/bn" in path or "gamma" in path \
                or "beta" in path:
            out.append(v)
    return out


def make_optimizer(config: TrainConfig, steps_per_epoch: int, model=None):
    """The run's optimizer: :class:`SGDCoupledL2` with :class:`WarmupCosine`
    lr (scaled by ``batch_size / lr_reference_batch``), :class:`CosineWeightDecay`
    L2 (excluding BatchNorm/bias when ``model`` is given), optional EMA."""
    total = int(config.epochs * steps_per_epoch)
    lr = WarmupCosine(config.base_lr * config.batch_size / config.lr_reference_batch,
                      total, int(round(config.warmup_epochs * steps_per_epoch)),
                      config.warmup_start_factor, config.min_lr)
    l2 = CosineWeightDecay(config.weight_decay, total, config.min_weight_decay) \
        if config.weight_decay else 0.0
    opt = SGDCoupledL2(l2=l2, learning_rate=lr, momentum=config.momentum,
                       nesterov=config.nesterov, use_ema=config.ema_decay > 0,
                       ema_momentum=config.ema_decay or 0.99,
                       global_clipnorm=config.clip_grad_norm or None)
    if model is not None:
        opt.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return opt


# ---------------------------------------------------------------------------
# Distribution and precision
# ---------------------------------------------------------------------------
def make_strategy(name: str = "default", tpu: str = ""):
    """``tf.distribute`` strategy by name: default|mirrored|multi_worker|tpu."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"Unknown strategy {name!r}: use default, mirrored, "
                     "multi_worker or tpu.")


def set_precision(mixed: bool, strategy_name: str = "default"):
    """``mixed_float16`` on GPU, ``mixed_bfloat16`` on TPU/CPU, else float32."""
    if not mixed:
        policy = "float32"
    elif strategy_name == "tpu" or not tf.config.list_physical_devices("GPU"):
        policy = "mixed_bfloat16"
    else:
        policy = "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


# ---------------------------------------------------------------------------
# Weights for fine-tuning
# ---------------------------------------------------------------------------
def load_source_state(weights, variant):
    """Weights to fine-tune from as a state dict (see :mod:`mobileone_tf.models`).

    Args:
        weights: a state dict, ``"imagenet"``, or a path (``.weights.h5``
            written by :mod:`mobileone_tf.porting`, or a PyTorch checkpoint).

    Raises:
        ValueError / FileNotFoundError: unreadable or missing file.
    """
    if isinstance(weights, dict):
        return weights
    if weights == "imagenet":
        from mobileone_tf import weights as mo_weights
        weights = mo_weights.imagenet_weights_path(variant, fused=True)
    path = str(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--weights: no such file: {path}")
    if path.endswith(".h5"):
        state = porting.read_weights_h5(path)
        if state is None:
            raise ValueError(f"{path} is a plain Keras weights file, not a "
                             "MobileOne state file (write one with porting.write_weights_h5).")
        return state
    return porting.port_checkpoint(path, variant=variant).state


def build_model(config: TrainConfig, classes: int, input_size=None):
    """The model to train (branched unless ``config.fused``), softmax head
    with ``classes`` outputs, initialised from ``config.weights``.

    With source weights whose head has ``classes`` outputs the head is kept;
    otherwise a new head replaces it, initialised to zero (kernel and bias):
    the first loss is log(classes) and the first backbone gradients are zero,
    so a randomly initialised head cannot shock the pretrained features
    (fine-tuning the BatchNorm-free fused S0 on Imagenette, batch 64: a random
    head diverged at step 7 of the warm-up, lr <= 0.012; a zero head without
    ``clip_grad_norm`` still diverged at step 16, lr 0.005; zero head + clip
    1.0 trained).

    Raises:
        ValueError: weights that do not fit the variant (names the keys).
    """
    shape = (input_size, input_size, 3) if input_size else (None, None, 3)
    model = mo_models.MobileOne(config.variant, weights=None, classes=classes,
                                input_shape=shape, fused=config.fused)
    if config.weights is not None:
        state = dict(load_source_state(config.weights, config.variant))
        src_classes = state["head/kernel"].shape[-1] if "head/kernel" in state else None
        if src_classes != classes:
            kernel, bias = model.get_layer(mo_models.HEAD_NAME).get_weights()
            state["head/kernel"], state["head/bias"] = np.zeros_like(kernel), np.zeros_like(bias)
        mo_models.assign_state(model, state)
    return model


# ---------------------------------------------------------------------------
# Data (thin adapter over mobileone_tf.data)
# ---------------------------------------------------------------------------
def folder_classes(data_dir):
    """Sorted class sub-folder names of an ImageFolder directory (index order).

    Raises:
        FileNotFoundError: no such directory.
        ValueError: no class folders, or a class folder with no images.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No such data directory: {data_dir}")
    classes = mo_data.class_names(data_dir)
    if not classes:
        raise ValueError(f"{data_dir} has no class sub-folders (ImageFolder "
                         "layout: DIR/<class>/<image>).")
    empty = [c for c in classes if not any(
        mo_data.is_image_file(f) for _, _, files in os.walk(os.path.join(data_dir, c))
        for f in files)]
    if empty:
        raise ValueError(f"{data_dir}: class folders without images: {empty[:10]}")
    return classes


def _one_hot(classes):
    return lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), classes))


def folder_dataset(data_dir, batch_size, image_size, training, magnitude=0.0,
                   seed=0, crop_pct=0.875, crop_scale_min=0.08, label_offset=0):
    """(images float32 NHWC RGB 0..255, int32 labels) from an ImageFolder dir
    (labels = sorted class-folder index) or TFRecord shards (file / glob;
    labels + ``label_offset``).

    Training: :func:`mobileone_tf.data.train_dataset` (random-resized crop
    of ``crop_scale_min``..1 of the area, flip, ``keras.layers.RandAugment(factor=magnitude)`` when ``magnitude >
    0``, undecodable images skipped). Evaluation:
    :func:`mobileone_tf.data.eval_dataset` (resize short side to
    ``image_size / crop_pct``, centre crop; torchvision-exact).
    """
    if training:
        return mo_data.train_dataset(
            data_dir, batch_size, image_size, seed=seed, scale=(crop_scale_min, 1.0),
            label_offset=label_offset,
            augment="randaugment" if magnitude > 0 else None, magnitude=magnitude)
    if mo_data._is_tfrecord_source(data_dir):
        return mo_data.tfrecord_eval_dataset(data_dir, batch_size, image_size, crop_pct,
                                             label_offset=label_offset)
    return mo_data.eval_dataset(data_dir, batch_size=batch_size, image_size=image_size,
                                crop_pct=crop_pct)


# ---------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------
class Throughput(keras.callbacks.Callback):
    """Training images/s per epoch, logged as ``images_per_sec``: wall clock
    of the train batches after the first one of each epoch (which includes
    tracing the train step), so steady-state speed."""

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._n = None, 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        else:
            self._n += 1
            self._t1 = now

    def on_epoch_end(self, epoch, logs=None):
        if self._n:
            ips = self._n * self.batch_size / max(self._t1 - self._t0, 1e-9)
            self.history.append(ips)
            if logs is not None:
                logs["images_per_sec"] = ips


class FailAt(keras.callbacks.Callback):
    """Raises at a given (epoch, batch): simulates a killed run (tests)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self._epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == self.epoch and batch == self.batch:
            raise RuntimeError(f"FailAt: simulated crash at epoch {self.epoch}, "
                               f"batch {self.batch}")


def _has_tensorboard():
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:  # optional dependency: logs go to log.csv only
        return False


def _backup_epoch(backup_dir):
    path = os.path.join(backup_dir, "training_metadata.json")
    if os.path.exists(path):
        with open(path) as f:
            return int(json.load(f)["epoch"])
    return 0


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
def train(config: TrainConfig, train_fn: Callable, val_ds, classes: int,
          output_dir, steps_per_epoch: int, extra_callbacks=(), strategy=None):
    """Trains per ``config``; returns the summary dict (also ``summary.json``).

    Args:
        train_fn: ``(image_size, magnitude) -> tf.data.Dataset`` of
            ``(float32 (B, S, S, 3) RGB 0..255, int32 (B,))`` global batches.
        val_ds: evaluation dataset, same element format (or None).
        classes: number of classes.
        output_dir: gets ``backup/`` (BackupAndRestore), ``best.weights.h5``,
            ``last.weights.h5``, ``logs/`` (TensorBoard), ``log.csv``,
            ``fused.keras``, ``fused.weights.h5``, ``summary.json``.
        steps_per_epoch: optimizer steps per epoch (for the schedules).

    A rerun with the same ``output_dir`` resumes from the last completed
    epoch (``keras.callbacks.BackupAndRestore``; the backup keeps weights,
    optimizer state, EMA and the step counter).
    """
    os.makedirs(output_dir, exist_ok=True)
    strategy = strategy or make_strategy(config.strategy)
    stages = config.stages()
    backup_dir = os.path.join(output_dir, "backup")
    done = _backup_epoch(backup_dir)
    with strategy.scope():
        model = build_model(config, classes)
        optimizer = make_optimizer(config, steps_per_epoch, model)
        optimizer.build(model.trainable_variables)
    metrics = ["accuracy"] if classes <= 5 else [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.TopKCategoricalAccuracy(5, name="top5")]
    if val_ds is not None:
        val_ds = val_ds.map(_one_hot(classes))

    thr = Throughput(config.batch_size)
    nan_guard = _TerminateOnNaN()
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
                 nan_guard]
    if config.ema_decay > 0:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    monitor = "val_accuracy" if val_ds is not None else "accuracy"
    callbacks += [
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "best.weights.h5"),
                                        monitor=monitor, mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.ModelCheckpoint(os.path.join(output_dir, "last.weights.h5"),
                                        save_weights_only=True),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "log.csv"), append=True),
        thr, *extra_callbacks]
    if _has_tensorboard():
        callbacks.insert(-1 - len(extra_callbacks), keras.callbacks.TensorBoard(
            os.path.join(output_dir, "logs"), write_graph=False, profile_batch=0))

    # Segments: resizing stages split further at the backbone unfreeze epoch.
    bounds = sorted({0, config.epochs, *[s for s, *_ in stages],
                     *([config.freeze_backbone_epochs]
                       if 0 < config.freeze_backbone_epochs < config.epochs else [])})
    t_start = time.perf_counter()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= done:
            continue
        size, mag = next((s, m) for (s0, e0, s, m) in stages if s0 <= a < e0)
        frozen = a < config.freeze_backbone_epochs
        for layer in model.layers:
            if layer.name not in (mo_models.HEAD_NAME, "avg_pool") and layer.weights:
                layer.trainable = not frozen
        with strategy.scope():
            model.compile(optimizer=optimizer,
                          loss=keras.losses.CategoricalCrossentropy(
                              label_smoothing=config.label_smoothing),
                          metrics=metrics, jit_compile=config.jit_compile,
                          run_eagerly=config.run_eagerly)
        ds = train_fn(size, mag).map(_one_hot(classes))
        model._initial_epoch = None
        model.fit(ds, validation_data=val_ds, epochs=b, initial_epoch=max(a, done),
                  steps_per_epoch=config.steps_per_epoch,
                  validation_steps=config.validation_steps,
                  callbacks=callbacks, verbose=config.verbose)
        if nan_guard.diverged_at is not None:
            epoch, batch = nan_guard.diverged_at
            raise FloatingPointError(
                f"Training diverged (loss NaN/inf) at epoch {epoch}, batch {batch}; "
                "nothing was fused or written beyond the checkpoints of completed epochs. "
                "Lower --base_lr, lengthen --warmup_epochs or set --clip_grad_norm "
                "(fine-tuning the BatchNorm-free fused model needs all three smaller/longer "
                "than the from-scratch recipe).")
        if model.stop_training:
            break
    for layer in model.layers:
        layer.trainable = True
    # fit() leaves the EMA weights in the model (optimizer.finalize_variable_values).
    elapsed = time.perf_counter() - t_start
    return finish(model, config, output_dir, val_ds, thr.history, elapsed,
                  backup_dir)


class _TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN`` that remembers where it stopped, so the run can fail
    instead of fusing and writing a broken model."""

    def __init__(self):
        super().__init__()
        self.diverged_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super().on_batch_end(batch, logs)
        if self.model.stop_training and self.diverged_at is None:
            loss = (logs or {}).get("loss")
            if loss is not None and not np.isfinite(float(loss)):
                self.diverged_at = (self._epoch, batch)


def finish(model, config, output_dir, val_ds, ips, elapsed, backup_dir=None):
    """Fuses the trained (EMA) model, writes ``fused.keras``,
    ``fused.weights.h5`` and ``summary.json`` (atomically), returns the summary."""
    best = None
    log = os.path.join(output_dir, "log.csv")
    epochs_done = 0
    if os.path.exists(log):
        import csv
        with open(log) as f:
            rows = list(csv.DictReader(f))
        epochs_done = len(rows)
        key = "val_accuracy" if rows and "val_accuracy" in rows[0] else "accuracy"
        vals = [float(r[key]) for r in rows if r.get(key)]
        best = max(vals) if vals else None
    final_top1 = None
    if val_ds is not None:
        res = model.evaluate(val_ds, steps=config.validation_steps, verbose=0,
                             return_dict=True)
        final_top1 = float(res["accuracy"])
    fused = mo_models.fuse(model) if mo_models.model_form(model) == "branched" else model
    tmp = os.path.join(output_dir, "tmp_fused.keras")
    fused.save(tmp)
    os.replace(tmp, os.path.join(output_dir, "fused.keras"))
    # MobileOne state file (records variant and form): loads into either form,
    # e.g. ``scripts/convert.py --weights fused.weights.h5 --classes N``.
    porting.write_weights_h5(mo_models.get_state(fused),
                             os.path.join(output_dir, "fused.weights.h5"),
                             config.variant, "fused", source="mobileone_tf.training")
    summary = {"variant": config.variant, "epochs": epochs_done,
               "best_val_top1": best, "final_val_top1": final_top1,
               "train_images_per_sec": float(np.mean(ips)) if ips else None,
               "wall_time_s": elapsed, "config": _jsonable(config)}
    fileio.write_json(summary, os.path.join(output_dir, "summary.json"))
    if backup_dir and os.path.isdir(backup_dir) and not model.stop_training:
        shutil.rmtree(backup_dir)
    summary["model"], summary["fused_model"] = model, fused
    return summary


def _jsonable(config):
    d = dataclasses.asdict(config)
    if not isinstance(d.get("weights"), (str, type(None))):
        d["weights"] = "<state dict>"
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def check_data(train_dir, val_dir=None, classes=None):
    """Validates an ImageFolder train/val pair before anything is built.

    Returns the class names. Raises ValueError / FileNotFoundError for an
    empty folder, different class sets in train and val, or ``classes`` that
    does not match the number of class folders.
    """
    names = folder_classes(train_dir)
    if val_dir is not None:
        val = folder_classes(val_dir)
        if val != names:
            raise ValueError(
                f"Train and val class folders differ: only in train "
                f"{sorted(set(names) - set(val))[:10]}, only in val "
                f"{sorted(set(val) - set(names))[:10]}")
    if classes is not None and classes != len(names):
        raise ValueError(f"--classes={classes} but {train_dir} has {len(names)} "
                         "class folders.")
    return names


def check_weights(config: TrainConfig, classes: int):
    """Loads the source weights and checks they fit before training.

    A head of a different size is replaced only when ``config.classes`` was
    given explicitly; otherwise that mismatch is an error.
    """
    if config.weights is None:
        return None
    state = load_source_state(config.weights, config.variant)
    if "head/kernel" in state:
        n = state["head/kernel"].shape[-1]
        if n != classes and config.classes is None:
            raise ValueError(
                f"The weights' head has {n} classes but the data has {classes}; "
                f"pass --classes {classes} to replace the head.")
    return state


def run(config: TrainConfig, train_dir, val_dir, output_dir, extra_callbacks=(),
        label_offset=0):
    """Command-line entry: ImageFolder dirs or TFRecord shards -> :func:`train`.

    ``train_dir``/``val_dir``: an ImageFolder directory (class sub-folders),
    or a TFRecord file / glob pattern (ImageNet-style ``image/encoded``,
    ``image/class/label`` records, labels shifted by ``label_offset``; then
    ``config.classes`` is required, and without ``config.steps_per_epoch``
    the records are counted once).
    """
    tfrecord = mo_data._is_tfrecord_source(train_dir)
    if val_dir and mo_data._is_tfrecord_source(val_dir):
        mo_data._tfrecord_files(val_dir)  # FileNotFoundError before building
    if tfrecord:
        if not config.classes:
            raise ValueError("--classes is required with TFRecord training data.")
        files = mo_data._tfrecord_files(train_dir)  # FileNotFoundError before building
        names = [str(i) for i in range(config.classes)]
    else:
        names = check_data(train_dir, val_dir if val_dir and os.path.isdir(val_dir) else None,
                           config.classes)
    classes = len(names)
    state = check_weights(config, classes)
    if state is not None:
        config = dataclasses.replace(config, weights=state)
    set_precision(config.mixed_precision, config.strategy)
    strategy = make_strategy(config.strategy)
    if config.steps_per_epoch:
        steps = config.steps_per_epoch
    else:
        n_train = mo_data.count_records(files) if tfrecord else sum(
            mo_data.is_image_file(f) for c in names
            for _, _, fs in os.walk(os.path.join(train_dir, c)) for f in fs)
        steps = max(n_train // config.batch_size, 1)

    def train_fn(size, mag):
        return folder_dataset(train_dir, config.batch_size, size, True, mag, config.seed,
                              crop_scale_min=config.crop_scale_min, label_offset=label_offset)
    val_ds = folder_dataset(val_dir, config.batch_size, config.eval_image_size, False,
                            label_offset=label_offset) if val_dir else None
    summary = train(config, train_fn, val_ds, classes, output_dir, steps,
                    extra_callbacks, strategy)
    summary["class_names"] = names
    return summary


# ---------------------------------------------------------------------------
# Throughput helper (for scripts/benchmark.py --mode train)
# ---------------------------------------------------------------------------
def train_step_throughput(variant="s0", batch_size=32, image_size=224, steps=10,
                          warmup=2, fused=False, jit_compile=False, classes=1000,
                          seed=0):
    """Training images/s of ``model.train_on_batch`` on random data.

    Branched (train-time) model with this module's optimizer (SGD + L2 +
    EMA) and label-smoothed cross-entropy. Times ``steps`` steps after
    ``warmup`` untimed ones (tracing). Returns a dict with ``images_per_sec``
    and ``ms_per_step``.
    """
    cfg = TrainConfig(variant=variant, batch_size=batch_size, epochs=1,
                      fused=fused, jit_compile=jit_compile)
    model = mo_models.MobileOne(variant, weights=None, classes=classes,
                                input_shape=(image_size, image_size, 3), fused=fused)
    model.compile(optimizer=make_optimizer(cfg, 100, model),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  jit_compile=jit_compile)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, batch_size)]
    for _ in range(warmup):
        model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    dt = time.perf_counter() - t0
    return {"images_per_sec": steps * batch_size / dt, "ms_per_step": 1000 * dt / steps,
            "variant": variant, "batch_size": batch_size, "image_size": image_size,
            "fused": fused, "jit_compile": jit_compile}
