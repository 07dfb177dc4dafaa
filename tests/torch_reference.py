"""Independent PyTorch reference fixtures for the porting tests.

Run as a SCRIPT in a subprocess (never import torch/timm next to TensorFlow):

    python tests/torch_reference.py OUT_DIR [--real CHECKPOINT --images DIR]

For every variant s0..s4 it builds timm's ``mobileone_sN`` with random
weights and randomised BatchNorm statistics (running mean/var, weight, bias),
runs a fixed random input (2x3x64x64, seed 0) in eval mode and writes:

* ``{v}_timm.pth`` (timm unfused state_dict), ``{v}_timm_reparam.pth`` and
  ``{v}_timm_reparam.safetensors`` (``timm.utils.reparameterize_model``);
* ``{v}_apple.pth``, ``{v}_apple_fused.pth``, ``{v}_mmpretrain.pth`` and
  ``{v}_mmpretrain_fused.pth``: the same weights under Apple's ml-mobileone
  and mmpretrain key names, produced by renaming timm's keys (Apple's and
  mmpretrain's code is not installable here; the renaming follows their
  module definitions. Apple's real fused S0 checkpoint is tested directly);
* ``{v}.npz``: ``x_nchw``, ``x_nhwc``, ``logits`` (eval-mode timm output),
  ``features_P1`` .. ``features_P5`` (NHWC; timm's ``features_only=True``
  model with the same weights: stem and stages 1-4); for s0 also
  ``s0_train.npz``: training-mode logits (batch statistics) and the gradient
  of ``sum(logits ** 2)`` with respect to the NHWC input, in float64 and in
  float32 (the float32 error is the scale a float32 implementation is held to);
  ``s0_train_wgrad.npz``: the float64 gradient of the same loss with respect
  to every parameter, by timm parameter name.

With ``--real``: Apple's fused S0 checkpoint renamed into timm's
re-parameterized ``mobileone_s0`` (an independent forward pass), run on 8 real
images from ``--images`` (RGB, bilinear resize of the short side to 256,
centre crop 224, ImageNet mean/std) -> ``real_s0.npz`` (``x_nhwc`` 0..255
after resize/crop, ``logits``). Also ``real_s0_torchload.npz``: every tensor of
the real checkpoint as read by ``torch.load(weights_only=True)``.
"""

import argparse
import os
import re
import sys

import numpy as np
import torch
import timm
from safetensors.torch import save_file

