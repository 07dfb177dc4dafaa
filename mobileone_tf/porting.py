"""Port PyTorch MobileOne checkpoints to the flat Keras weight state.

Supported key layouts (detected from the keys; the variant is then detected
from the tensor shapes, see :func:`port_checkpoint`):

* ``apple``: Apple's ml-mobileone ``MobileOne`` (``mobileone.py``), unfused
  (``stage0.rbr_conv.0.conv.weight``, ``stage1.0.rbr_conv.{i}.bn.*``,
  ``rbr_scale.conv/bn``, ``rbr_skip.*``, ``se.reduce/expand``, ``linear.*``)
  and fused (``stage0.reparam_conv.weight/bias``, ...);
* ``timm``: timm's ``mobileone_s0..s4`` (``byobnet.MobileOneBlock``),
  unfused (``stem.conv_kxk.0.conv.weight``, ``stages.0.0.conv_scale.*``,
  ``identity.*``, ``attn.fc1/fc2`` squeeze-excite, ``head.fc.*``) and
  re-parameterized (``stem.reparam_conv.*``, ``stages.0.0.reparam_conv.*``);
* ``mmpretrain``: mmpretrain's ``MobileOne`` backbone + ``LinearClsHead``
  (``backbone.stage0.branch_conv_list.0.conv.weight``, ``...norm.*``,
  ``branch_scale``, ``branch_norm``, ``se.conv1/conv2.conv.*``, deployed
  ``branch_reparam``, ``head.fc.*``).

Blocks map by position: Apple/mmpretrain ``stage0`` and timm ``stem`` are our
``stem``; Apple ``stage{i}.{j}`` and timm ``stages.{i-1}.{j}`` are our
``stage{i}_{j}`` (:func:`mobileone_tf.variants.block_specs`). Kernels are
transposed to Keras layouts: conv OIHW -> HWIO, depthwise ``(C, 1, k, k)`` ->
``(k, k, C, 1)``, linear ``(out, in)`` -> ``(in, out)``.

Reading is safe: never a full unpickle. PyTorch zip checkpoints
(``torch.save`` since 1.6, Apple's release) are read by a restricted
unpickler that accepts only tensor/storage rebuilding and ``OrderedDict``
(:func:`read_torch_zip`, no torch needed); legacy non-zip files go through
``torch.load(..., weights_only=True)``; ``.safetensors`` through
``safetensors.numpy``.

The ported weights are stored in a ``.weights.h5`` of our own documented
layout (:func:`write_weights_h5`).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import re
import tempfile
import zipfile

import numpy as np

from mobileone_tf import variants

H5_FORMAT = "mobileone_tf.weights/1"
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".safetensors", ".tar", ".ckpt")
LAYOUTS = ("apple", "timm", "mmpretrain")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_BN_TORCH = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}


# ---------------------------------------------------------------------------
# Safe checkpoint reading
# ---------------------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str


@dataclasses.dataclass
class _Storage:
    array: np.ndarray  # 1-D, the whole storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise ValueError("refusing to unpickle: tensor without a file storage")
    base = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return base[storage_offset].copy()
    extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if min(size) > 0 and extent > base.size:
        raise ValueError("corrupt checkpoint: tensor extends past its storage")
    itemsize = base.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base[storage_offset:], shape=size, strides=[s * itemsize for s in stride],
        writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` of a torch zip checkpoint: allowlisted globals
    only; storages come from the zip entries ``data/{key}``."""

    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._zf, self._prefix = zf, prefix
        self._order = "<" if byteorder == "little" else ">"
        self._storages = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise ValueError(f"refusing to unpickle {module}.{name}: only tensors, "
                         "storages and OrderedDict are allowed in a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ValueError(f"refusing to unpickle persistent id {pid!r}")
        _, stype, key, _location, numel = pid
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}data/{key}")
            dtype = _STORAGE_DTYPES[stype.name]
            if dtype == "bfloat16":
                u16 = np.frombuffer(raw, self._order + "u2").astype(np.uint32) << 16
                arr = u16.view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder(self._order))
                arr = arr.astype(np.dtype(dtype).newbyteorder("="))
            if arr.size < int(numel):
                raise ValueError(f"corrupt checkpoint: storage {key} has {arr.size} "
                                 f"elements, expected {numel}")
            self._storages[key] = _Storage(arr)
        return self._storages[key]


