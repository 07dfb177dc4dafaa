"""Tensor records of a PyTorch checkpoint, validated before any memory is read.

While a checkpoint's pickle is loaded (:mod:`mobileone_tf.weights.torch_reader`)
each tensor is kept as a :class:`TensorRecord` (storage, offset, size,
stride) pointing at a :class:`StorageRef` (key, dtype, element count).
:class:`Materializer` turns a record into a numpy array only after checking,
with Python integers:

* the values are integers in the int64 range, ``len(size) == len(stride)``
  and at most :data:`MAX_NDIM` dimensions;
* offset >= 0, every size >= 0, every stride >= 0;
* a non-empty tensor ends inside its storage:
  ``offset + sum((size_i - 1) * stride_i) < storage numel``; an empty one
  starts at most at its end (``offset <= numel``);
* the storage's byte length is ``numel * itemsize`` of its dtype (checked by
  the container before the bytes are read);
* the copy is bounded: a tensor larger than its storage (stride-0 broadcast
  views) holds at most :data:`MAX_BROADCAST_ELEMENTS`, and all copies
  together at most twice the file size plus :data:`SLACK_BYTES`.

No torch import.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import sys

import numpy as np

from mobileone_tf.api_export import mobileone_export

STORAGE_TYPES = {  # torch storage class -> (numpy dtype, itemsize in the file)
    "FloatStorage": ("float32", 4), "DoubleStorage": ("float64", 8),
    "HalfStorage": ("float16", 2), "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1), "BoolStorage": ("bool", 1),
}
MAX_NDIM = 32
MAX_ELEMENTS = 1 << 48
MAX_BROADCAST_ELEMENTS = 1 << 24
SLACK_BYTES = 64 << 20


@mobileone_export("mobileone_tf.weights")
class CheckpointError(ValueError):
    """A file that is not a readable checkpoint: empty, not a zip archive or
    a pickle, corrupt, refused (a pickle global that is not a tensor), or a
    tensor record that does not fit its storage. The message names the file
    and, where there is one, the tensor and its record."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxtuple = _REPR.maxlist = 8


def short(value, limit: int = 80) -> str:
    """A bounded ``repr`` for messages (huge integers and nested values from
    a hostile pickle never make a huge or failing message)."""
    if isinstance(value, BaseException):
        text = str(value).strip() or type(value).__name__
    elif type(value) is int and value.bit_length() > 64:
        text = f"<{value.bit_length()}-bit integer>"
    else:
        try:
            text = _REPR.repr(value)
        except Exception:  # e.g. a deeply nested or self-referencing value
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class StorageType:
    """A ``torch.<name>`` storage class named in a pickle."""
    name: str


class StorageRef:
    """One storage of a checkpoint: its bytes come from ``load()`` (set by the
    container, which has checked their length); decoded once."""

    __slots__ = ("key", "type_name", "numel", "load", "byteorder", "_array")

    def __init__(self, key: str, type_name: str, numel: int):
        self.key, self.type_name, self.numel = key, type_name, numel
        self.load, self.byteorder, self._array = None, "little", None

    @property
    def itemsize(self) -> int:
        return STORAGE_TYPES[self.type_name][1]

    @property
    def dtype(self) -> str:
        return STORAGE_TYPES[self.type_name][0]

    def describe(self) -> str:
        return f"{short(self.numel)} {self.dtype} elements"

    def array(self) -> np.ndarray:
        """The whole storage as a 1-D array (bfloat16 widened to float32,
        bool as ``byte != 0``)."""
        if self._array is None:
            raw = self.load()
            if len(raw) != self.numel * self.itemsize:  # containers check this first
                raise CheckpointError(f"storage {short(self.key)}: wrong byte length")
            order = "<" if self.byteorder == "little" else ">"
            if self.dtype == "bfloat16":
                arr = (np.frombuffer(raw, order + "u2").astype(np.uint32) << 16).view(np.float32)
            elif self.dtype == "bool":
                arr = np.frombuffer(raw, np.uint8) != 0
            elif self.byteorder == sys.byteorder:
                arr = np.frombuffer(raw, np.dtype(self.dtype))
            else:
                arr = np.frombuffer(raw, np.dtype(self.dtype).newbyteorder(order))
                arr = arr.astype(np.dtype(self.dtype))
            self._array = arr
        return self._array


