"""``weights="imagenet"``: find, verify, port and cache Apple's released weights.

Apple publishes (ml-mobileone README) two PyTorch checkpoints per variant at
``https://docs-assets.developer.apple.com/ml-research/datasets/mobileone/``:
``mobileone_sN.pth.tar`` (fused, inference form) and
``mobileone_sN_unfused.pth.tar`` (branched, training-time form).
The preset table (:data:`mobileone_tf.weights.presets.PRESETS`, also
``checkpoints/manifest.json``) lists them.

:func:`imagenet_weights_path` resolves, in this order, for each candidate
checkpoint (a branched model prefers the unfused checkpoint, a fused model
the fused one; either can serve the other form; :func:`preset_weights_path`
resolves exactly one preset's file):

1. the Keras cache: ``$KERAS_HOME/models/mobileone_tf/<name>.weights.h5``,
   ported by an earlier call (:func:`mobileone_tf.weights.download.keras_cache_dir`);
2. a local mirror folder named by the environment variable
   ``MOBILEONE_TF_CHECKPOINTS`` holding files under Apple's names (their
   sha256 is checked where known: :func:`mobileone_tf.weights.presets.sha256_for`,
   the table's or one the user supplies in ``$MOBILEONE_TF_SHA256``);
3. a download with ``keras.utils.get_file``.

The checkpoint is ported once (:func:`mobileone_tf.weights.port_checkpoint`)
and the ``.weights.h5`` cached atomically with umask permissions. A cached
port is read in full and checked (variant, form, every tensor's shape)
before it is used; an unusable one (truncated, damaged, another model) is a
cache, so it is deleted, with a line on stderr naming it, and ported again
from the mirror or a download (the error, when neither is available, says
so). A downloaded checkpoint in the cache that does not port is deleted too. A fused
checkpoint loaded into a branched model is an exact-output *initialisation*
(fused kernel in the first branch, see
:func:`mobileone_tf.layers.branched_state_from_fused`), not Apple's
training-time weights. No TensorFlow import (Keras only for a download).
"""

from __future__ import annotations

import os
import sys

from mobileone_tf import variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.weights import download
from mobileone_tf.weights.h5 import read_weights_h5, write_weights_h5
from mobileone_tf.weights.layouts import check_state, port_checkpoint
from mobileone_tf.weights.presets import find_preset, get_preset, sha256_for

def _candidates(variant, fused):
    order = ("fused", "branched") if fused else ("branched", "fused")
    return [find_preset(variant, form) for form in order]


def _ported_name(entry) -> str:
    return entry.file[: -len(".pth.tar")] + ".weights.h5"


def _port_to_cache(entry, checkpoint) -> str:
    result = port_checkpoint(checkpoint, variant=entry.variant)
    if result.form != entry.form:
        raise ValueError(f"{checkpoint}: expected the {entry.form} form, found "
                         f"{result.form}")
    out = os.path.join(download.cache_dir(), _ported_name(entry))
    return write_weights_h5(result.state, out, entry.variant, result.form,
                            source=entry.url, overwrite=True)


def cache_problem(path, entry) -> str | None:
    """Why the cached port ``path`` of checkpoint ``entry`` (a
    :class:`mobileone_tf.weights.presets.Preset`) cannot be used, or ``None`` when it is a
    complete ImageNet state of that variant and form (read in full)."""
    try:
        state, attrs = read_weights_h5(path, with_attrs=True)
        if state is None:
            return "not a mobileone_tf .weights.h5"
        if (attrs.get("variant"), attrs.get("form")) != (entry.variant, entry.form):
            return (f"holds {attrs.get('variant')} {attrs.get('form')}, not "
                    f"{entry.variant} {entry.form}")
        classes = check_state(state, entry.variant, entry.form)
        if classes != 1000:
            return f"has {classes} classes, not ImageNet's 1000"
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return "truncated or damaged"
    return None


