"""mobileone_tf's own ``.weights.h5`` layout: write, read, and port a
checkpoint into one.

Layout: one float32 dataset per flat state key (the key is the h5 path, e.g.
``stage1_0/conv_kxk/0/bn/gamma``); root attributes ``format``
(:data:`H5_FORMAT`), ``variant``, ``form`` (``"fused"``/``"branched"``),
``classes`` (-1 without a head) and ``source`` (free text, e.g. the
checkpoint name). Files are written with
:func:`mobileone_tf.fileio.atomic_write`: umask permissions, never a partial
file. No TensorFlow or Keras import.
"""

from __future__ import annotations

import io
import os

import numpy as np

from mobileone_tf import fileio, variants
from mobileone_tf.api_export import mobileone_export
from mobileone_tf.weights.layouts import PortResult, check_state, port_checkpoint

mobileone_export("mobileone_tf.weights")("H5_FORMAT")
H5_FORMAT = "mobileone_tf.weights/1"
SUFFIX = ".weights.h5"


@mobileone_export("mobileone_tf.weights")
def write_weights_h5(state: dict, path, variant, form: str, source: str = "",
                     overwrite: bool = False) -> str:
    """Writes a state to ``path`` in mobileone_tf's h5 layout (module doc).

    Args:
        state: flat ``{key: array}`` state of ``variant`` in ``form``.
        path: output file.
        variant: ``"s0"`` ... ``"s4"``.
        form: ``"fused"`` or ``"branched"``.
        source: free text stored in the ``source`` attribute.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        ValueError: unknown variant or form, or a state not of that form.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import h5py

    v = variants.get_variant(variant).name
    classes = check_state(state, v, form)
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["format"] = H5_FORMAT
        f.attrs["variant"] = v
        f.attrs["form"] = form
        f.attrs["classes"] = -1 if classes is None else classes
        f.attrs["source"] = str(source)
        for key in sorted(state):
            f.create_dataset(key, data=np.asarray(state[key], np.float32))
    return fileio.atomic_write(path, buffer.getvalue(), overwrite=overwrite)


@mobileone_export("mobileone_tf.weights")
def read_weights_h5(path, with_attrs: bool = False):
    """Reads a file written by :func:`write_weights_h5`.

    Returns:
        The flat state dict (float32 arrays), or ``None`` for any other h5
        file (e.g. a plain Keras ``.weights.h5``). With ``with_attrs=True``:
        ``(state, attrs)`` (``(None, {})`` for other files).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such weights file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not an HDF5 weights file ({e})") from e
    with f:
        if f.attrs.get("format") != H5_FORMAT:
            return (None, {}) if with_attrs else None
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        state = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                state[name] = obj[()]
        f.visititems(visit)
    return (state, attrs) if with_attrs else state


@mobileone_export("mobileone_tf.weights")
def port_to_h5(checkpoint, output, variant=None, overwrite: bool = False) -> PortResult:
    """Ports a PyTorch checkpoint (:func:`port_checkpoint`) into ``output``.

    The output is checked before the checkpoint is read, and written only
    when everything succeeded (atomically).

    Args:
        checkpoint: Apple, timm or mmpretrain checkpoint (any form).
        output: a path ending in ``.weights.h5``.
        variant: expected variant; ``None`` detects it.
        overwrite: replace an existing ``output``.

    Returns:
        The :class:`PortResult` that was written.

    Raises:
        ValueError: ``output`` does not end in ``.weights.h5``; the
            checkpoint is unreadable (``CheckpointError``) or not a MobileOne
            of that variant.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        IsADirectoryError: ``output`` is a folder.
        FileNotFoundError: no such checkpoint.
    """
    output = os.fspath(output)
    if not output.endswith(SUFFIX):
        raise ValueError(f"output {output} must end with {SUFFIX}")
    if os.path.isdir(output):
        raise IsADirectoryError(f"output {output} is a folder")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite (overwrite=True) to replace it")
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"output {output}: {folder} is not a folder")
    result = port_checkpoint(checkpoint, variant=variant)
    write_weights_h5(result.state, output, result.variant, result.form,
                     source=os.path.basename(os.fspath(checkpoint)), overwrite=overwrite)
    return result
