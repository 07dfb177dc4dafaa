"""KerasHub presets (``save_to_preset`` directories) from MobileOne checkpoints.

A preset directory holds ``config.json`` + ``model.weights.h5`` (the
:class:`MobileOneBackbone`), and for a checkpoint with a classifier
``task.json`` + ``task.weights.h5`` (:class:`MobileOneImageClassifier`),
``preprocessor.json`` and ``image_converter.json``. Load it offline with
:func:`load_preset` (the directory checked first by
:func:`mobileone_tf.hub.preset_files.check_preset`, then handed to
KerasHub's ``from_preset``): KerasHub's own
``keras_hub.models.ImageClassifier.from_preset(DIR)`` loads a task whose
``task.weights.h5`` is missing with a random head, silently.
"""

from __future__ import annotations

import os

from mobileone_tf import fileio
from mobileone_tf import models as mo_models
from mobileone_tf import state_keys as sk
from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.hub.backbone import MobileOneBackbone
from mobileone_tf.hub.preset_files import CONFIG, TASK, check_preset
from mobileone_tf.hub.tasks import (MobileOneImageClassifier,
                                    MobileOneImageClassifierPreprocessor,
                                    MobileOneImageConverter, load_classifier_weights)
from mobileone_tf.weights.presets import preset_name


@mobileone_export("mobileone_tf.hub")
def make_preset(checkpoint, output_dir, *, variant=None, fused=False, overwrite=False):
    """Writes a KerasHub preset directory from a MobileOne checkpoint.

    Args:
        checkpoint: a ``.weights.h5`` written by this package (e.g. a ported
            ImageNet checkpoint, :func:`mobileone_tf.weights.imagenet_weights_path`)
            or a PyTorch checkpoint (Apple, timm or mmpretrain layout, either
            form).
        output_dir: the preset directory to write (written in a staging folder
            beside it, then moved into place: never half-written).
        variant: expected variant (``None``: the one the checkpoint holds).
        fused: save the fused (deploy) form instead of the branched one.
        overwrite: replace an existing ``output_dir``.

    Returns:
        ``output_dir``. With a classifier in the checkpoint the preset is a
        ``MobileOneImageClassifier`` (logits, ``num_classes`` from the head,
        converter 224x224 with ImageNet normalization); otherwise a backbone.

    Raises:
        FileExistsError: ``output_dir`` exists and not ``overwrite``.
        FileNotFoundError, ValueError: an unreadable checkpoint or one of
            another variant (named).
    """
    output_dir = os.fspath(output_dir)
    if os.path.lexists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists (pass overwrite=True to replace it)")
    found = mo_models.read_state_file(checkpoint, variant=variant)
    state = found.state
    if state is None:
        raise ValueError(f"{checkpoint}: not a MobileOne checkpoint")
    if variant is None and found.variant is None:
        raise ValueError(f"cannot tell the variant of {checkpoint} (it holds "
                         f"{found.description}): pass variant=")
    backbone = MobileOneBackbone(variants.get_variant(variant or found.variant).name,
                                 fused=fused)
    model = backbone
    if sk.HEAD_KERNEL in state:
        model = MobileOneImageClassifier(
            backbone=backbone, num_classes=int(state[sk.HEAD_KERNEL].shape[-1]),
            preprocessor=MobileOneImageClassifierPreprocessor(MobileOneImageConverter()))
        load_classifier_weights(model, checkpoint)
    else:
        mo_models.assign_state(backbone, state)
    with fileio.atomic_dir(output_dir, overwrite=overwrite) as staged:
        model.save_to_preset(staged)
    return output_dir


@mobileone_export("mobileone_tf.hub")
def make_presets(output_root, checkpoints=None, *, fused=False, overwrite=False):
    """Presets ``{output_root}/NAME`` for S0-S4, named as the preset table
    (:func:`mobileone_tf.weights.presets.preset_name`): fused
    ``mobileone_{variant}_imagenet``, branched
    ``mobileone_{variant}_unfused_imagenet``.

    Args:
        checkpoints: ``{variant: checkpoint path}``; default: the ported
            ImageNet weights of every variant
            (:func:`mobileone_tf.weights.imagenet_weights_path`, which
            downloads or reads the Keras cache / ``$MOBILEONE_TF_CHECKPOINTS``).

    Returns:
        ``{variant: preset directory}``.
    """
    if checkpoints is None:
        from mobileone_tf import weights as mo_weights
        checkpoints = {v: mo_weights.imagenet_weights_path(v, fused=fused)
                       for v in variants.VARIANTS}
    form = "fused" if fused else "branched"
    return {v: make_preset(path, os.path.join(os.fspath(output_root), preset_name(v, form)),
                           variant=v, fused=fused, overwrite=overwrite)
            for v, path in checkpoints.items()}


@mobileone_export("mobileone_tf.hub")
def load_preset(preset, *, backbone_only=False, **kwargs):
    """Loads a local KerasHub preset directory, checked first.

    :func:`mobileone_tf.hub.preset_files.check_preset` validates the
    directory (required files present, JSON parseable, weights files named
    by plain names inside it) before anything is built; then KerasHub's
    ``from_preset`` of the class ``task.json`` (or, for a backbone preset or
    ``backbone_only``, ``config.json``) names loads it.

    Args:
        preset: preset directory (e.g. from :func:`make_preset`).
        backbone_only: load only the backbone (``config.json`` +
            ``model.weights.h5``) of a task preset, without its head.
        **kwargs: passed to ``from_preset`` (e.g. ``dtype``).

    Returns:
        The task (e.g. a :class:`MobileOneImageClassifier`: logits of images
        ``(B, H, W, 3)`` float32 RGB 0..255) when the preset has ``task.json``
        and not ``backbone_only``; otherwise the backbone (e.g. a
        :class:`MobileOneBackbone`).

    Raises:
        FileNotFoundError: not a directory, or a required file missing
            (``config.json``, ``model.weights.h5``, ``task.weights.h5`` of a
            task preset: named).
        ValueError: a damaged or tampered file (named, with the key), or a
            class that is not registered with Keras or not a KerasHub
            ``Task`` / ``Backbone``.
    """
    import keras
    import keras_hub
    preset = os.fspath(preset)
    found = check_preset(preset, backbone_only=backbone_only)
    config, base = (found["config"], keras_hub.models.Backbone) if found["task"] is None \
        else (found["task"], keras_hub.models.Task)
    name = TASK if found["task"] is not None else CONFIG
    cls = keras.saving.get_registered_object(config["registered_name"])
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{os.path.join(preset, name)}: registered_name "
                         f"{config['registered_name'][:80]!r} is not a registered KerasHub "
                         f"{base.__name__} (import the package that defines it)")
    return cls.from_preset(preset, **kwargs)