class TensorRecord:
    """The arguments of one ``torch._utils._rebuild_tensor_v2`` call, not yet
    trusted (no ``__dict__``: a pickle cannot change it after the call)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _int64(value) -> bool:
    return type(value) is int and -(1 << 63) <= value < (1 << 63)


class Materializer:
    """Validates :class:`TensorRecord` objects and copies them out of their
    storages, within one checkpoint's memory budget (twice ``file_size``
    plus :data:`SLACK_BYTES`)."""

    def __init__(self, where: str, file_size: int):
        self.where = where
        self.budget = 2 * int(file_size) + SLACK_BYTES
        self.used = 0

    def max_storage_elements(self, type_name: str) -> int:
        """The most elements a storage of this type can hold in this file."""
        return (self.budget - SLACK_BYTES) // STORAGE_TYPES[type_name][1]

    def _fail(self, name, record, problem):
        st = record.storage
        storage = (f"storage {short(st.key)} of {st.describe()}"
                   if isinstance(st, StorageRef) else f"storage {short(st)}")
        return CheckpointError(
            f"{self.where}: tensor {short(name)}: {problem} (record: {storage}, offset "
            f"{short(record.offset)}, size {short(record.size)}, stride {short(record.stride)})")

    def array(self, record: TensorRecord, name: str) -> np.ndarray:
        """The tensor as a new numpy array (dtype of the storage, C order).

        Raises:
            CheckpointError: the record breaks a rule of the module doc.
        """
        st, offset, size, stride = record.storage, record.offset, record.size, record.stride
        if not isinstance(st, StorageRef):
            raise self._fail(name, record, "its storage is not a storage record")
        if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
                and _int64(offset) and all(map(_int64, size)) and all(map(_int64, stride))):
            raise self._fail(name, record, "offset, size and stride must be int64 integers")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride):
            raise self._fail(name, record, "size and stride differ in length")
        if len(size) > MAX_NDIM:
            raise self._fail(name, record, f"more than {MAX_NDIM} dimensions")
        if offset < 0:
            raise self._fail(name, record, "negative storage offset")
        if any(n < 0 for n in size):
            raise self._fail(name, record, "negative size")
        if any(s < 0 for s in stride):
            raise self._fail(name, record, "negative stride")
        if math.prod(n for n in size if n) > MAX_ELEMENTS:
            raise self._fail(name, record, "too many elements")
        numel = math.prod(size)
        if numel == 0:
            if offset > st.numel:
                raise self._fail(name, record, "offset past the end of its storage")
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= st.numel:
                raise self._fail(name, record, f"extends past the end of its storage "
                                 f"(last element {last}, storage has {st.numel})")
        if numel > max(st.numel, MAX_BROADCAST_ELEMENTS):
            raise self._fail(name, record, f"a broadcast view of {numel} elements, more than "
                             f"its storage and than the {MAX_BROADCAST_ELEMENTS} allowed")
        out_dtype = np.dtype(np.float32 if st.dtype == "bfloat16" else st.dtype)
        self.used += numel * out_dtype.itemsize
        if self.used > self.budget:
            raise self._fail(name, record, f"the tensors need more than {self.budget} bytes "
                             "of memory, twice the file size plus 64 MiB")
        if numel == 0:
            return np.zeros(size, out_dtype)
        base = st.array()
        view = np.lib.stride_tricks.as_strided(
            base[offset:], shape=size, writeable=False,
            strides=[s * base.itemsize if n > 1 else 0 for n, s in zip(size, stride)])
        return np.array(view, copy=True)
