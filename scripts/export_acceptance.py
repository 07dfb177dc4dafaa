"""Acceptance figures of the exported S0 on real images (issue 3).

Builds MobileOne-S0 from Apple's fused checkpoint, exports TFLite float32 /
float16 / int8 (PTQ calibrated on a separate folder) and ONNX at 224x224, and
evaluates every file and the fused Keras model on a labelled set
(labels.csv: file,label) with the same eval transform, reporting top-1 and
the number of images whose top-1 differs from Keras.

  python scripts/export_acceptance.py --checkpoint ../shared/data/mobileone_s0.pth.tar \
      --eval_data ../shared/data/imagenet-val-1300 \
      --calibration_data ../shared/data/imagenette/train --workdir /tmp/acc
"""

import csv
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Apple's fused mobileone_s0.pth.tar")
flags.DEFINE_string("eval_data", None, "Folder with labels.csv (file,label)")
flags.DEFINE_string("calibration_data", None, "Image folder for int8 PTQ (not the eval set)")
flags.DEFINE_integer("calibration_steps", 100, "int8 calibration images")
flags.DEFINE_integer("limit", 0, "Evaluate only the first N images (0: all)")
flags.DEFINE_string("workdir", "/tmp/mobileone_export_acceptance", "Where exports go")
flags.DEFINE_string("formats", "tflite,tflite_float16,tflite_int8,onnx", "What to evaluate")
flags.DEFINE_string("report", None, "Write the results as JSON here")

_TORCH_TO_NPZ = r"""
import sys, numpy as np, torch
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
sd = sd.get("state_dict", sd)
np.savez(sys.argv[2], **{k: v.numpy() for k, v in sd.items()})
"""


def apple_fused_state(checkpoint, workdir):
    """Apple's fused S0 state dict -> mobileone_tf fused state (torch in a
    subprocess: torch and TF do not share a process)."""
    from mobileone_tf import variants
    npz = os.path.join(workdir, "s0_torch.npz")
    subprocess.run([sys.executable, "-c", _TORCH_TO_NPZ, checkpoint, npz], check=True)
    sd = dict(np.load(npz))
    state = {}
    for spec in variants.block_specs("s0"):
        key = "stage0" if spec.name == "stem" else spec.name.replace("_", ".", 1)
        w = sd[f"{key}.reparam_conv.weight"]
        state[f"{spec.name}/reparam/kernel"] = (
            w.transpose(2, 3, 0, 1) if spec.depthwise else w.transpose(2, 3, 1, 0))
        state[f"{spec.name}/reparam/bias"] = sd[f"{key}.reparam_conv.bias"]
    state["head/kernel"] = sd["linear.weight"].T
    state["head/bias"] = sd["linear.bias"]
    return state


def build_s0(checkpoint, workdir=None):
    """MobileOne-S0 (fused) with Apple's checkpoint via the project's porter
    (``MobileOne(weights=PATH)``); ``apple_fused_state`` is an independent
    torch-based reading of the same file used by the tests as a cross-check."""
    import mobileone_tf as mo
    return mo.MobileOne("s0", weights=checkpoint, fused=True, input_shape=(None, None, 3))


def labelled(eval_data, limit):
    with open(os.path.join(eval_data, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    if limit:
        rows = rows[:limit]
    return [os.path.join(eval_data, r["file"]) for r in rows], np.array(
        [int(r["label"]) for r in rows])


def predict_all(fn, paths, batch=50):
    from mobileone_tf import export
    out = []
    for i in range(0, len(paths), batch):
        images = np.stack([export.load_image(p, 224) for p in paths[i:i + batch]])
        out.append(fn(images))
    return np.concatenate(out)


def main(argv):
    del argv
    from mobileone_tf import export, runtime
    os.makedirs(FLAGS.workdir, exist_ok=True)
    model = build_s0(FLAGS.checkpoint, FLAGS.workdir)
    fixed = export.prepare_model(model, batch_size=1, input_size=224)
    paths, labels = labelled(FLAGS.eval_data, FLAGS.limit)
    t = time.time()
    keras_out = predict_all(lambda x: model.predict(x, verbose=0), paths)
    keras_top1 = keras_out.argmax(-1)
    results = {"keras": {"top1": float(np.mean(keras_top1 == labels)),
                         "seconds": round(time.time() - t, 1)}}
    print("keras", results["keras"], flush=True)
    jobs = {
        "tflite": ("tflite", dict(quantize="none")),
        "tflite_float16": ("tflite", dict(quantize="float16")),
        "tflite_dynamic": ("tflite", dict(quantize="dynamic")),
        "tflite_int8": ("tflite", dict(quantize="int8", calibration_data=FLAGS.calibration_data,
                                       calibration_steps=FLAGS.calibration_steps)),
        "onnx": ("onnx", {}),
    }
    for name in FLAGS.formats.split(","):
        fmt, kw = jobs[name]
        out = os.path.join(FLAGS.workdir, f"s0_{name}.{fmt}")
        t = time.time()
        _, report = export.export(fixed, out, fmt, overwrite=True, input_size=224,
                                  class_names=[str(i) for i in range(1000)], **kw)
        convert_s = round(time.time() - t, 1)
        t = time.time()
        top1 = predict_all(runtime.load(out), paths).argmax(-1)
        results[name] = {
            "top1": float(np.mean(top1 == labels)),
            "top1_differs_from_keras": int(np.sum(top1 != keras_top1)),
            "file_mb": round(report["file_size_bytes"] / 1e6, 2),
            "convert_and_verify_s": convert_s, "eval_s": round(time.time() - t, 1),
            "verification": report.get("verification")}
        print(name, {k: v for k, v in results[name].items() if k != "verification"}, flush=True)
    results["num_images"] = len(paths)
    if FLAGS.report:
        export.write_report(results, FLAGS.report)


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint", "eval_data"])
    app.run(main)
