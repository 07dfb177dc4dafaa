"""Candidate reproducer: TensorFlow's oneDNN kernels segfault in the training step
of a branched MobileOne on a Xeon with AVX512-FP16 (see docs/onednn_crash.md).

Written on a machine where the crash does not happen (AMD EPYC, no
AVX512-FP16): the cases below are the *candidates* to run on an affected CPU.
Each case runs in a child process, so a segmentation fault is reported
(signal 11) instead of ending the sweep.

Cases:
  s0        the package's branched MobileOne-S0, ``model.train_on_batch`` at
            --size px (needs mobileone_tf; the original symptom).
  branches  plain TensorFlow/Keras, no mobileone_tf (the one to report
            upstream): S0's first blocks written out: k parallel
            DepthwiseConv2D 3x3 + BatchNormalization branches, a 1x1 branch
            and a BatchNorm identity, summed, ReLU; then k parallel 1x1 Conv2D
            + BatchNorm branches; one SGD step with GradientTape in a
            tf.function.

Usage (each line prints one result row: case, size, setting, exit status):
  python docs/onednn_repro.py                       # sweep: both cases x sizes x settings
  python docs/onednn_repro.py --case branches --size 224 --child   # one run, in-process
  ONEDNN_VERBOSE=1 python -X faulthandler docs/onednn_repro.py --case branches --child
      # the last oneDNN primitive before the crash, and the Python stack
"""

import argparse
import os
import platform
import subprocess
import sys

SETTINGS = {  # name -> environment (unset = TensorFlow's default)
    "default": {},
    "onednn_off": {"TF_ENABLE_ONEDNN_OPTS": "0"},            # the known workaround
    "isa_avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},  # reported: still crashes
    "isa_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "fpmath_strict": {"ONEDNN_DEFAULT_FPMATH_MODE": "STRICT"},
    "no_remapper": {"REPRO_NO_REMAPPER": "1"},                # Grappler fusions off
    "inter_op_1": {"REPRO_INTER_OP_1": "1"},                  # one op at a time
}


def branches_model(tf, keras, size, k=4, width=48):
    """S0's stem and stage-1 blocks as plain layers, train-time form."""
    L = keras.layers

    def block(x, filters, kernel, stride, depthwise):
        if kernel > 1 and stride == 2:
            x_in, pad = L.ZeroPadding2D(kernel // 2)(x), "valid"
        else:
            x_in, pad = x, "same"

        def conv(kern, inp, p):
            if depthwise:
                return L.DepthwiseConv2D(kern, strides=stride, padding=p, use_bias=False)(inp)
            return L.Conv2D(filters, kern, strides=stride, padding=p, use_bias=False)(inp)

        outs = [L.BatchNormalization(epsilon=1e-5, momentum=0.9)(conv(kernel, x_in, pad))
                for _ in range(k)]
        if kernel > 1:
            outs.append(L.BatchNormalization(epsilon=1e-5, momentum=0.9)(conv(1, x, "valid")))
        if stride == 1 and x.shape[-1] == filters:
            outs.append(L.BatchNormalization(epsilon=1e-5, momentum=0.9)(x))
        return L.ReLU()(L.Add()(outs) if len(outs) > 1 else outs[0])

    inputs = keras.Input((size, size, 3))
    x = block(inputs, width, 3, 2, False)           # stem (k=1 in S0; k here)
    for stride in (2, 1):                           # stage1_0..3
        x = block(x, width, 3, stride, True)
        x = block(x, width, 1, 1, False)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def child(case, size, batch, steps, k):
    import numpy as np
    import tensorflow as tf
    import keras
    if os.environ.get("REPRO_NO_REMAPPER"):
        tf.config.optimizer.set_experimental_options({"remapping": False})
    if os.environ.get("REPRO_INTER_OP_1"):
        tf.config.threading.set_inter_op_parallelism_threads(1)
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.arange(batch) % 10
    if case == "s0":
        from mobileone_tf import models
        model = models.MobileOne("s0", weights=None, classes=10, input_shape=(size, size, 3))
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy())
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
    else:
        model = branches_model(tf, keras, size, k=k)
        opt = keras.optimizers.SGD(0.01, momentum=0.9)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, model(xb, training=True))
            opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
            return loss

        for _ in range(steps):
            loss = step(tf.constant(x), tf.constant(y))
    print(f"ok loss={float(np.asarray(loss).ravel()[0]):.4f}", flush=True)


def versions():
    import importlib.metadata as md
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = ""
    try:
        model = next(line for line in open("/proc/cpuinfo")
                     if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    wanted = ("avx512_fp16", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16", "avx512_vnni")
    pkgs = {}
    for name in ("tensorflow", "keras", "numpy"):
        try:
            pkgs[name] = md.version(name)
        except md.PackageNotFoundError:
            pkgs[name] = "-"
    print(f"python {platform.python_version()}, {platform.platform()}; "
          + ", ".join(f"{k} {v}" for k, v in pkgs.items()))
    print(f"cpu: {model or platform.processor()}; flags: "
          + " ".join(f for f in wanted if f" {f}" in flags) + f"; {os.cpu_count()} cpus")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=("s0", "branches"), nargs="*",
                   default=["branches", "s0"])
    p.add_argument("--size", type=int, nargs="*", default=[32, 128, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--k", type=int, default=4, help="parallel kxk branches (branches case)")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--child", action="store_true", help="run one case in this process")
    a = p.parse_args()
    if a.child:
        return child(a.case[0], a.size[0], a.batch, a.steps, a.k)
    versions()
    for case in a.case:
        for size in a.size:
            for name in a.settings:
                env = {**os.environ, **SETTINGS[name]}
                cmd = [sys.executable, "-X", "faulthandler", __file__, "--child", "--case",
                       case, "--size", str(size), "--batch", str(a.batch),
                       "--steps", str(a.steps), "--k", str(a.k)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                status = ("ok" if r.returncode == 0 else f"signal {-r.returncode}"
                          if r.returncode < 0 else f"exit {r.returncode}")
                print(f"{case:9s} {size:4d}px {name:16s} {status}", flush=True)
                if r.returncode != 0:
                    tail = (r.stderr or r.stdout).strip().splitlines()[-6:]
                    print("    " + "\n    ".join(tail))


if __name__ == "__main__":
    main()
