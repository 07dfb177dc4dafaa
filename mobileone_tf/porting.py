"""PyTorch MobileOne checkpoints -> mobileone_tf weight state, and the
``.weights.h5`` file format that records which form it holds.

Supported key layouts (detected from the keys; the variant from the shapes):

* ``apple``: Apple's ml-mobileone ``mobileone.py``; unfused
  (``stage0.rbr_conv.0.conv.weight``, ``rbr_conv.{i}.bn.*``, ``rbr_scale``,
  ``rbr_skip``, ``se.reduce/expand``) or fused (``stage0.reparam_conv.*``);
  classifier ``linear.*``.
* ``timm``: timm ``byobnet`` ``mobileone_s*``; unfused
  (``stem.conv_kxk.0.conv.weight``, ``stages.{s}.{j}.conv_scale``,
  ``identity``, ``attn.fc1/fc2``) or re-parameterized (``reparam_conv``);
  classifier ``head.fc.*``.
* ``mmpretrain``: ``backbone.stage0.branch_conv_list.{i}.conv/norm``,
  ``branch_scale``, ``branch_norm``, ``se.conv1.conv/conv2.conv``, deployed
  ``branch_reparam``; classifier ``head.fc.*``.

Checkpoints are read without unpickling arbitrary objects: with PyTorch
installed through ``torch.load(..., weights_only=True)``; without it, torch's
zip format is read by a restricted unpickler that only rebuilds tensors (the
same allow-list idea as ``weights_only``). ``.safetensors`` files are read by
``safetensors``. Layout transposes: conv OIHW -> HWIO (2, 3, 1, 0), depthwise
(C, 1, k, k) -> (k, k, C, 1) (2, 3, 0, 1), linear (out, in) -> (in, out).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import tempfile
import zipfile

import numpy as np

from mobileone_tf import variants

FORMAT = "mobileone_tf.weights/1"
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
       "moving_variance": "running_var"}

# our relative key prefix -> per-layout module path (inside a block)
_LAYOUTS = {
    "apple": dict(conv_kxk="rbr_conv.{i}.conv", bn_kxk="rbr_conv.{i}.bn",
                  conv_scale="rbr_scale.conv", bn_scale="rbr_scale.bn",
                  identity="rbr_skip", reparam="reparam_conv",
                  se_reduce="se.reduce", se_expand="se.expand", head="linear"),
    "timm": dict(conv_kxk="conv_kxk.{i}.conv", bn_kxk="conv_kxk.{i}.bn",
                 conv_scale="conv_scale.conv", bn_scale="conv_scale.bn",
                 identity="identity", reparam="reparam_conv",
                 se_reduce="attn.fc1", se_expand="attn.fc2", head="head.fc"),
    "mmpretrain": dict(conv_kxk="branch_conv_list.{i}.conv",
                       bn_kxk="branch_conv_list.{i}.norm",
                       conv_scale="branch_scale.conv", bn_scale="branch_scale.norm",
                       identity="branch_norm", reparam="branch_reparam",
                       se_reduce="se.conv1.conv", se_expand="se.conv2.conv",
                       head="head.fc"),
}


@dataclasses.dataclass
class PortResult:
    """A ported checkpoint.

    Attributes:
        state: flat weight state (see :mod:`mobileone_tf.models`), float32.
        variant: ``"s0"`` ... ``"s4"``.
        form: ``"fused"`` or ``"branched"``.
        layout: ``"apple"``, ``"timm"`` or ``"mmpretrain"``.
        classes: classifier size, or ``None`` for a headless checkpoint.
    """

    state: dict
    variant: str
    form: str
    layout: str
    classes: int | None


def block_prefix(layout: str, block: str) -> str:
    """Source module path of one of our blocks (``stem``, ``stage1_0``...)."""
    if layout == "timm":
        if block == "stem":
            return "stem"
        stage, j = block[len("stage"):].split("_")
        return f"stages.{int(stage) - 1}.{j}"
    name = "stage0" if block == "stem" else block.replace("_", ".")
    return f"backbone.{name}" if layout == "mmpretrain" else name


# ---------------------------------------------------------------------------
# Reading checkpoints safely
# ---------------------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
    size = tuple(int(s) for s in size)
    if not size:
        return np.array(storage[offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(int(s) * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors of torch's zip format as numpy arrays; refuses every
    other global (no code from the file is ever run)."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only tensors, dicts and "
            "numbers may appear in a weights checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype.newbyteorder("<"))


def _read_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ValueError(f"{path}: a zip file without data.pkl is not a PyTorch checkpoint")
        prefix = pkl[0][: -len("/data.pkl")] if "/" in pkl[0] else ""
        byteorder = f"{prefix}/byteorder" if prefix else "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with archive.open(pkl[0]) as f:
            return _RestrictedUnpickler(f, archive, prefix).load()


def read_checkpoint(path, use_torch=None) -> dict:
    """Reads a PyTorch state dict as ``{key: np.ndarray}`` without running code.

    Args:
        path: ``.pth``, ``.pth.tar``, ``.pt``, ``.bin`` (torch.save) or
            ``.safetensors``.
        use_torch: ``True`` to require ``torch.load(weights_only=True)``,
            ``False`` for the built-in restricted reader (zip format only),
            ``None`` for torch when importable.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, refused content, or no tensors in it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            raw = load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a readable .safetensors file: {e}") from e
    else:
        if use_torch is None:
            try:
                import torch  # noqa: F401
                use_torch = True
            except ImportError:
                use_torch = False
        if use_torch:
            import torch
            try:
                raw = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{path} is not a PyTorch checkpoint that loads with "
                                 f"weights_only=True: {e}") from e
        else:
            if not zipfile.is_zipfile(path):
                raise ValueError(f"{path} is not a PyTorch zip checkpoint (legacy "
                                 "pickle checkpoints need torch installed)")
            try:
                raw = _read_torch_zip(path)
            except (pickle.UnpicklingError, KeyError, EOFError) as e:
                raise ValueError(f"{path}: {e}") from e
    return _flatten_state_dict(raw, path)


