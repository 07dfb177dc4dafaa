"""The model to train, and the weights it starts from.

Fine-tuning from fused weights (Apple releases only the fused S0): the
branched train-time model is initialised so that its fused form equals the
given weights (``MobileOneBlock.load_fused`` via
:func:`mobileone_tf.models.assign_state`: the kxk branch 0 carries the fused
kernel with an identity-like BatchNorm, the other branches start at zero
scale). Its output before any step equals the source model's (tested); the
extra branches then learn. ``fused=True`` trains the fused (plain conv) model
instead (faster, no re-parameterization benefit).

Model input: NHWC float32 RGB 0..255; output: softmax probabilities
``(batch, classes)`` (float32 also under a mixed-precision policy).
"""


import keras
import numpy as np

from mobileone_tf import layers as mo_layers
from mobileone_tf import models as mo_models
from mobileone_tf import state_keys as sk
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.training.config import TrainConfig


def source_state(weights, variant) -> dict:
    """Weights to fine-tune from as a flat state dict (see
    :func:`mobileone_tf.models.get_state`).

    Args:
        weights: a state dict, ``"imagenet"`` (Apple's fused release, see
            :func:`mobileone_tf.weights.imagenet_weights_path`), or a path: a
            MobileOne ``.weights.h5`` (:func:`mobileone_tf.weights.write_weights_h5`,
            e.g. a previous run's ``fused.weights.h5``) or a PyTorch
            checkpoint (Apple, timm or mmpretrain layout).
        variant: ``"s0"`` ... ``"s4"``: the variant being trained.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, a plain Keras weights file, or weights
            of another variant (named).
    """
    if isinstance(weights, dict):
        return weights
    from mobileone_tf import models
    if weights == "imagenet":
        from mobileone_tf import weights as mo_weights
        weights = mo_weights.imagenet_weights_path(variant, fused=True)
    try:
        state, _ = models.read_state(weights, variant=variant)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--weights: {e}") from None
    if state is None:
        raise ValueError(f"--weights {weights} is a plain Keras weights file, not a MobileOne "
                         "state file (written by port_weights.py or a training run)")
    return state


def check_weights(config: TrainConfig, classes: int):
    """Loads the source weights and checks they fit before training.

    Returns:
        the state dict, or None without ``config.weights``.

    Raises:
        ValueError: the weights' head has another class count than the data
            and ``config.classes`` was not given explicitly (a head of a
            different size is replaced only on request); see also
            :func:`source_state`.
    """
    if config.weights is None:
        return None
    state = source_state(config.weights, config.variant)
    if sk.HEAD_KERNEL in state:
        n = state[sk.HEAD_KERNEL].shape[-1]
        if n != classes and config.classes is None:
            raise ValueError(
                f"The weights' head has {n} classes but the data has {classes}; "
                f"pass --classes {classes} to replace the head.")
    return state


@mobileone_export("mobileone_tf.training")
def build_model(config: TrainConfig, classes: int, input_size=None):
    """The model to train (branched unless ``config.fused``), softmax head
    with ``classes`` outputs, initialised from ``config.weights``; its
    blocks' BatchNorm synchronized across replicas with
    ``config.sync_batchnorm`` (:func:`synchronize_batchnorm`).

    With source weights whose head has ``classes`` outputs the head is kept;
    otherwise a new head replaces it, initialised to zero (kernel and bias):
    the first loss is log(classes) and the first backbone gradients are zero,
    so a randomly initialised head cannot shock the pretrained features.

    Args:
        input_size: fixed square input size (px), or None for any size.

    Raises:
        ValueError: weights that do not fit the variant (names the keys).
    """
    shape = (input_size, input_size, 3) if input_size else (None, None, 3)
    model = mo_models.MobileOne(config.variant, weights=None, classes=classes,
                                input_shape=shape, fused=config.fused)
    if config.weights is not None:
        state = dict(source_state(config.weights, config.variant))
        src_classes = state[sk.HEAD_KERNEL].shape[-1] if sk.HEAD_KERNEL in state else None
        if src_classes != classes:
            kernel, bias = model.get_layer(mo_models.HEAD_NAME).get_weights()
            state[sk.HEAD_KERNEL], state[sk.HEAD_BIAS] = (np.zeros_like(kernel),
                                                          np.zeros_like(bias))
        mo_models.assign_state(model, state)
    return synchronize_batchnorm(model) if config.sync_batchnorm else model


def synchronize_batchnorm(model):
    """A copy of ``model`` whose :class:`~mobileone_tf.layers.MobileOneBlock`
    layers use synchronized BatchNorm (``synchronized_bn=True``: batch
    statistics over the global batch of all replicas, Keras
    ``BatchNormalization(synchronized=True)``), same weights; other layers
    are cloned unchanged, the recorded MobileOne configuration is kept.
    Call it inside the strategy's scope. A model without branched blocks
    (e.g. ``fused=True``) comes back as it is.

    Raises:
        ValueError: ``model`` is not a functional or Sequential Keras model.
    """
    if not _has_blocks(model):
        return model

    def clone_function(layer):
        if isinstance(layer, keras.Model) and _has_blocks(layer):
            return synchronize_batchnorm(layer)
        config = layer.get_config()
        if isinstance(layer, mo_layers.MobileOneBlock):
            config["synchronized_bn"] = True
        return layer.__class__.from_config(config)

    synced = keras.models.clone_model(model, clone_function=clone_function)
    synced.set_weights(model.get_weights())
    recorded = getattr(model, "mobileone_config", None)
    if recorded:
        synced.mobileone_config = dict(recorded)
    return synced


def _has_blocks(model):
    return any(isinstance(layer, mo_layers.MobileOneBlock)
               for layer in mo_models.all_layers(model))
