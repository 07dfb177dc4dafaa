"""Independent PyTorch reference fixtures (run in a SUBPROCESS: importing
torchvision/timm in a process that imported TensorFlow segfaults).

For each variant, timm's ``mobileone_sN`` with random weights and randomised
BatchNorm statistics is run in eval mode on a fixed input, and its state dict
is saved in every supported key layout:

* ``timm_branched.pth`` / ``timm_fused.pth`` / ``timm_fused.safetensors``:
  timm's own keys (fused = ``timm.utils.reparameterize_model``);
* ``apple_*`` and ``mmpretrain_*``: the same tensors under Apple's
  ml-mobileone and mmpretrain key names. Neither implementation can be
  installed here, so these two layouts are produced by renaming (the names
  were read from their source); the real Apple S0 checkpoint is tested
  directly as well.

With ``--shared DIR`` it also runs Apple's released fused S0 checkpoint (keys
renamed onto timm's re-parameterized ``mobileone_s0``) on 8 real images,
preprocessed with PIL like torchvision (bilinear short side 256, centre crop
224), and saves the uint8-valued input and the logits.

Usage: python tests/torch_reference.py OUT_DIR [--variants s0,s4] [--shared DIR] [--size 64]
"""

import argparse
import copy
import os
import re

import numpy as np
import torch


def apple_key(key):
    key = re.sub(r"^stem\.", "stage0.", key)
    key = re.sub(r"^stages\.(\d+)\.", lambda m: f"stage{int(m.group(1)) + 1}.", key)
    for a, b in ((r"conv_kxk\.", "rbr_conv."), (r"conv_scale\.", "rbr_scale."),
                 (r"\.identity\.", ".rbr_skip."), (r"attn\.fc1", "se.reduce"),
                 (r"attn\.fc2", "se.expand"), (r"^head\.fc\.", "linear.")):
        key = re.sub(a, b, key)
    return key


def mmpretrain_key(key):
    if key.startswith("head.fc."):
        return key
    key = re.sub(r"^stem\.", "stage0.", key)
    key = re.sub(r"^stages\.(\d+)\.", lambda m: f"stage{int(m.group(1)) + 1}.", key)
    key = re.sub(r"conv_kxk\.(\d+)\.bn\.", r"branch_conv_list.\1.norm.", key)
    key = re.sub(r"conv_kxk\.(\d+)\.conv\.", r"branch_conv_list.\1.conv.", key)
    key = key.replace("conv_scale.bn.", "branch_scale.norm.")
    key = key.replace("conv_scale.conv.", "branch_scale.conv.")
    key = key.replace(".identity.", ".branch_norm.")
    key = key.replace("reparam_conv", "branch_reparam")
    key = key.replace("attn.fc1", "se.conv1.conv").replace("attn.fc2", "se.conv2.conv")
    return "backbone." + key


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
            elif name.endswith(".weight") and t.ndim == 1:  # BN gamma
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim == 1:  # BN beta, biases
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            else:  # conv / linear weights, fan-in scaled
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / fan_in) ** 0.5)


def save(state, path):
    torch.save({k: v.clone() for k, v in state.items()}, path)


def variant_fixtures(out, variant, size):
    import timm
    from safetensors.torch import save_file
    from timm.utils.model import reparameterize_model
    model = timm.create_model(f"mobileone_{variant}", pretrained=False).eval()
    randomize(model, seed=int(variant[1:]) + 10)
    rng = np.random.default_rng(0)
    x_nhwc = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = torch.from_numpy(((x_nhwc / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = model(x).numpy()
        fused = reparameterize_model(copy.deepcopy(model)).eval()
        fused_logits = fused(x).numpy()
    d = os.path.join(out, variant)
    os.makedirs(d, exist_ok=True)
    branched_sd, fused_sd = model.state_dict(), fused.state_dict()
    save(branched_sd, f"{d}/timm_branched.pth")
    save(fused_sd, f"{d}/timm_fused.pth")
    save_file({k: v.contiguous() for k, v in fused_sd.items()}, f"{d}/timm_fused.safetensors")
    for name, rename in (("apple", apple_key), ("mmpretrain", mmpretrain_key)):
        for form, sd in (("branched", branched_sd), ("fused", fused_sd)):
            save({rename(k): v for k, v in sd.items()}, f"{d}/{name}_{form}.pth")
    n_params = sum(p.numel() for p in model.parameters())
    n_fused = sum(p.numel() for p in fused.parameters())
    np.savez(f"{d}/reference.npz", input=x_nhwc, logits=logits, fused_logits=fused_logits,
             params=n_params, params_fused=n_fused)


def real_s0_fixture(out, shared):
    import timm
    from PIL import Image
    from timm.utils.model import reparameterize_model
    model = reparameterize_model(timm.create_model("mobileone_s0", pretrained=False)).eval()
    apple = torch.load(os.path.join(shared, "mobileone_s0.pth.tar"), map_location="cpu",
                       weights_only=True)
    inverse = {apple_key(k): k for k in model.state_dict()}
    model.load_state_dict({inverse[k]: v for k, v in apple.items()})
    folder = os.path.join(shared, "imagenet-val-1300")
    rows = open(os.path.join(folder, "labels.csv")).read().split()[1:9]
    images, labels = [], []
    for row in rows:
        file, label = row.split(",")
        img = Image.open(os.path.join(folder, file)).convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(256, int(w * scale)), max(256, int(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        images.append(np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32))
        labels.append(int(label))
    x_nhwc = np.stack(images)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = torch.from_numpy(((x_nhwc / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        logits = model(x).numpy()
    np.savez(os.path.join(out, "real_s0.npz"), input=x_nhwc, logits=logits,
             labels=np.array(labels))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--variants", default="s0,s1,s2,s3,s4")
    p.add_argument("--shared", default=None)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    for v in args.variants.split(","):
        variant_fixtures(args.out, v, args.size)
    if args.shared:
        real_s0_fixture(args.out, args.shared)


if __name__ == "__main__":
    main()
