"""Reference checkpoints written and read by torch, run in a subprocess by
tests/test_checkpoint_fuzz.py (torch is never imported into pytest).

    python tests/torch_checkpoints.py write OUT [--s0 mobileone_s0.pth.tar]
    python tests/torch_checkpoints.py load OUT FILE...

``write`` saves into OUT:

* ``tiny.pt`` (zip) and ``tiny_legacy.pt`` (``_use_new_zipfile_serialization
  =False``): an OrderedDict of small tensors of every supported dtype, with a
  transposed (non-contiguous) tensor, slices sharing one storage (offsets),
  a stride-0 broadcast view, a 0-dim and an empty tensor, a Parameter;
* ``timm.pth``: ``{"state_dict": <stem + first stage of timm's mobileone_s0,
  random BatchNorm statistics>, "epoch": 3}``;
* ``<name>.npz``: torch's own values of each file's tensors (bfloat16 as
  float32), ``tiny_records.json`` + ``tiny_storages.npz``: each tensor's
  storage, offset, size and stride and the raw storage bytes;
* with ``--s0``: ``s0.npz`` from ``torch.load(weights_only=True)``.

``load`` writes ``OUT/<i>.npz`` (the flat tensors) or ``OUT/<i>.err`` (the
exception) for each FILE, loaded with ``torch.load(weights_only=True)``.
"""

import collections
import json
import os
import sys

import numpy as np
import torch


def to_numpy(t):
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def tiny_state():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(24, generator=g)
    shared = torch.arange(40, dtype=torch.int32)
    return collections.OrderedDict([
        ("conv.weight", torch.randn(4, 3, 2, 2, generator=g)),
        ("transposed", base.reshape(4, 6).t()),  # stride (1, 6)
        ("slice_a", shared[3:11]), ("slice_b", shared[20:40].reshape(4, 5)[:, 1:4]),
        ("broadcast", torch.randn(3, generator=g).expand(5, 3)),  # stride (0, 1)
        ("half", torch.randn(7, generator=g).half()),
        ("bf16", torch.nn.Parameter(torch.randn(2, 3, generator=g).bfloat16())),
        ("double", torch.randn(2, 2, generator=g, dtype=torch.float64)),
        ("long", torch.tensor([-5, 0, 2 ** 40], dtype=torch.int64)),
        ("short", torch.tensor([-3, 7], dtype=torch.int16)),
        ("int8_scalar", torch.tensor(-7, dtype=torch.int8)),
        ("uint8", torch.tensor([0, 255, 9], dtype=torch.uint8)),
        ("mask", torch.tensor([True, False, True])),
        ("empty", torch.zeros(0, 3)),
    ])


def records(state):
    """Each tensor's storage (by data pointer), offset, size, stride."""
    keys, out, storages = {}, {}, {}
    for name, t in state.items():
        st = t.untyped_storage()
        key = keys.setdefault(st.data_ptr(), str(len(keys)))
        storages[key] = np.frombuffer(bytes(st), np.uint8)
        out[name] = {"storage": key, "type": t.dtype, "offset": t.storage_offset(),
                     "size": list(t.shape), "stride": list(t.stride()),
                     "numel": st.nbytes() // t.element_size()}
    names = {torch.float32: "FloatStorage", torch.float64: "DoubleStorage",
             torch.float16: "HalfStorage", torch.bfloat16: "BFloat16Storage",
             torch.int64: "LongStorage", torch.int32: "IntStorage",
             torch.int16: "ShortStorage", torch.int8: "CharStorage",
             torch.uint8: "ByteStorage", torch.bool: "BoolStorage"}
    for r in out.values():
        r["type"] = names[r["type"]]
    return out, storages


def write(out, s0=None):
    os.makedirs(out, exist_ok=True)
    state = tiny_state()
    torch.save(state, os.path.join(out, "tiny.pt"))
    torch.save(state, os.path.join(out, "tiny_legacy.pt"), _use_new_zipfile_serialization=False)
    np.savez(os.path.join(out, "tiny.npz"), **{k: to_numpy(v) for k, v in state.items()})
    recs, storages = records(state)
    with open(os.path.join(out, "tiny_records.json"), "w") as f:
        json.dump(recs, f)
    np.savez(os.path.join(out, "tiny_storages.npz"), **storages)

    import timm
    torch.manual_seed(0)
    model = timm.create_model("mobileone_s0", pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(("stem.", "stages.0."))}
    torch.save({"state_dict": sd, "epoch": 3}, os.path.join(out, "timm.pth"))
    np.savez(os.path.join(out, "timm.npz"), **{k: to_numpy(v) for k, v in sd.items()})
    if s0:
        sd = torch.load(s0, map_location="cpu", weights_only=True)
        np.savez(os.path.join(out, "s0.npz"), **{k: to_numpy(v) for k, v in sd.items()})


def flat(obj):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TypeError(f"not a dict: {type(obj).__name__}")
    return {k: to_numpy(v) for k, v in obj.items()
            if isinstance(v, torch.Tensor) and not str(k).endswith("num_batches_tracked")}


def load(out, files):
    os.makedirs(out, exist_ok=True)
    for i, path in enumerate(files):
        try:
            arrays = flat(torch.load(path, map_location="cpu", weights_only=True))
            np.savez(os.path.join(out, f"{i}.npz"), **arrays)
        except Exception as e:  # noqa: BLE001 - any refusal counts
            with open(os.path.join(out, f"{i}.err"), "w") as f:
                f.write(f"{type(e).__name__}: {e}"[:500])


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[4] if sys.argv[3:4] == ["--s0"] else None)
    else:
        load(sys.argv[2], sys.argv[3:])
