"""Property-based fuzzing of the checkpoint reader (issue 12).

Every mutated input must either load into exactly the expected tensors or
raise :class:`mobileone_tf.weights.CheckpointError`; never a crash, a hang,
a ``MemoryError`` or other tensors. Inputs: files written by torch in a
subprocess (tests/torch_checkpoints.py: small hand-made and timm-generated
ones, zip and legacy format), files written by tests/checkpoint_writer.py
(torch's format, any record), and Apple's real S0 from ``../shared/data``
(skipped with a reason when absent). Mutations: flipped bytes, truncated
files and zip members, flipped pickle bytes, random offsets / sizes /
strides / storage dtypes in the tensor records.

Expected tensors come from torch (its own ``.numpy()``), and for mutated
records from an index-arithmetic gather over the raw storage bytes, never
from the reader. Run with ``-s`` to see the number of cases and the distinct
error messages.
"""

import collections
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobileone_tf import weights
from tests import checkpoint_writer as cw
from tests.conftest import SHARED_DATA, require_modules, require_shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "torch_checkpoints.py")
S0 = SHARED_DATA / "mobileone_s0.pth.tar"
SLOW_CASE_S = 5.0
LOADED = []  # (mutated file, what we loaded) for test_loaded_mutations_agree_with_torch
STATS = {"cases": 0, "loaded": 0, "errors": collections.Counter(), "slowest": 0.0,
         "seconds": 0.0, "by_test": collections.Counter()}


def _settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------
# Fixtures: reference files and their expected tensors
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref(test_tmp):
    """Folder written by tests/torch_checkpoints.py (skips without torch)."""
    require_modules("torch", "timm")
    out = test_tmp / "fuzz_ref"
    cmd = [sys.executable, SCRIPT, "write", str(out)] + (
        ["--s0", str(S0)] if S0.is_file() else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _expected(npz_path):
    data = np.load(npz_path)
    return {k: data[k] for k in data.files if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def samples(ref):
    """name -> (file bytes, expected flat tensors) for the small torch files."""
    tiny = _expected(ref / "tiny.npz")
    return {"tiny.pt": ((ref / "tiny.pt").read_bytes(), tiny),
            "tiny_legacy.pt": ((ref / "tiny_legacy.pt").read_bytes(), tiny),
            "timm.pth": ((ref / "timm.pth").read_bytes(), _expected(ref / "timm.npz"))}


@pytest.fixture(scope="module")
def s0_sample(ref):
    require_shared("mobileone_s0.pth.tar")
    assert (ref / "s0.npz").is_file(), "torch_checkpoints.py wrote no s0.npz"
    return S0.read_bytes(), _expected(ref / "s0.npz")


@pytest.fixture(scope="module")
def work(test_tmp):
    path = test_tmp / "fuzz_work"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not STATS["cases"]:
        return
    lines = [f"checkpoint fuzz: {STATS['cases']} cases in {STATS['seconds']:.1f} s "
             f"(slowest {STATS['slowest']:.2f} s); {STATS['loaded']} loaded, "
             f"{sum(STATS['errors'].values())} refused with CheckpointError; per test: "
             + ", ".join(f"{k} {v}" for k, v in sorted(STATS["by_test"].items())),
             f"{len(STATS['errors'])} distinct error messages (numbers as N, names as 'K'):"]
    lines += [f"  {count:5d}  {msg}" for msg, count in STATS["errors"].most_common()]
    print("\n" + "\n".join(lines))


# ---------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------
def _template(message: str, path: str) -> str:
    """The kind of an error message: file, record, names and numbers elided."""
    message = message.replace(path, "FILE")
    message = re.sub(r" \(record: .*\)$", " (record: ...)", message)
    message = re.sub(r"refusing to unpickle \S+:", "refusing to unpickle NAME:", message)
    message = re.sub(r"can't decode byte .*", "can't decode byte ...)", message)
    message = re.sub(r"b?'[^']*'|\"[^\"]*\"", "'K'", message)
    message = re.sub(r"persistent id \(.*", "persistent id (...)", message)
    return re.sub(r"-?\d+", "N", message)


def _same(a: dict, b: dict) -> bool:
    if sorted(a) != sorted(b):
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
               and np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a)


def check(data: bytes, path, test: str, expected=None, valid=None):
    """Reads ``data`` from ``path``; returns the state or None (refused).

    ``expected``: the only state allowed to load. ``valid``: whether it must
    load (True), must be refused (False), or either (None).
    """
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        state = weights.read_checkpoint(path)
    except weights.CheckpointError as e:
        state, error = None, e
    except MemoryError:  # pragma: no cover - the property under test
        pytest.fail(f"MemoryError on a {len(data)}-byte input ({test})")
    seconds = time.perf_counter() - start
    STATS["cases"] += 1
    STATS["by_test"][test] += 1
    STATS["seconds"] += seconds
    STATS["slowest"] = max(STATS["slowest"], seconds)
    assert seconds < SLOW_CASE_S, f"{test}: one input took {seconds:.1f} s"
    if state is None:
        message = str(error)
        assert message.startswith(str(path)), message
        assert "\n" not in message and len(message) < 1200, message
        assert "weights_only" not in message
        STATS["errors"][_template(message, str(path))] += 1
        assert valid is not True, f"{test}: a valid input was refused: {message}"
        return None
    STATS["loaded"] += 1
    assert valid is not False, f"{test}: an invalid input loaded"
    if expected is not None:
        assert _same(state, expected), f"{test}: loaded tensors differ from the expected"
    return state


# ---------------------------------------------------------------------------
# Byte-level mutations of real files
# ---------------------------------------------------------------------------
_flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                  min_size=1, max_size=4)


