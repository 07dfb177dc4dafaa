"""KerasHub preset names for Apple's checkpoints.

``MobileOneBackbone.from_preset("mobileone_s0_imagenet")``,
``MobileOneImageClassifier.from_preset(...)`` and
``keras_hub.models.ImageClassifier.from_preset("mobileone_s0_imagenet")``
work by name once :mod:`mobileone_tf.hub` is imported: every name of the
preset table (:data:`mobileone_tf.weights.presets.PRESETS`) is registered
with KerasHub for :class:`MobileOneBackbone` (so ``MobileOneBackbone.presets``
and ``MobileOneImageClassifier.presets`` list them).

How KerasHub 0.32 resolves a name: ``from_preset(preset)`` reads every file
through ``preset_utils.get_file(preset, file)``, which replaces a name found in
its registry by ``registry[name]["kaggle_handle"]`` and reads a handle that is
an existing local directory as a preset folder. Here that lookup
(:class:`PresetMetadata`) builds the folder once, in the Keras cache, and
returns its path:

``$KERAS_HOME/models/mobileone_tf/presets/<name>/`` (``~/.keras/...``), a
:func:`mobileone_tf.hub.make_preset` folder (``config.json``,
``model.weights.h5``, ``task.json``, ``task.weights.h5``,
``preprocessor.json``, ``image_converter.json``: a
``MobileOneImageClassifier``, 1000 ImageNet logits) made from the ported
checkpoint of exactly that preset
(:func:`mobileone_tf.weights.preset_weights_path`: Keras cache, then the
folder named by ``$MOBILEONE_TF_CHECKPOINTS`` holding Apple's file names,
then a download). ``mobileone_sN_imagenet`` is the fused (inference) form,
``mobileone_sN_unfused_imagenet`` the branched (training-time) form. Later
calls check the folder (:func:`mobileone_tf.hub.check_preset`, the variant
and form of its ``config.json``) and read it offline; an unusable folder is
deleted (a line on stderr) and built again.

KerasHub has no public way to register names (``keras_hub.utils`` offers
none; ``register_presets`` lives in ``keras_hub.src.utils.preset_utils`` and
is what KerasHub's own model packages call, e.g. ``models/resnet``). This
module is the one place in the package that imports it (checked by
``tests/test_repo.py``); :func:`register_named_presets` is called by ``import
mobileone_tf.hub``.
"""

from __future__ import annotations

import os
import shutil
import sys

import h5py

from mobileone_tf import weights as mo_weights
from mobileone_tf.hub.backbone import MobileOneBackbone
from mobileone_tf.hub.preset_files import CONFIG, MODEL_WEIGHTS, TASK_WEIGHTS, check_preset
from mobileone_tf.hub.presets import make_preset
from mobileone_tf.weights import download
from mobileone_tf.api_export import mobileone_export

PRESET_SUBDIR = os.path.join(download.CACHE_SUBDIR, "presets")
"""The preset folders' place in the Keras cache."""
HANDLE = "kaggle_handle"
"""The metadata key KerasHub reads to resolve a registered name."""


@mobileone_export("mobileone_tf.hub")
def preset_dir(name) -> str:
    """The cache folder of preset ``name`` (not built; ValueError for an
    unknown name, listing the known ones)."""
    return os.path.join(download.keras_cache_dir(), PRESET_SUBDIR,
                        mo_weights.get_preset(name).name)


def _problem(folder, preset):
    """Why the cached folder cannot be used, or None."""
    try:
        found = check_preset(folder)
    except (OSError, ValueError) as e:
        return " ".join(str(e).split())[:300]
    if found["task"] is None:
        return "no task.json (the classifier)"
    for name in (MODEL_WEIGHTS, TASK_WEIGHTS):  # a truncated HDF5 file does not open
        try:
            h5py.File(os.path.join(folder, name), "r").close()
        except OSError as e:
            return f"{name}: {' '.join(str(e).split())[:200]}"
    config = found["config"]["config"]
    if (config.get("variant"), config.get("fused")) != (preset.variant, preset.form == "fused"):
        return (f"{CONFIG} holds variant {config.get('variant')!r} fused={config.get('fused')!r}, "
                f"not {preset.variant} {preset.form}")
    return None


@mobileone_export("mobileone_tf.hub")
def ensure_preset(name) -> str:
    """The local KerasHub preset folder of ``name``, built on first use.

    Args:
        name: a preset name (``"mobileone_s0_imagenet"`` ...).

    Returns:
        The folder path (see the module docstring), ready for
        ``from_preset``.

    Raises:
        ValueError: unknown name (the known ones listed); a mirrored file
            with the wrong sha256 or that does not port; an unusable cached
            folder that cannot be deleted.
        FileNotFoundError: the checkpoint is not cached, not in the mirror
            folder and cannot be downloaded (the message names the URL, the
            file and the folder to put it in).
    """
    preset = mo_weights.get_preset(name)
    folder = preset_dir(preset.name)
    if os.path.isdir(folder):
        problem = _problem(folder, preset)
        if problem is None:
            return folder
        try:
            shutil.rmtree(folder)
        except OSError as e:
            raise ValueError(f"the cached preset folder {folder} is unusable ({problem}) and "
                             f"could not be deleted ({e}): delete it; it is a cache") from e
        print(f"warning: the cached preset folder {folder} was unusable ({problem}); deleted "
              "it (a cache), building it again", file=sys.stderr, flush=True)
    checkpoint = mo_weights.preset_weights_path(preset.name)
    return make_preset(checkpoint, folder, variant=preset.variant,
                       fused=preset.form == "fused", overwrite=True)


class PresetMetadata(dict):
    """KerasHub registry metadata of one preset: a dict with ``"metadata"``
    (description, licence, source URL, published top-1); reading its
    ``"kaggle_handle"`` (what KerasHub does to resolve the name) builds the
    folder with :func:`ensure_preset` and returns its path. The key is not
    stored (``.get("kaggle_handle")`` is None): nothing is built by listing
    or printing presets."""

    def __init__(self, name):
        preset = mo_weights.get_preset(name)
        super().__init__(metadata={
            "description": preset.description, "official_name": "MobileOne",
            "path": "mobileone", "model_card": "https://github.com/apple/ml-mobileone",
            "license": preset.license, "source": preset.url, "top1": preset.top1})
        self.name = preset.name

    def __missing__(self, key):
        """The folder of :func:`ensure_preset` for ``"kaggle_handle"``.

        Raises:
            KeyError: any other key.
            ValueError: as :func:`ensure_preset`, and for a checkpoint that
                cannot be had (its FileNotFoundError message): KerasHub
                reads a FileNotFoundError here as "this file is not in the
                preset" and would answer "Preset ... has no config.json".
        """
        if key != HANDLE:
            raise KeyError(key)
        try:
            return ensure_preset(self.name)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e


def register_named_presets():
    """Registers every preset name with KerasHub for
    :class:`MobileOneBackbone` (idempotent)."""
    from keras_hub.src.utils.preset_utils import register_presets
    register_presets({name: PresetMetadata(name) for name in mo_weights.PRESETS},
                     MobileOneBackbone)
