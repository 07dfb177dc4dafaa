"""Safe, torch-free reading of PyTorch checkpoints: ``read_checkpoint(path)``.

Formats (detected from the file's bytes, not its name):

* ``torch.save`` zip archives (PyTorch >= 1.6; Apple's release): a zip holding
  ``<name>/data.pkl``, ``<name>/byteorder`` and one member ``<name>/data/<key>``
  per storage;
* legacy ``torch.save`` files (``_use_new_zipfile_serialization=False``): a
  stream of pickles (magic number, protocol 1001, system info, the object,
  the storage keys) followed by the raw storages;
* ``.safetensors`` (read with ``safetensors.numpy``).

Never a full unpickle, and no torch needed. Every pickle is first walked with
:func:`pickletools.genops` (opcode arguments must lie inside the data; memo
indices are bounded, so the C unpickler cannot be made to allocate huge
tables), then loaded by a restricted unpickler that accepts only
``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``,
``collections.OrderedDict`` and the ``torch.*Storage`` types; anything else
("refusing to unpickle os.system") is refused. Tensor records are kept as
plain records while unpickling and validated one by one before any memory is
read (:mod:`mobileone_tf.weights.tensor_records`).

Errors: :class:`CheckpointError` (a ``ValueError``) whose message names the
file and, for a bad tensor, the tensor and its record.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import zipfile

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.weights.tensor_records import (STORAGE_TYPES, CheckpointError, Materializer,
                                                 StorageRef, StorageType, TensorRecord, short)

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
"""Keys of training wrappers around a state dict, unwrapped in this order."""

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
MAX_KEY_CHARS = 256
MAX_ZIP_RATIO = 100
"""A compressed zip member may expand at most this many times (torch stores
members uncompressed; a higher ratio is a zip bomb)."""


# ---------------------------------------------------------------------------
# Pickles
# ---------------------------------------------------------------------------
def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return TensorRecord(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def checked_pickle(data: bytes, where: str) -> None:
    """Walks one pickle's opcodes without executing them.

    Raises:
        CheckpointError: truncated or unknown opcodes, an argument running
            past the data, a memo index beyond the opcode count, or a frame
            longer than the rest of the data.
    """
    count = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            count += 1
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= count:
                raise CheckpointError(f"{where}: corrupt pickle: memo index {short(arg)} "
                                      f"at byte {pos} is out of range")
            if op.name == "FRAME" and arg > len(data) - pos:
                raise CheckpointError(f"{where}: corrupt pickle: frame at byte {pos} runs "
                                      "past the end of the data")
    except CheckpointError:
        raise
    except ValueError as e:  # pickletools: truncated, unknown opcodes, bad literals
        raise CheckpointError(f"{where}: corrupt pickle ({short(e, 160)})") from None


class _Unpickler(pickle.Unpickler):
    """Allowlisted globals only; persistent ids become :class:`StorageRef`
    (looked up with ``storage_ref(key, storage_type, numel)``)."""

    def __init__(self, data: bytes, where: str, storage_ref=None, pid_length=5):
        super().__init__(io.BytesIO(data))
        self._where, self._storage_ref, self._pid_length = where, storage_ref, pid_length

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        qualified = f"{module}.{name}"
        if not qualified.isprintable() or len(qualified) > 120:
            qualified = short(qualified, 120)
        raise CheckpointError(
            f"{self._where}: refusing to unpickle {qualified}: "
            "only tensors, storages and OrderedDict are allowed in a checkpoint")

    def persistent_load(self, pid):
        ok = (self._storage_ref is not None and isinstance(pid, tuple)
              and len(pid) == self._pid_length and pid[0] == "storage"
              and isinstance(pid[1], StorageType) and isinstance(pid[2], str)
              and len(pid[2]) <= MAX_KEY_CHARS and type(pid[4]) is int)
        if not ok or (self._pid_length == 6 and pid[5] is not None):
            raise CheckpointError(f"{self._where}: refusing to unpickle persistent id "
                                  f"{short(pid)}")
        return self._storage_ref(pid[2], pid[1].name, pid[4])


def load_pickle(data: bytes, where: str, storage_ref=None, pid_length=5):
    """Validates (:func:`checked_pickle`) and loads one restricted pickle."""
    checked_pickle(data, where)
    try:
        return _Unpickler(data, where, storage_ref, pid_length).load()
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:  # malformed pickle: UnpicklingError, TypeError, KeyError...
        raise CheckpointError(f"{where}: corrupt pickle ({type(e).__name__}: "
                              f"{short(e, 160)})") from None


class _Storages:
    """The storages a pickle references, by key: one :class:`StorageRef` each
    (element count bounded by the file), the same dtype and size at every
    reference; ``on_new(ref)`` tells the container to attach the bytes."""

    def __init__(self, where: str, materializer: Materializer, on_new=None):
        self.where, self.materializer, self.on_new, self.refs = where, materializer, on_new, {}

    def __call__(self, key, type_name, numel):
        ref = StorageRef(key, type_name, numel)
        old = self.refs.get(key)
        if old is not None:
            if (old.type_name, old.numel) != (type_name, numel):
                raise CheckpointError(f"{self.where}: storage {short(key)} is referenced as "
                                      f"{old.describe()} and as {ref.describe()}")
            return old
        if not 0 <= numel <= self.materializer.max_storage_elements(type_name):
            raise CheckpointError(f"{self.where}: storage {short(key)} claims {short(numel)} "
                                  f"{ref.dtype} elements, more than the file can hold")
        if self.on_new is not None:
            self.on_new(ref)
        self.refs[key] = ref
        return ref


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------
def _zip_member(zf: zipfile.ZipFile, name: str, where: str, size=None) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{where}: zip member {short(name)} is missing") from None
    if size is not None and info.file_size != size:
        raise CheckpointError(f"{where}: zip member {short(name)} holds {info.file_size} "
                              f"bytes, expected {size}")
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > MAX_ZIP_RATIO * info.compress_size + (1 << 20):
        raise CheckpointError(f"{where}: zip member {short(name)} expands "
                              f"{info.compress_size} -> {info.file_size} bytes (zip bomb?)")
    try:
        return zf.read(info)
    except MemoryError:
        raise
    except Exception as e:  # BadZipFile (CRC), zlib.error, EOFError, NotImplementedError...
        raise CheckpointError(f"{where}: corrupt zip member {short(name)} "
                              f"({type(e).__name__}: {short(e, 160)})") from None


def _read_zip(path: str, materializer: Materializer):
    try:
        zf = zipfile.ZipFile(path)
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or truncated zip archive "
                              f"({type(e).__name__}: {short(e, 160)})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint "
                                  "(no unique '<name>/data.pkl')")
        prefix = pkls[0][: -len("data.pkl")]
        order = "little"
        if f"{prefix}byteorder" in names:
            order = _zip_member(zf, f"{prefix}byteorder", path).decode("ascii", "replace")
            if order not in ("little", "big"):
                raise CheckpointError(f"{path}: unknown byte order {short(order)}")

        def loader(ref):
            ref.byteorder = order
            ref.load = lambda: _zip_member(zf, f"{prefix}data/{ref.key}", path,
                                           size=ref.numel * ref.itemsize)

        storage_ref = _Storages(path, materializer, loader)
        obj = load_pickle(_zip_member(zf, pkls[0], path), path, storage_ref)
        return state_dict(obj, path, materializer)


class _Bounded:
    """A file whose ``read(n)`` never asks for more than the bytes left (a
    pickle opcode announcing 2**62 bytes must not allocate them)."""

    def __init__(self, f, size: int):
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        left = max(0, self._size - self._f.tell())
        return self._f.readline(left if limit is None or limit < 0 else min(limit, left))

    def tell(self) -> int:
        return self._f.tell()


def _read_legacy(path: str, materializer: Materializer):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        def next_pickle(what, storage_ref=None):
            start = f.tell()
            try:
                for op, _arg, _pos in pickletools.genops(_Bounded(f, size)):
                    pass
            except ValueError as e:  # as in checked_pickle
                raise CheckpointError(f"{path}: corrupt pickle ({what}, at byte {start}: "
                                      f"{short(e, 160)})") from None
            end = f.tell()
            f.seek(start)
            return load_pickle(f.read(end - start), path, storage_ref, pid_length=6)

        if next_pickle("magic number") != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: a pickle but not a PyTorch checkpoint "
                                  "(no PyTorch magic number)")
        if next_pickle("protocol version") != LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy PyTorch protocol")
        next_pickle("system info")
        storage_ref = _Storages(path, materializer)
        refs = storage_ref.refs
        obj = next_pickle("object", storage_ref)
        keys = next_pickle("storage keys")
        if not (isinstance(keys, list) and sorted(refs) == sorted(
                k for k in keys if isinstance(k, str)) and len(keys) == len(refs)):
            raise CheckpointError(f"{path}: the storage key list does not match the "
                                  "storages the object references")
        for key in keys:
            ref = refs[key]
            head = f.read(8)
            numel = int.from_bytes(head, "little", signed=True) if len(head) == 8 else -1
            nbytes = ref.numel * ref.itemsize
            if numel != ref.numel or nbytes > size - f.tell():
                raise CheckpointError(f"{path}: storage {short(key)} is truncated or "
                                      f"corrupt (expected {ref.describe()})")
            raw = f.read(nbytes)
            ref.load, ref.byteorder = (lambda raw=raw: raw), "little"
    return state_dict(obj, path, materializer)


def _read_safetensors(path: str) -> dict:
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .safetensors file "
                              f"({type(e).__name__}: {short(e, 160)})") from None


def state_dict(obj, where: str, materializer: Materializer = None) -> dict:
    """The flat ``{key: np.ndarray}`` of a loaded checkpoint object.

    Training wrappers (:data:`WRAPPER_KEYS`) and ``module.`` prefixes are
    removed; ``num_batches_tracked`` buffers and non-tensor entries are
    dropped; tensor records are validated and copied out of their storages.

    Raises:
        CheckpointError: not a dict of tensors, or a bad tensor record.
    """
    def is_tensor(value):
        return isinstance(value, (TensorRecord, np.ndarray))

    for _ in range(3):
        if isinstance(obj, dict) and not any(is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS
                          if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: not a state dict (got {type(obj).__name__})")
    state = {}
    for key, value in obj.items():
        if not is_tensor(value):
            continue
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            raise CheckpointError(f"{where}: tensor key {short(key)} is not a short string")
        name = key
        while name.startswith("module."):
            name = name[len("module."):]
        if name.endswith("num_batches_tracked"):
            continue
        if isinstance(value, TensorRecord):
            value = (materializer or Materializer(where, 0)).array(value, key)
        state[name] = value
    if not state:
        keys = sorted(short(k, 40) for k in list(obj)[:64])[:8]
        raise CheckpointError(f"{where}: holds no tensors (keys: {keys})")
    return state


def _describe_start(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive (PyTorch < 0.4 format, not supported)"
    text = head[:64]
    try:
        text.decode("utf-8")
        kind = "text"
    except UnicodeDecodeError:
        kind = "binary data"
    return f"{kind} starting with {short(text[:24])}"


@mobileone_export("mobileone_tf.weights")
def read_checkpoint(path) -> dict:
    """Reads a checkpoint file into a flat ``{torch key: np.ndarray}`` dict.

    Arrays keep the saved dtype and shape (bfloat16 is widened to float32,
    bool is read as ``byte != 0``). Wrappers ``{"state_dict": ...}``,
    ``{"model": ...}``, ``{"model_ema": ...}`` (also ``state_dict_ema``,
    ``module``) and ``module.`` prefixes are removed; ``num_batches_tracked``
    buffers are dropped.

    Args:
        path: a ``torch.save`` file (zip or legacy; any name: ``.pth``,
            ``.pth.tar``, ``.pt``, ``.bin``...) or a ``.safetensors`` file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: anything else: an empty file, a file that is not a
            zip archive or a pickle, a corrupt archive or pickle, a refused
            pickle global, a tensor record that does not fit its storage, or
            no tensors (the message names the file and the record).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such checkpoint file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(512)
    materializer = Materializer(path, size)
    header = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if path.endswith(".safetensors") or (head[8:9] == b"{" and 2 <= header < size):
        return state_dict(_read_safetensors(path), path)
    if head.startswith(b"\x80"):  # pickle protocol >= 2: legacy torch.save
        return _read_legacy(path, materializer)
    if head.startswith(b"PK") or zipfile.is_zipfile(path):
        return _read_zip(path, materializer)
    raise CheckpointError(f"{path}: not a checkpoint: not a zip archive or a pickle "
                          f"({_describe_start(head)})")