def _flip(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for where, xor in flips:
        out[int(where * len(out))] ^= xor
    return bytes(out)


def test_flipped_and_truncated_bytes(samples, work):
    """Anywhere in the file: zip files load into the original tensors or are
    refused (CRCs catch flipped data); the legacy format has no checksum, so
    what loads must be what torch loads from the same bytes. A truncated
    file is always refused."""
    path = work / "bytes.pth"

    @_settings(900)
    @given(name=st.sampled_from(sorted(samples)), flips=_flips,
           cut=st.none() | st.floats(0, 1, exclude_max=True))
    def run(name, flips, cut):
        data, expected = samples[name]
        if cut is not None:
            check(data[: int(cut * len(data))], path, "truncate", valid=False)
        elif name.endswith("legacy.pt"):
            mutated = _flip(data, flips)
            _keep(work, mutated, check(mutated, path, "bytes"), "legacy")
        else:
            check(_flip(data, flips), path, "bytes", expected)
    run()


def _keep(work, data, state, tag, limit=150):
    """Keeps a mutated file that loaded, for the torch cross-check
    (at most ``limit`` per ``tag``)."""
    kept = [p for p, _ in LOADED if p.name.startswith(f"loaded_{tag}_")]
    if state is not None and len(kept) < limit:
        copy = work / f"loaded_{tag}_{len(kept)}.pth"
        copy.write_bytes(data)
        LOADED.append((copy, state))


def _members(data: bytes) -> list:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()


def _member(data: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(name)


def test_mutated_zip_members(samples, work):
    """Members truncated, extended, replaced, dropped (valid CRCs)."""
    path = work / "members.pth"
    zips = sorted(n for n in samples if n != "tiny_legacy.pt")
    members = {n: _members(samples[n][0]) for n in zips}

    @_settings(500)
    @given(name=st.sampled_from(zips), pick=st.floats(0, 1, exclude_max=True),
           action=st.sampled_from(["truncate", "extend", "drop", "random"]),
           amount=st.integers(0, 64), junk=st.binary(min_size=0, max_size=16))
    def run(name, pick, action, amount, junk):
        data, expected = samples[name]
        member = members[name][int(pick * len(members[name]))]
        old = _member(data, member)
        if "/data/" in member and len(junk) == len(old):
            junk += b"\0"  # same-length storage bytes would be a different valid file
        new = {"truncate": old[: max(0, len(old) - 1 - amount)], "extend": old + junk + b"\0",
               "drop": None, "random": junk}[action]
        check(cw.rezip(data, {member: new}), path, "members", expected)
    run()


def test_flipped_pickle_bytes(samples, work, ref):
    """data.pkl corrupted inside a valid zip: refused, or loaded exactly as
    ``torch.load(weights_only=True)`` loads the same file."""
    path = work / "pickle.pth"
    zips = sorted(n for n in samples if n != "tiny_legacy.pt")
    pkl = {n: next(m for m in _members(samples[n][0]) if m.endswith("/data.pkl")) for n in zips}

    @_settings(500)
    @given(name=st.sampled_from(zips), flips=_flips, insert=st.booleans())
    def run(name, flips, insert):
        data = samples[name][0]
        old = _member(data, pkl[name])
        new = _flip(old, flips)
        if insert:  # shift everything after one position
            at = int(flips[0][0] * len(old))
            new = new[:at] + bytes([flips[0][1]]) + new[at:]
        mutated = cw.rezip(data, {pkl[name]: new})
        _keep(work, mutated, check(mutated, path, "pickle"), "pickle")
    run()


# ---------------------------------------------------------------------------
# Record-level mutations (offset, size, stride, storage dtype)
# ---------------------------------------------------------------------------
_BIG = [2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64 + 5, -1, -2,
        -(2 ** 31), -(2 ** 63), -(2 ** 63) - 1]
_ints = st.integers(-3, 12) | st.sampled_from(_BIG)
_sizes = st.lists(st.integers(0, 6) | st.sampled_from(_BIG), max_size=5)
_strides = st.lists(_ints, max_size=5)


def _storage_array(raw: bytes, type_name: str) -> np.ndarray:
    dtype = cw.STORAGE_TYPES[type_name]
    if dtype == "bfloat16":
        return np.frombuffer(raw, ml_dtypes.bfloat16).astype(np.float32)
    if dtype == "bool":
        return np.frombuffer(raw, np.uint8).astype(bool)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _gather(raw, type_name, offset, size, stride):
    """The tensor by index arithmetic: element i = storage[offset + sum i_k s_k]."""
    values = _storage_array(raw, type_name)
    if not size:
        return values[offset].copy()
    index = offset + sum(np.indices(size, dtype=np.int64)[k] * stride[k]
                         for k in range(len(size)))
    return values[index] if index.size else np.zeros(size, values.dtype)


def _is_valid(r, nbytes):
    """Issue 12's rules for one record, written out independently."""
    offset, size, stride, numel = r["offset"], list(r["size"]), list(r["stride"]), r["numel"]
    in64 = all(-(2 ** 63) <= v < 2 ** 63 for v in [offset, *size, *stride])
    if not in64 or len(size) != len(stride) or offset < 0 or min(size + stride + [0]) < 0:
        return False
    if nbytes != numel * cw.ITEMSIZE[cw.STORAGE_TYPES[r["type"]]]:
        return False
    elements = int(np.prod(size, dtype=object)) if size else 1
    if int(np.prod([n for n in size if n] or [1], dtype=object)) > 2 ** 48:
        return False
    if elements == 0:
        return offset <= numel
    return offset + sum((n - 1) * s for n, s in zip(size, stride)) < numel \
        and elements <= max(numel, 2 ** 24)


def _records_case(records, storages, path):
    """A checkpoint of these records (tests/checkpoint_writer.py); returns
    (file bytes, expected state or None, whether it must load)."""
    obj, types = {}, collections.defaultdict(set)
    for name, r in records.items():
        obj[name] = cw.Tensor(cw.Storage(r["storage"], r["type"], r["numel"]),
                              r["offset"], r["size"], r["stride"])
        types[r["storage"]].add((r["type"], r["numel"]))
    valid = all(len(v) == 1 for v in types.values())  # one dtype and size per storage
    expected = {}
    for name, r in records.items():
        raw = storages[r["storage"]]
        valid = valid and _is_valid(r, len(raw))
        if valid:
            expected[name] = _gather(raw, r["type"], r["offset"], r["size"], r["stride"])
    cw.write_zip(path, cw.torch_pickle(obj), storages)
    return path.read_bytes(), (expected if valid else None), valid


def test_mutated_records(ref, work):
    """Random offsets, sizes, strides and storage dtypes in torch's own
    records (tiny.pt): loads iff the records are valid, into exactly the
    index-arithmetic gather of the storage bytes."""
    records = json.loads((ref / "tiny_records.json").read_text())
    storages = {k: v.tobytes() for k, v in np.load(ref / "tiny_storages.npz").items()}
    path, src = work / "records.pth", work / "records_src.pth"
    # the unmutated rewrite gives torch's own values
    data, expected, valid = _records_case(records, storages, src)
    assert valid and _same(expected, _expected(ref / "tiny.npz"))
    check(data, path, "records", _expected(ref / "tiny.npz"), valid=True)

    @_settings(600)
    @given(key=st.sampled_from(sorted(records)),
           fields=st.sampled_from([("offset",), ("size",), ("stride",), ("type",),
                                   ("size", "stride")]),
           offset=_ints, size=_sizes, stride=_strides,
           type_name=st.sampled_from(sorted(cw.STORAGE_TYPES)))
    def run(key, fields, offset, size, stride, type_name):
        if fields == ("size", "stride"):  # same rank: reaches the bounds checks
            stride = (stride + [1] * len(size))[: len(size)]
        values = {"offset": offset, "size": size, "stride": stride, "type": type_name}
        changed = dict(records)
        changed[key] = dict(records[key], **{f: values[f] for f in fields})
        data, expected, valid = _records_case(changed, storages, src)
        check(data, path, "records", expected, valid=valid)
    run()


def test_apple_s0_mutations(s0_sample, work):
    """Apple's real S0: flipped bytes, truncation, corrupted data.pkl (what
    loads, torch loads the same)."""
    data, expected = s0_sample
    path = work / "s0.pth"
    check(data, path, "s0", expected, valid=True)
    pkl = next(m for m in _members(data) if m.endswith("/data.pkl"))
    old_pkl = _member(data, pkl)

    @_settings(120)
    @given(flips=_flips, kind=st.sampled_from(["bytes", "truncate", "pickle"]))
    def run(flips, kind):
        if kind == "bytes":
            check(_flip(data, flips), path, "s0", expected)
        elif kind == "truncate":
            check(data[: int(flips[0][0] * len(data))], path, "s0", valid=False)
        else:
            mutated = cw.rezip(data, {pkl: _flip(old_pkl, flips)})
            _keep(work, mutated, check(mutated, path, "s0"), "s0", limit=8)
    run()


def test_loaded_mutations_agree_with_torch(ref, work):
    """Every mutated file that loaded without an exact expectation (legacy
    byte flips, corrupted pickles), torch loads too
    (``torch.load(weights_only=True)``, in a subprocess), into the same
    tensors."""
    if not LOADED:
        pytest.skip("no mutated file loaded (the fuzz tests above did not run)")
    tags = {p.name.split("_")[1] for p, _ in LOADED}
    assert {"legacy", "pickle"} <= tags, f"the cross-check would be vacuous: {tags}"
    out = work / "torch_loaded"
    proc = subprocess.run([sys.executable, SCRIPT, "load", str(out)]
                          + [str(p) for p, _ in LOADED], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, (file, state) in enumerate(LOADED):
        err = out / f"{i}.err"
        assert not err.exists(), f"{file}: we loaded it, torch refused: {err.read_text()}"
        assert _same(state, _expected(out / f"{i}.npz")), f"{file}: differs from torch"


# ---------------------------------------------------------------------------
# Regression tests: issue 12's crafted files, each read in a subprocess with
# a 3 GiB address-space limit, so a crash fails the test (not pytest) and a
# huge allocation shows as MemoryError instead of exhausting the machine.
# ---------------------------------------------------------------------------
_READ = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from mobileone_tf.weights import CheckpointError, read_checkpoint
try:
    state = read_checkpoint(sys.argv[1])
except CheckpointError as e:
    print("CheckpointError:", e)
    sys.exit(3)
print("loaded", {k: v.tolist() for k, v in state.items()})
"""


def read_in_subprocess(path):
    """(exit status, output) of reading ``path`` in a fresh interpreter."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _READ, str(path)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _one_tensor(path, size, stride, offset=0, numel=4, type_name="FloatStorage",
                values=(1.0, 2.0, 3.0, 4.0)):
    raw = np.asarray(values, cw.STORAGE_TYPES[type_name]).tobytes()
    obj = {"w": cw.Tensor(cw.Storage("0", type_name, numel), offset, size, stride)}
    return cw.write_zip(path, cw.torch_pickle(obj), {"0": raw})


@pytest.mark.parametrize("size,stride,offset,problem", [
    ((4,), (-1,), 3, "negative stride"),  # was a segmentation fault (exit 139)
    ((2, 2), (2, -1), 1, "negative stride"),
    ((4,), (1 << 20,), 0, "extends past the end of its storage"),  # copied ~4 M floats
    ((1 << 20, 4), (1, 1), 0, "extends past the end of its storage"),
    ((4,), (1,), -2, "negative storage offset"),
    ((4,), (1,), 1, "extends past the end of its storage"),
    ((-4,), (1,), 0, "negative size"),
    ((0, 5), (1, 1), 4, None),  # empty, at the end of its 4-element storage: fine
    ((0, 5), (1, 1), 5, "offset past the end of its storage"),
    ((1 << 40, 1 << 40), (0, 0), 0, "too many elements"),
    ((1 << 25,), (0,), 0, "a broadcast view of 33554432 elements"),
    ((1 << 63,), (1,), 0, "offset, size and stride must be int64 integers"),
])
def test_bad_records_in_subprocess(tmp_path, size, stride, offset, problem):
    path = _one_tensor(tmp_path / "bad.pth", size, stride, offset)
    status, out = read_in_subprocess(path)
    if problem is None:
        assert status == 0 and "loaded {'w': []}" in out, out
        return
    assert status == 3, f"exit {status} (139 = segmentation fault): {out[-2000:]}"
    assert f"CheckpointError: {path}: tensor 'w': {problem}" in out, out
    assert f"stride {stride}" in out.replace("L", "")


def test_stride_zero_views_and_big_endian(tmp_path):
    """Valid edge cases: broadcast views, 0-dim tensors, big-endian data."""
    path = _one_tensor(tmp_path / "b.pth", (3, 4), (0, 1))
    assert weights.read_checkpoint(path)["w"].tolist() == [[1, 2, 3, 4]] * 3
    path = _one_tensor(tmp_path / "s.pth", (), (), offset=2)
    assert weights.read_checkpoint(path)["w"].tolist() == 3.0
    values = np.arange(6, dtype=">i8")
    obj = {"w": cw.Tensor(cw.Storage("0", "LongStorage", 6), 1, (2, 2), (1, 2))}
    cw.write_zip(tmp_path / "be.pth", cw.torch_pickle(obj), {"0": values.tobytes()},
                 byteorder=b"big")
    state = weights.read_checkpoint(tmp_path / "be.pth")
    assert state["w"].dtype == np.int64 and state["w"].tolist() == [[1, 3], [2, 4]]


def test_memory_budget(tmp_path):
    """Many tensors over one storage cannot multiply the memory used."""
    raw = np.zeros(1 << 20, np.float32).tobytes()  # 4 MiB storage
    storage = cw.Storage("0", "FloatStorage", 1 << 20)
    obj = {f"w{i}": cw.Tensor(storage, 0, (1 << 20,), (1,)) for i in range(40)}
    path = cw.write_zip(tmp_path / "many.pth", cw.torch_pickle(obj), {"0": raw})
    with pytest.raises(weights.CheckpointError, match=r"tensor 'w\d+': the tensors need "
                                                       r"more than \d+ bytes"):
        weights.read_checkpoint(path)


def _zip_with_pickle(path, pickle_bytes, storages=None):
    return cw.write_zip(path, pickle_bytes, storages or {})


@pytest.mark.parametrize("name,payload,problem", [
    # memo index 2**32 - 1: the C unpickler would allocate a 32 GiB memo table
    ("memo", b"\x80\x02}r\xff\xff\xff\xff.", "memo index 4294967295"),
    # a bytes object of 2**62 bytes announced in 13 bytes
    ("bytes8", b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b".", "corrupt pickle"),
    ("long4", b"\x80\x02\x8b\xff\xff\xff\x7f.", "corrupt pickle"),
    ("frame", b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"}.", "frame"),
    ("deep", b"\x80\x02" + b"]" * 200000 + b"a" * 199999 + b".", "not a state dict"),
    ("global", b"\x80\x02cbuiltins\nexec\nq\x00.", "refusing to unpickle builtins.exec"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 20 else "")
def test_pickle_bombs_in_subprocess(tmp_path, name, payload, problem):
    """Pickles that would exhaust memory, recursion or run code."""
    for path in (_zip_with_pickle(tmp_path / f"{name}.pth", payload),
                 tmp_path / f"{name}_plain.pth"):
        if str(path).endswith("_plain.pth"):
            if name == "deep":  # a plain deep pickle is no legacy checkpoint: another message
                continue
            path.write_bytes(payload)  # as a legacy (non-zip) file
        status, out = read_in_subprocess(path)
        assert status == 3, f"exit {status}: {out[-2000:]}"
        assert problem in out and "MemoryError" not in out, out[-2000:]


def test_zip_bombs(tmp_path):
    """Deflated members that expand a thousandfold are not inflated."""
    raw = bytes(32 << 20)  # 32 MiB of zeros deflate to ~32 KiB
    obj = {"w": cw.Tensor(cw.Storage("0", "ByteStorage", len(raw)), 0, (len(raw),), (1,))}
    for member in ("archive/data/0", "archive/data.pkl"):
        path = tmp_path / "bomb.pth"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in (("archive/data.pkl", cw.torch_pickle(obj)),
                               ("archive/data/0", raw)):
                z.writestr(name, raw if name == member else data,
                           compress_type=zipfile.ZIP_DEFLATED)
        with pytest.raises(weights.CheckpointError, match="zip bomb|more than the file can"):
            weights.read_checkpoint(path)


def test_torch_files_read_exactly(ref):
    """Unmutated files written by torch (zip, legacy, wrapped timm state)."""
    for name, npz in (("tiny.pt", "tiny"), ("tiny_legacy.pt", "tiny"), ("timm.pth", "timm")):
        assert _same(weights.read_checkpoint(ref / name), _expected(ref / f"{npz}.npz")), name
