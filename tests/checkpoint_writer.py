"""Torch-free writer of ``torch.save``-format files, for tests that need
checkpoints torch would never write (bad records, hostile pickles).

``data.pkl`` references ``torch._utils._rebuild_tensor_v2`` and
``torch.<Type>Storage`` exactly as ``torch.save`` does (protocol 2): the
pickle is made with stand-ins defined here and their module name is then
rewritten to ``torch`` / ``torch._utils``. The zip holds
``<name>/data.pkl``, ``<name>/byteorder`` and ``<name>/data/<key>``, stored.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile

import numpy as np

STORAGE_TYPES = {  # torch storage class -> numpy dtype of the stored bytes
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8,
            "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}
_HERE = __name__


def _stand_in(name):  # pickled by reference, renamed to torch.<name>
    cls = type(name, (), {"__module__": _HERE})
    globals()[name] = cls
    return cls


_CLASSES = {name: _stand_in(name) for name in STORAGE_TYPES}


def _rebuild_tensor_v2(*args):  # pickled by reference, renamed to torch._utils
    raise AssertionError("never called")


@dataclasses.dataclass
class Storage:
    """A storage reference: ``("storage", torch.<type_name>, key, "cpu", numel)``."""
    key: str
    type_name: str
    numel: int


@dataclasses.dataclass
class Tensor:
    """One ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    storage: Storage
    offset: object
    size: object
    stride: object

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size),
                                     tuple(self.stride), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", _CLASSES[obj.type_name], obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj) -> bytes:
    """``obj`` (dicts, lists, :class:`Tensor`...) as torch's ``data.pkl``."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"c" + _HERE.encode() + b"\n_rebuild_tensor_v2\n",
                                  b"ctorch._utils\n_rebuild_tensor_v2\n")
    for name in STORAGE_TYPES:
        data = data.replace(b"c" + _HERE.encode() + b"\n" + name.encode() + b"\n",
                            b"ctorch\n" + name.encode() + b"\n")
    assert _HERE.encode() not in data
    return data


def write_zip(path, pickle_bytes: bytes, storages: dict, name: str = "archive",
              byteorder: bytes = b"little", extra: dict | None = None) -> str:
    """A torch zip: ``data.pkl``, ``byteorder`` and ``data/<key>`` for each
    ``storages[key]`` (bytes); ``extra`` adds or replaces members."""
    members = {f"{name}/data.pkl": pickle_bytes, f"{name}/byteorder": byteorder}
    members.update({f"{name}/data/{k}": v for k, v in storages.items()})
    members.update(extra or {})
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            if data is not None:
                z.writestr(member, data)
    return os.fspath(path)


def rezip(src: bytes, replace: dict) -> bytes:
    """The zip ``src`` with members replaced (``None`` removes one); correct CRCs."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return out.getvalue()


def contiguous_strides(shape) -> tuple:
    return tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))


def save_state(path, state: dict) -> str:
    """``{key: array}`` as a torch zip checkpoint of float32 tensors, one
    contiguous storage each (what ``torch.save`` writes for a state dict)."""
    obj, storages = collections.OrderedDict(), {}
    for i, (key, value) in enumerate(state.items()):
        arr = np.ascontiguousarray(value, np.float32)
        storages[str(i)] = arr.tobytes()
        obj[key] = Tensor(Storage(str(i), "FloatStorage", arr.size), 0, arr.shape,
                          contiguous_strides(arr.shape))
    return write_zip(path, torch_pickle(obj), storages)