VARIANTS = ("s0", "s1", "s2", "s3", "s4")
BN = ("weight", "bias", "running_mean", "running_var")


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_mean"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.5)
            elif re.search(r"(bn|identity)\.weight$", name):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif re.search(r"(bn|identity)\.bias$", name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def block_prefix(key, layout):
    """timm block prefix -> Apple/mmpretrain prefix."""
    if key.startswith("stem."):
        new = "stage0." + key[5:]
    elif key.startswith("stages."):
        m = re.match(r"stages\.(\d)\.(\d+)\.(.*)", key)
        new = f"stage{int(m.group(1)) + 1}.{m.group(2)}.{m.group(3)}"
    elif key.startswith("head.fc."):
        return ("linear." + key[8:]) if layout == "apple" else key
    else:
        raise KeyError(key)
    return new if layout == "apple" else "backbone." + new


APPLE = [(r"\.conv_kxk\.", ".rbr_conv."), (r"\.conv_scale\.", ".rbr_scale."),
         (r"\.identity\.", ".rbr_skip."), (r"\.attn\.fc1\.", ".se.reduce."),
         (r"\.attn\.fc2\.", ".se.expand.")]
MMPRE = [(r"\.conv_kxk\.(\d+)\.bn\.", r".branch_conv_list.\1.norm."),
         (r"\.conv_kxk\.", ".branch_conv_list."),
         (r"\.conv_scale\.bn\.", ".branch_scale.norm."), (r"\.conv_scale\.", ".branch_scale."),
         (r"\.identity\.", ".branch_norm."), (r"\.reparam_conv\.", ".branch_reparam."),
         (r"\.attn\.fc1\.", ".se.conv1.conv."), (r"\.attn\.fc2\.", ".se.conv2.conv.")]


def rename(state, layout):
    out = {}
    for key, value in state.items():
        new = block_prefix(key, layout)
        for rx, rep in (APPLE if layout == "apple" else MMPRE):
            new = re.sub(rx, rep, new)
        out[new] = value
    return out


def apple_to_timm(state):
    """Apple fused keys -> timm re-parameterized keys (for the real checkpoint)."""
    out = {}
    for key, value in state.items():
        if key.startswith("linear."):
            new = "head.fc." + key[7:]
        elif key.startswith("stage0."):
            new = "stem." + key[7:]
        else:
            m = re.match(r"stage(\d)\.(\d+)\.(.*)", key)
            new = f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"
        new = new.replace(".se.reduce.", ".attn.fc1.").replace(".se.expand.", ".attn.fc2.")
        out[new] = value
    return out


def variant_fixtures(out, size):
    for i, v in enumerate(VARIANTS):
        torch.manual_seed(i)
        model = timm.create_model(f"mobileone_{v}", pretrained=False).eval()
        randomize(model, seed=100 + i)
        x = torch.from_numpy(np.random.default_rng(i).uniform(
            -2, 2, (2, 3, size, size)).astype(np.float32))
        with torch.no_grad():
            logits = model(x).numpy()
        sd = {k: t.clone() for k, t in model.state_dict().items()}
        torch.save(sd, os.path.join(out, f"{v}_timm.pth"))
        torch.save(rename(sd, "apple"), os.path.join(out, f"{v}_apple.pth"))
        torch.save(rename(sd, "mmpretrain"), os.path.join(out, f"{v}_mmpretrain.pth"))
        rep = timm.utils.reparameterize_model(model).eval()
        with torch.no_grad():
            logits_rep = rep(x).numpy()
        rsd = {k: t.clone().contiguous() for k, t in rep.state_dict().items()}
        torch.save(rsd, os.path.join(out, f"{v}_timm_reparam.pth"))
        save_file(rsd, os.path.join(out, f"{v}_timm_reparam.safetensors"))
        torch.save(rename(rsd, "apple"), os.path.join(out, f"{v}_apple_fused.pth"))
        torch.save(rename(rsd, "mmpretrain"), os.path.join(out, f"{v}_mmpretrain_fused.pth"))
        if v == "s0":  # what torch.load(weights_only=True) reads, for the reader test
            np.savez(os.path.join(out, "s0_timm_torchload.npz"), **{
                k: t.numpy() for k, t in torch.load(
                    os.path.join(out, "s0_timm.pth"), weights_only=True).items()
                if not k.endswith("num_batches_tracked")})
        feats = timm.create_model(f"mobileone_{v}", pretrained=False, features_only=True).eval()
        feats.load_state_dict({re.sub(r"^stages\.(\d)\.", r"stages_\1.", k): t
                               for k, t in sd.items() if not k.startswith("head.")})
        with torch.no_grad():
            maps = {f"features_P{j + 1}": f.numpy().transpose(0, 2, 3, 1)
                    for j, f in enumerate(feats(x))}
        np.savez(os.path.join(out, f"{v}.npz"), x_nchw=x.numpy(),
                 x_nhwc=x.numpy().transpose(0, 2, 3, 1), logits=logits,
                 logits_reparam=logits_rep, **maps)
        if v == "s0":  # training mode: batch statistics, and the input gradient
            train = timm.create_model(f"mobileone_{v}", pretrained=False)
            train.load_state_dict(sd)
            train.train()
            # 8 x 64 x 64: batch statistics over >= 32 values per channel (with
            # 2 images the 2 x 2 stage-4 maps make BatchNorm amplify rounding;
            # >= 96 px would crash TF 2.21's oneDNN in the Keras step on some CPUs)
            # float64 is the reference; float32's own error against it sets the scale
            x_np = np.random.default_rng(7).uniform(-2, 2, (8, 3, 64, 64)).astype(np.float32)
            results = {}
            for dtype in (torch.float32, torch.float64):
                net = train.to(dtype)
                net.zero_grad()
                xt = torch.from_numpy(x_np).to(dtype).requires_grad_(True)
                out_train = net(xt)
                (out_train ** 2).sum().backward()
                results[dtype] = (out_train.detach().double().numpy(),
                                  xt.grad.double().numpy().transpose(0, 2, 3, 1))
            # the loop ends in float64: every parameter's float64 gradient
            np.savez(os.path.join(out, "s0_train_wgrad.npz"),
                     **{name: p.grad.numpy() for name, p in net.named_parameters()})
            np.savez(os.path.join(out, "s0_train.npz"), x_nhwc=x_np.transpose(0, 2, 3, 1),
                     logits=results[torch.float64][0], grad_nhwc=results[torch.float64][1],
                     logits_float32=results[torch.float32][0],
                     grad_nhwc_float32=results[torch.float32][1])


def load_images(folder, n=8):
    from PIL import Image
    import csv
    with open(os.path.join(folder, "labels.csv")) as f:
        rows = list(csv.DictReader(f))[:n]
    images = []
    for row in rows:
        img = Image.open(os.path.join(folder, row["file"])).convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(256, round(w * s)), max(256, round(h * s))),
                         Image.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        images.append(np.asarray(img, np.float32))
    return np.stack(images)


def real_fixture(out, checkpoint, images):
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
    np.savez(os.path.join(out, "real_s0_torchload.npz"),
             **{k: v.numpy() for k, v in sd.items()})
    model = timm.create_model("mobileone_s0", pretrained=False)
    model = timm.utils.reparameterize_model(model).eval()
    model.load_state_dict(apple_to_timm(sd), strict=True)
    x = load_images(images)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    xn = ((x / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(xn))).numpy()
    np.savez(os.path.join(out, "real_s0.npz"), x_nhwc=x, logits=logits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--real", default=None)
    parser.add_argument("--images", default=None)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    variant_fixtures(args.out, args.size)
    if args.real:
        real_fixture(args.out, args.real, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