def _flatten_state_dict(raw, path):
    if isinstance(raw, dict):
        for key in ("state_dict", "model", "model_ema", "module"):
            if key in raw and isinstance(raw[key], dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path} holds no state dict of tensors")
    out = {}
    for key, value in raw.items():
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            continue
        if key.startswith("module."):
            key = key[len("module."):]
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = value
    if not out:
        raise ValueError(f"{path} holds no tensors")
    return out


# ---------------------------------------------------------------------------
# Layout, form and variant detection
# ---------------------------------------------------------------------------
def detect_layout(keys) -> tuple:
    """``(layout, form)`` from the state-dict keys.

    Raises:
        ValueError: when no known MobileOne layout matches.
    """
    keys = set(keys)
    probes = [
        ("apple", "fused", "stage0.reparam_conv.weight"),
        ("apple", "branched", "stage0.rbr_conv.0.conv.weight"),
        ("timm", "fused", "stem.reparam_conv.weight"),
        ("timm", "branched", "stem.conv_kxk.0.conv.weight"),
        ("mmpretrain", "fused", "backbone.stage0.branch_reparam.weight"),
        ("mmpretrain", "branched", "backbone.stage0.branch_conv_list.0.conv.weight"),
    ]
    for layout, form, key in probes:
        if key in keys:
            return layout, form
    raise ValueError(
        "Not a MobileOne checkpoint: none of the known stem keys "
        f"({', '.join(p[2] for p in probes)}) is present. First keys: {sorted(keys)[:8]}")


def detect_variant(raw: dict, layout: str, form: str) -> str:
    """The variant whose stage widths match the checkpoint's shapes.

    Raises:
        ValueError: if no variant matches (names the widths found).
    """
    conv = _LAYOUTS[layout]["reparam" if form == "fused" else "conv_kxk"].format(i=0)
    widths = []
    for block in ("stem", "stage1_3", "stage2_15", "stage3_19", "stage4_1"):
        key = f"{block_prefix(layout, block)}.{conv}.weight"
        if key not in raw:
            raise ValueError(f"Cannot detect the MobileOne variant: missing {key}")
        widths.append(int(raw[key].shape[0]))
    for name in variants.VARIANTS:
        v = variants.VARIANTS[name]
        if widths == [v.stem_width, *v.stage_widths]:
            return name
    raise ValueError(f"No MobileOne variant has stem/stage widths {widths}")


# ---------------------------------------------------------------------------
# Mapping
# ---------------------------------------------------------------------------
def _expected(spec, form, layout):
    """[(our relative key, source key, keras shape, transpose)] for one block."""
    names = _LAYOUTS[layout]
    src = block_prefix(layout, spec.name)
    k, cin, cout = spec.kernel_size, spec.in_channels, spec.filters

    def kshape(size):
        return (size, size, cin, 1) if spec.depthwise else (size, size, cin, cout)
    conv_t = (2, 3, 0, 1) if spec.depthwise else (2, 3, 1, 0)
    rows = []

    def bn(ours, theirs, channels):
        for kk, tk in _BN.items():
            rows.append((f"{ours}/{kk}", f"{src}.{theirs}.{tk}", (channels,), None))

    if form == "fused":
        rows.append(("reparam/kernel", f"{src}.{names['reparam']}.weight", kshape(k), conv_t))
        rows.append(("reparam/bias", f"{src}.{names['reparam']}.bias", (cout,), None))
    else:
        for i in range(spec.num_conv_branches):
            rows.append((f"conv_kxk/{i}/kernel",
                         f"{src}.{names['conv_kxk'].format(i=i)}.weight", kshape(k), conv_t))
            bn(f"conv_kxk/{i}/bn", names["bn_kxk"].format(i=i), cout)
        if spec.has_scale:
            rows.append(("conv_scale/kernel", f"{src}.{names['conv_scale']}.weight",
                         kshape(1), conv_t))
            bn("conv_scale/bn", names["bn_scale"], cout)
        if spec.has_identity:
            bn("identity", names["identity"], cin)
    if spec.use_se:
        rd = variants.se_channels(cout)
        for ours, theirs, shape in (("reduce", "se_reduce", (1, 1, cout, rd)),
                                    ("expand", "se_expand", (1, 1, rd, cout))):
            rows.append((f"se/{ours}/kernel", f"{src}.{names[theirs]}.weight", shape,
                         (2, 3, 1, 0)))
            rows.append((f"se/{ours}/bias", f"{src}.{names[theirs]}.bias", (shape[-1],), None))
    return rows