def read_torch_zip(path) -> object:
    """Reads a ``torch.save`` zip checkpoint without torch (restricted unpickle).

    Args:
        path: a PyTorch >= 1.6 checkpoint (a zip holding ``*/data.pkl`` and
            ``*/data/{storage}``).

    Returns:
        The pickled object with every tensor as a numpy array (dtype and
        layout as saved; bfloat16 is widened to float32).

    Raises:
        ValueError: not a torch zip checkpoint, or it references anything
            but tensors/storages/``OrderedDict`` ("refusing to unpickle ...").
    """
    path = str(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a PyTorch zip checkpoint")
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")
                and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint "
                             "(no unique '<name>/data.pkl')")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in zf.namelist():
            byteorder = zf.read(f"{prefix}byteorder").decode().strip()
        data = zf.read(pkls[0])
        try:
            return _RestrictedUnpickler(io.BytesIO(data), zf, prefix, byteorder).load()
        except ValueError:
            raise
        except Exception as e:  # malformed pickle
            raise ValueError(f"{path}: cannot read the checkpoint pickle ({e})") from e


def read_torch(path) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``, tensors as numpy.

    Raises:
        ImportError: torch is not installed.
        ValueError: the file cannot be read as a weights-only checkpoint.
    """
    import torch  # lazily: optional dependency

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint "
                         f"(torch.load weights_only=True: {e})") from e

    def convert(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.dtype == torch.bfloat16:
                x = x.float()
            return x.numpy()
        if isinstance(x, dict):
            return type(x)((k, convert(v)) for k, v in x.items()) \
                if isinstance(x, collections.OrderedDict) else {k: convert(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v) for v in x)
        return x
    return convert(obj)


def read_checkpoint(path, reader: str = "auto") -> dict:
    """Reads a checkpoint file into a flat ``{torch key: np.ndarray}`` dict.

    Wrappers ``{"state_dict": ...}``, ``{"model": ...}``, ``{"model_ema": ...}``
    (also ``state_dict_ema``) and ``module.`` prefixes are removed;
    ``num_batches_tracked`` buffers are dropped.

    Args:
        path: ``.pth``, ``.pth.tar``, ``.pt``, ``.bin`` (torch) or ``.safetensors``.
        reader: ``"auto"`` (safetensors by suffix; torch zip files with the
            torch-free restricted reader, so no torch import into a
            TensorFlow process; legacy non-zip torch files with torch),
            ``"zip"`` or ``"torch"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint / no tensors.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            obj = load_file(path)
        except Exception as e:
            raise ValueError(f"{path} is not a readable .safetensors file ({e})") from e
    elif reader == "torch":
        obj = read_torch(path)
    elif reader == "zip" or zipfile.is_zipfile(path):
        obj = read_torch_zip(path)
    elif reader == "auto":
        try:
            obj = read_torch(path)
        except ImportError:
            raise ValueError(
                f"{path} is not a PyTorch zip checkpoint; reading legacy (pre-1.6) "
                "torch files needs torch: pip install 'mobileone_tf[torch]'") from None
    else:
        raise ValueError(f"reader must be 'auto', 'zip' or 'torch'; got {reader!r}")
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, where="checkpoint") -> dict:
    """Removes training wrappers and ``module.`` prefixes (see :func:`read_checkpoint`)."""
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS
                          if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a state dict (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            continue
        key = str(key)
        while key.startswith("module."):
            key = key[len("module."):]
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = value
    if not state:
        raise ValueError(f"{where} holds no tensors (keys: {sorted(map(str, obj))[:8]})")
    return state


# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------
def detect_layout(keys) -> str:
    """``"apple"``, ``"timm"`` or ``"mmpretrain"`` from the key names.

    Raises:
        ValueError: none of them (the message lists some keys).
    """
    keys = list(keys)
    if any(k.startswith("backbone.stage0.") or ".branch_conv_list." in k
           or ".branch_reparam." in k for k in keys):
        return "mmpretrain"
    if any(k.startswith("stem.") for k in keys) and any(k.startswith("stages.") for k in keys):
        return "timm"
    if any(k.startswith("stage0.") for k in keys):
        return "apple"
    raise ValueError("Not a MobileOne checkpoint: expected Apple (stage0.*), timm "
                     "(stem.*, stages.*) or mmpretrain (backbone.stage0.*) keys; "
                     f"first keys: {sorted(keys)[:8]}")


_BN = r"(weight|bias|running_mean|running_var)"
# (regex on the key inside a block, template for our key); groups: \1.. as named
_BLOCK_RULES = {
    "apple": [
        (rf"rbr_conv\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"rbr_conv\.(\d+)\.bn\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"rbr_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"rbr_scale\.bn\.{_BN}", "conv_scale/bn/{0}"),
        (rf"rbr_skip\.{_BN}", "identity/{0}"),
        (r"reparam_conv\.(weight|bias)", "reparam/{0}"),
        (r"se\.reduce\.(weight|bias)", "se/reduce/{0}"),
        (r"se\.expand\.(weight|bias)", "se/expand/{0}"),
    ],
    "timm": [
        (rf"conv_kxk\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"conv_kxk\.(\d+)\.bn\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"conv_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"conv_scale\.bn\.{_BN}", "conv_scale/bn/{0}"),
        (rf"identity\.{_BN}", "identity/{0}"),
        (r"reparam_conv\.(weight|bias)", "reparam/{0}"),
        (r"attn\.fc1\.(weight|bias)", "se/reduce/{0}"),
        (r"attn\.fc2\.(weight|bias)", "se/expand/{0}"),
    ],
    "mmpretrain": [
        (rf"branch_conv_list\.(\d+)\.conv\.weight", "conv_kxk/{0}/kernel"),
        (rf"branch_conv_list\.(\d+)\.norm\.{_BN}", "conv_kxk/{0}/bn/{1}"),
        (r"branch_scale\.conv\.weight", "conv_scale/kernel"),
        (rf"branch_scale\.norm\.{_BN}", "conv_scale/bn/{0}"),
        (rf"branch_norm\.{_BN}", "identity/{0}"),
        (r"branch_reparam\.(weight|bias)", "reparam/{0}"),
        (r"se\.conv1\.conv\.(weight|bias)", "se/reduce/{0}"),
        (r"se\.conv2\.conv\.(weight|bias)", "se/expand/{0}"),
    ],
}
_BLOCK_PREFIX = {
    "apple": (r"stage0\.", r"stage(\d)\.(\d+)\.", r"linear\.(weight|bias)"),
    "mmpretrain": (r"backbone\.stage0\.", r"backbone\.stage(\d)\.(\d+)\.",
                   r"head\.fc\.(weight|bias)"),
    "timm": (r"stem\.", r"stages\.(\d)\.(\d+)\.", r"head\.fc\.(weight|bias)"),
}
_COMPILED = {
    layout: [(re.compile(rx + r"$"), tpl) for rx, tpl in rules]
    for layout, rules in _BLOCK_RULES.items()
}


def _our_key(key: str, layout: str):
    """Our flat key for a torch key, or None if the key is not recognised."""
    stem_rx, stage_rx, head_rx = _BLOCK_PREFIX[layout]
    m = re.match(head_rx + "$", key)
    if m:
        return "head/" + ("kernel" if m.group(1) == "weight" else "bias")
    m = re.match(stem_rx, key)
    if m:
        block = "stem"
    else:
        m = re.match(stage_rx, key)
        if not m:
            return None
        stage = int(m.group(1)) + (1 if layout == "timm" else 0)
        block = f"stage{stage}_{int(m.group(2))}"
    rest = key[m.end():]
    for rx, tpl in _COMPILED[layout]:
        mm = rx.match(rest)
        if mm:
            groups = list(mm.groups())
            if tpl.startswith(("reparam/", "se/")):
                groups = ["kernel" if g == "weight" else g for g in groups]
            else:  # BatchNorm parameter names
                groups = [_BN_TORCH.get(g, g) for g in groups]
            return f"{block}/{tpl.format(*groups)}"
    return None


def _to_keras(key: str, value: np.ndarray, depthwise_blocks) -> np.ndarray:
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
        value = value.astype(np.float32)
    if key == "head/kernel":
        return value.T if value.ndim == 2 else value
    if key.endswith("/kernel") and value.ndim == 4:
        block = key.split("/")[0]
        if "/se/" not in key and block in depthwise_blocks and value.shape[1] == 1:
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)
    return value


# ---------------------------------------------------------------------------
# Expected state per variant
# ---------------------------------------------------------------------------
def expected_shapes(variant, form: str, classes=None) -> dict:
    """``{our key: shape}`` of a variant's state in ``form`` ("fused"/"branched").

    ``classes=None``: no ``head/*`` entries.
    """
    shapes = {}
    specs = variants.block_specs(variant)
    for s in specs:
        k = s.kernel_size
        kshape = (k, k, s.filters, 1) if s.depthwise else (k, k, s.in_channels, s.filters)
        vec = (s.filters,)
        if form == "fused":
            shapes[f"{s.name}/reparam/kernel"] = kshape
            shapes[f"{s.name}/reparam/bias"] = vec
        else:
            for i in range(s.num_conv_branches):
                shapes[f"{s.name}/conv_kxk/{i}/kernel"] = kshape
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/conv_kxk/{i}/bn/{b}"] = vec
            if s.has_scale:
                shapes[f"{s.name}/conv_scale/kernel"] = (1, 1) + kshape[2:]
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/conv_scale/bn/{b}"] = vec
            if s.has_identity:
                for b in _BN_TORCH.values():
                    shapes[f"{s.name}/identity/{b}"] = vec
        if s.use_se:
            rd = variants.se_channels(s.filters)
            shapes[f"{s.name}/se/reduce/kernel"] = (1, 1, s.filters, rd)
            shapes[f"{s.name}/se/reduce/bias"] = (rd,)
            shapes[f"{s.name}/se/expand/kernel"] = (1, 1, rd, s.filters)
            shapes[f"{s.name}/se/expand/bias"] = (s.filters,)
    if classes is not None:
        features = variants.get_variant(variant).num_features
        shapes["head/kernel"] = (features, classes)
        shapes["head/bias"] = (classes,)
    return shapes


def _mismatches(state: dict, expected: dict):
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, got {tuple(state[k].shape)}"
             for k in sorted(set(state) & set(expected))
             if tuple(state[k].shape) != tuple(expected[k])]
    return missing, unexpected, wrong


def _format(missing, unexpected, wrong, limit=12):
    def cut(items):
        return items[:limit] + ([f"... ({len(items) - limit} more)"]
                                if len(items) > limit else [])
    return ((f"\n  missing keys: {cut(missing)}" if missing else "")
            + (f"\n  unexpected keys: {cut(unexpected)}" if unexpected else "")
            + (f"\n  wrong shapes: {cut(wrong)}" if wrong else ""))


@dataclasses.dataclass
class PortResult:
    """Result of :func:`port_checkpoint`.

    Attributes:
        state: flat ``{key: np.ndarray float32}`` in Keras layouts (see
            :mod:`mobileone_tf.models`).
        variant: ``"s0"`` ... ``"s4"``.
        form: ``"fused"`` or ``"branched"``.
        layout: ``"apple"``, ``"timm"`` or ``"mmpretrain"``.
        classes: classifier width, or None for a backbone-only checkpoint.
    """

    state: dict
    variant: str
    form: str
    layout: str
    classes: int | None


def convert_state_dict(torch_state: dict, variant=None, where="checkpoint") -> PortResult:
    """Converts a ``{torch key: array}`` dict (any supported layout) to our state.

    See :func:`port_checkpoint` for the checks and errors.
    """
    layout = detect_layout(torch_state)
    converted, unknown = {}, []
    for key, value in torch_state.items():
        ours = _our_key(key, layout)
        if ours is None:
            unknown.append(f"{key} {tuple(np.shape(value))}")
        else:
            converted[ours] = (key, value)
    if unknown:
        raise ValueError(f"{where} ({layout} layout): unexpected keys not part of a "
                         f"MobileOne model: {unknown[:12]}"
                         + (f" ... ({len(unknown) - 12} more)" if len(unknown) > 12 else ""))
    has_reparam = any("/reparam/" in k for k in converted)
    has_branch = any(("/conv_kxk/" in k or "/conv_scale/" in k or "/identity/" in k)
                     for k in converted)
    if has_reparam and has_branch:
        raise ValueError(f"{where}: mixes fused (reparam) and branched keys; "
                         "a checkpoint must be entirely one form")
    form = "fused" if has_reparam else "branched"
    classes = None
    if "head/bias" in converted:
        classes = int(np.shape(converted["head/bias"][1])[0])

    depthwise = {s.name for s in variants.block_specs("s0") if s.depthwise}
    state = {k: _to_keras(k, v, depthwise) for k, (_, v) in converted.items()}
    torch_name = {k: tk for k, (tk, _) in converted.items()}

    def describe(missing, unexpected, wrong):
        return _format(missing, [f"{torch_name[k]} -> {k}" for k in unexpected],
                       [f"{torch_name[w.split(':')[0]]} -> {w}" for w in wrong])

    results = {}
    for name in variants.VARIANTS:
        results[name] = _mismatches(state, expected_shapes(name, form, classes))
    detected = [n for n, r in results.items() if not any(r)]
    if variant is not None:
        v = variants.get_variant(variant).name
        if any(results[v]):
            looks = f" It looks like MobileOne-{detected[0].upper()}." if detected else ""
            raise ValueError(f"{where} ({layout} layout, {form}) does not fit "
                             f"MobileOne-{v.upper()}.{looks}" + describe(*results[v]))
    else:
        if not detected:
            best = min(results, key=lambda n: sum(len(x) for x in results[n]))
            raise ValueError(f"{where} ({layout} layout, {form}) matches no MobileOne "
                             f"variant; closest is {best}:" + describe(*results[best]))
        v = detected[0]
    return PortResult(state, v, form, layout, classes)


def port_checkpoint(path, variant=None, reader: str = "auto") -> PortResult:
    """Reads and converts a PyTorch MobileOne checkpoint.

    Args:
        path: checkpoint file (see :func:`read_checkpoint`).
        variant: expected variant ``"s0"``..``"s4"``; ``None`` detects it from
            the shapes (stem width, stage widths, branch count, SE).
        reader: see :func:`read_checkpoint`.

    Returns:
        A :class:`PortResult`; ``state`` holds float32 arrays in Keras
        layouts, validated against :func:`mobileone_tf.variants.block_specs`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, unknown key layout, keys not part of a
            MobileOne, mixed forms, wrong variant, missing/unexpected keys or
            wrong shapes (the message names the keys and shapes).
    """
    torch_state = read_checkpoint(path, reader=reader)
    return convert_state_dict(torch_state, variant, where=str(path))


# ---------------------------------------------------------------------------
# Our .weights.h5
# ---------------------------------------------------------------------------
def write_weights_h5(state: dict, path, variant, form: str, source: str = "") -> str:
    """Writes a state to ``path`` in mobileone_tf's own h5 layout.

    Layout: one float32 dataset per flat state key (the key is the h5 path,
    e.g. ``stage1_0/conv_kxk/0/bn/gamma``); root attributes ``format``
    (``"mobileone_tf.weights/1"``), ``variant``, ``form``
    (``"fused"``/``"branched"``), ``classes`` (-1 without a head) and
    ``source`` (free text, e.g. the checkpoint name). Written to a temporary
    file in the same folder, then renamed: never a partial file.

    Raises:
        ValueError: unknown variant or form, or a state not of that form.
    """
    import h5py

    v = variants.get_variant(variant).name
    if form not in ("fused", "branched"):
        raise ValueError(f"form must be 'fused' or 'branched'; got {form!r}")
    path = os.fspath(path)
    classes = int(np.shape(state["head/bias"])[0]) if "head/bias" in state else -1
    missing, unexpected, wrong = _mismatches(
        state, expected_shapes(v, form, None if classes < 0 else classes))
    if missing or unexpected or wrong:
        raise ValueError(f"state is not a {form} MobileOne-{v.upper()} state:"
                         + _format(missing, unexpected, wrong))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = H5_FORMAT
            f.attrs["variant"] = v
            f.attrs["form"] = form
            f.attrs["classes"] = classes
            f.attrs["source"] = str(source)
            for key in sorted(state):
                f.create_dataset(key, data=np.asarray(state[key], np.float32))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_weights_h5(path, with_attrs: bool = False):
    """Reads a file written by :func:`write_weights_h5`.

    Returns:
        The flat state dict, or ``None`` for any other h5 file (e.g. a plain
        Keras ``.weights.h5``). With ``with_attrs=True``: ``(state, attrs)``
        (``(None, {})`` for other files).

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


def count_params(state: dict) -> int:
    """Number of weights in a state (BatchNorm moving statistics excluded)."""
    return int(sum(np.size(v) for k, v in state.items() if "/moving_" not in k))
