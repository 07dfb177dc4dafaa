"""Learning-rate and weight-decay schedules and the run's optimizer.

Weight decay, Keras vs PyTorch: Keras 3's ``weight_decay=`` is *decoupled*
(``w -= lr * wd * w`` after the update, outside momentum). PyTorch's
``SGD(weight_decay=)`` that the paper used is *coupled* L2 (``g += wd * w``
before momentum), which with momentum 0.9 decays ~10x more at steady state.
:class:`SGDCoupledL2` reproduces the coupled form exactly: it adds
``wd(step) * w`` to the gradient of every decayed variable before the
momentum update (so it goes through momentum like PyTorch), with ``wd(step)``
the cosine-annealed :class:`CosineWeightDecay`. Keras' own decoupled
``weight_decay`` stays off.
"""

import math

import keras
from keras import ops

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training.config import TrainConfig


@mobileone_export("mobileone_tf.training")
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

    Returns (when called with a step): a float32 scalar tensor.
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0,
                 warmup_start_factor=0.001, min_lr=0.0):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr = float(min_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        w = float(max(self.warmup_steps, 1))
        warm = self.base_lr * (self.warmup_start_factor
                               + (1.0 - self.warmup_start_factor) * step / w)
        t = (step - self.warmup_steps) / float(max(self.total_steps - self.warmup_steps, 1))
        t = ops.clip(t, 0.0, 1.0)
        cos = self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * t))
        return ops.where(step < self.warmup_steps, warm, cos)

    def get_config(self):
        return {"base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor, "min_lr": self.min_lr}


@mobileone_export("mobileone_tf.training")
@keras.saving.register_keras_serializable("mobileone_tf")
class CosineWeightDecay(WarmupCosine):
    """Weight decay annealed by a cosine from ``base`` to ``min_value`` over
    ``total_steps`` (mmpretrain ``CosineAnnealingParamScheduler`` on
    ``weight_decay``; no warm-up)."""

    def __init__(self, base, total_steps, min_value=0.0, **kwargs):
        super().__init__(base, total_steps, 0, 1.0, min_value)

    def get_config(self):
        return {"base": self.base_lr, "total_steps": self.total_steps,
                "min_value": self.min_lr}


@mobileone_export("mobileone_tf.training")
@keras.saving.register_keras_serializable("mobileone_tf")
class SGDCoupledL2(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with PyTorch-style *coupled* L2 weight decay.

    ``g <- g + l2(step) * w`` before the momentum update, for every variable
    not excluded with ``exclude_from_weight_decay`` (:func:`make_optimizer`
    excludes BatchNorm parameters and biases). Identical to
    ``torch.optim.SGD(momentum=m, weight_decay=l2, nesterov=False)`` (Keras'
    momentum form ``v = m v - lr g; w += v`` equals PyTorch's for a
    schedule-constant lr).

    Args:
        l2: float or a callable ``step -> value`` (e.g. :class:`CosineWeightDecay`).
        **kwargs: ``keras.optimizers.SGD`` arguments.

    Raises:
        ValueError: ``weight_decay`` (Keras' decoupled form) is set.
    """

    def __init__(self, l2=0.0, **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError("SGDCoupledL2 implements L2 itself; leave the "
                             "decoupled `weight_decay` at None.")
        super().__init__(**kwargs)
        self.l2 = l2

    def current_l2(self):
        """``l2`` at the current step (a float32 scalar tensor)."""
        if callable(self.l2):
            return self.l2(self.iterations)
        return ops.convert_to_tensor(float(self.l2), "float32")

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


@mobileone_export("mobileone_tf.training")
def make_optimizer(config: TrainConfig, steps_per_epoch: int, model=None):
    """The run's optimizer: :class:`SGDCoupledL2` with :class:`WarmupCosine`
    lr (scaled by ``batch_size / lr_reference_batch``), :class:`CosineWeightDecay`
    L2 (excluding BatchNorm/bias when ``model`` is given), optional EMA
    (``config.ema_decay > 0``) and global gradient-norm clipping."""
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