def convert_state_dict(raw: dict, variant=None, source: str = "checkpoint") -> PortResult:
    """Maps a PyTorch MobileOne state dict (numpy arrays) to our state.

    Args:
        raw: ``{key: np.ndarray}`` (see :func:`read_checkpoint`).
        variant: expected variant; detected from shapes when ``None``.
        source: what to call the input in error messages.

    Raises:
        ValueError: unknown layout; variant mismatch; missing or unexpected
            keys or wrong shapes (each listed by name and shape).
    """
    layout, form = detect_layout(raw)
    detected = detect_variant(raw, layout, form)
    if variant is not None and variants.get_variant(variant).name != detected:
        raise ValueError(f"{source} holds MobileOne-{detected.upper()} weights "
                         f"({layout} layout, {form}), not "
                         f"{variants.get_variant(variant).name.upper()}")
    state, missing, bad, used = {}, [], [], set()
    for spec in variants.block_specs(detected):
        for ours, theirs, shape, transpose in _expected(spec, form, layout):
            if theirs not in raw:
                missing.append(theirs)
                continue
            used.add(theirs)
            value = np.asarray(raw[theirs])
            if transpose is not None:
                if value.ndim != 4:
                    bad.append(f"{theirs}: {tuple(value.shape)} (expected 4-D)")
                    continue
                value = value.transpose(transpose)
            if tuple(value.shape) != shape:
                bad.append(f"{theirs}: got {tuple(np.shape(raw[theirs]))}, "
                           f"expected (Keras layout) {shape}")
                continue
            state[f"{spec.name}/{ours}"] = value.astype(np.float32)
    head = _LAYOUTS[layout]["head"]
    classes = None
    if f"{head}.weight" in raw:
        w, b = np.asarray(raw[f"{head}.weight"]), raw.get(f"{head}.bias")
        features = variants.get_variant(detected).num_features
        used.update({f"{head}.weight", f"{head}.bias"})
        if b is None:
            missing.append(f"{head}.bias")
        elif w.ndim != 2 or w.shape[1] != features or np.shape(b) != (w.shape[0],):
            bad.append(f"{head}.weight/bias: got {tuple(w.shape)}/{tuple(np.shape(b))}, "
                       f"expected (classes, {features})/(classes,)")
        else:
            classes = int(w.shape[0])
            state["head/kernel"] = w.T.astype(np.float32)
            state["head/bias"] = np.asarray(b, np.float32)
    unexpected = sorted(set(raw) - used)
    if missing or unexpected or bad:
        raise ValueError(
            f"{source} does not match MobileOne-{detected.upper()} ({layout} layout, {form}):"
            + (f"\n  missing keys: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
               if missing else "")
            + (f"\n  unexpected keys: {unexpected[:20]}"
               f"{' ...' if len(unexpected) > 20 else ''}" if unexpected else "")
            + (f"\n  wrong shapes: {bad[:20]}" if bad else ""))
    return PortResult(state, detected, form, layout, classes)


def port_checkpoint(path, variant=None, use_torch=None) -> PortResult:
    """Reads and maps a PyTorch checkpoint (see the module docstring).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint` and
        :func:`convert_state_dict`.
    """
    return convert_state_dict(read_checkpoint(path, use_torch=use_torch), variant,
                              source=os.fspath(path))


# ---------------------------------------------------------------------------
# .weights.h5 with provenance
# ---------------------------------------------------------------------------
def write_weights_h5(state: dict, path, variant: str, form: str, source: str = "",
                     overwrite: bool = False) -> str:
    """Writes a state to ``path`` (HDF5: one dataset per state key; root
    attributes ``format``, ``variant``, ``form``, ``classes``, ``source``).

    The file is written to a temporary name in the same folder and renamed,
    so a failure never leaves a partial file.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError: unknown variant/form.
    """
    import h5py
    path = os.fspath(path)
    variant = variants.get_variant(variant).name
    if form not in ("fused", "branched"):
        raise ValueError(f"form must be 'fused' or 'branched', got {form!r}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["variant"] = variant
            f.attrs["form"] = form
            f.attrs["classes"] = int(state["head/kernel"].shape[1]) if "head/kernel" in state else 0
            f.attrs["source"] = str(source)
            for key, value in state.items():
                f.create_dataset(key, data=np.asarray(value))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_weights_h5(path):
    """Reads a file written by :func:`write_weights_h5`.

    Returns:
        ``(state, attrs)``, or ``None`` for an HDF5 file without our
        ``format`` attribute (e.g. Keras' own ``save_weights`` output).

    Raises:
        ValueError: not an HDF5 file.
    """
    import h5py
    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not an HDF5 weights file: {e}") from e
    with f:
        if f.attrs.get("format") != FORMAT:
            return None
        state = {}
        f.visititems(lambda name, obj: state.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return state, attrs