def _discard(path, problem, what="cached port") -> str:
    """Deletes the unusable cache file ``path`` (a line on stderr); returns
    the note for a later error.

    Raises:
        ValueError: it cannot be deleted (the message says to delete it).
    """
    try:
        os.remove(path)
    except FileNotFoundError:  # another process deleted it first
        pass
    except OSError as e:
        raise ValueError(f"the {what} {path} is unusable ({problem}) and could not be deleted "
                         f"({e.strerror or e}): delete it; it is a cache, made again from "
                         "Apple's checkpoint on the next use") from e
    print(f"warning: the {what} {path} was unusable ({problem}); deleted it (a cache)"
          + (", porting Apple's checkpoint again" if what == "cached port" else ""),
          file=sys.stderr, flush=True)
    return f"The {what} {path} was unusable ({problem}) and has been deleted (a cache)"


@mobileone_export("mobileone_tf.weights")
def imagenet_weights_path(variant, fused: bool = False) -> str:
    """Path of the ported ImageNet ``.weights.h5`` for a variant (see module doc).

    Args:
        variant: ``"s0"`` ... ``"s4"``.
        fused: whether the model that will load it is the fused form (prefers
            the fused checkpoint) or the branched form (prefers unfused).

    Returns:
        Path of a ``.weights.h5`` written by
        :func:`mobileone_tf.weights.write_weights_h5` in the Keras cache.

    Raises:
        FileNotFoundError: nothing (usable) cached, nothing in the mirror,
            and the download failed (the message names the URL, the file
            name and the folder to put it in, and a deleted unusable cache
            file).
        ValueError: a mirrored file with the wrong sha256, or that does not
            port; a downloaded checkpoint that does not port (deleted); an
            unusable cache file that cannot be deleted (named).
    """
    v = variants.get_variant(variant).name
    return _resolve(_candidates(v, fused), f"ImageNet weights for MobileOne-{v.upper()}")


@mobileone_export("mobileone_tf.weights")
def preset_weights_path(name) -> str:
    """Path of the ported ``.weights.h5`` of exactly one preset's checkpoint
    (no fallback to the other form), resolved as :func:`imagenet_weights_path`
    does (cache, ``$MOBILEONE_TF_CHECKPOINTS``, download).

    Args:
        name: a preset name of :data:`mobileone_tf.weights.presets.PRESETS`
            (``"mobileone_s0_imagenet"``, ``"mobileone_s0_unfused_imagenet"``...).

    Raises:
        ValueError: an unknown name (the known ones listed), and as
            :func:`imagenet_weights_path`.
        FileNotFoundError: as :func:`imagenet_weights_path`.
    """
    preset = get_preset(name)
    return _resolve([preset], f"The weights of preset {preset.name}")


def _resolve(entries, what) -> str:
    """Cache -> mirror -> download for the checkpoints ``entries`` (in order)."""
    cache = download.cache_dir()
    notes = []
    for entry in entries:  # 1. Keras cache (checked; an unusable port is deleted)
        path = os.path.join(cache, _ported_name(entry))
        if os.path.isfile(path):
            problem = cache_problem(path, entry)
            if problem is None:
                return path
            notes.append(_discard(path, problem))
    for entry in entries:  # 2. local mirror (sha256-checked)
        src = download.mirror_file(entry.file, sha256_for(entry), entry.url)
        if src:
            return _port_to_cache(entry, src)
    errors = []
    for entry in entries:  # 3. download
        try:
            src = download.download_file(entry.file, entry.url, sha256_for(entry))
        except Exception as e:  # offline, HTTP error, hash mismatch
            errors.append(f"{entry.url}: {e}")
            continue
        try:
            return _port_to_cache(entry, src)
        except ValueError as e:  # a damaged download reused from the cache
            note = _discard(src, " ".join(str(e).split())[:300], "downloaded checkpoint")
            raise ValueError(f"{note}: run again to download it afresh") from e
    first = entries[0]
    raise FileNotFoundError(
        "".join(f"{note}. " for note in notes)
        + f"{what}: download {first.url}"
        + (f" (or {entries[1].url})" if len(entries) > 1 else "")
        + f" and put it, under that name, in the folder named by ${download.ENV_MIRROR} "
        f"(currently {download.mirror_dir() or 'unset'}), or pass weights=PATH to the file. "
        f"Not cached, and the download failed: {'; '.join(errors)}.")
