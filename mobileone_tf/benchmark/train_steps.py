"""Training steps of Keras on each backend and of timm, timed in one
interleaved run.

Each contender runs in an interpreter of its own (the Keras backend is fixed
when Keras is imported, and PyTorch never shares a process with TensorFlow
here): ``python -m mobileone_tf.benchmark.train_steps SPEC_JSON``. It builds
the branched model, an optimizer and one fixed random batch, takes the
``warmup`` untimed steps (compilation included), prints ``READY``, then for
every line ``N`` it reads on stdin times ``N`` steps and prints their seconds
as one JSON list. It ends at end of input.

:func:`interleaved_train` starts every contender, waits until all of them
are ready, and then sends each one its share of the steps in turn, for
``rounds`` rounds. Only one contender runs at a time, and a slow spell of
the machine spreads over all of them.

Contenders (:data:`CONTENDERS`):

* ``tensorflow``, ``jax``, ``torch``: ``keras.Model.train_on_batch`` of
  :func:`mobileone_tf.models.MobileOne` on that Keras backend (NHWC),
  ``jit_compile`` False on TensorFlow (XLA's CPU convolutions are slower
  there, docs/training_speed.md), True on JAX (Keras always compiles there),
  False on PyTorch (eager).
* ``torch-compile``: the PyTorch backend with ``jit_compile=True``
  (``torch.compile``).
* ``timm``: timm's ``mobileone_<v>`` (NCHW), the reference.

All of them: SGD (learning rate 0.01, momentum 0.9), softmax cross-entropy,
a batch of ``batch`` float32 images ``size`` x ``size`` uniform in 0..255
(seed 0) with random labels; float32, or bfloat16 mixed precision (Keras
``mixed_bfloat16``, PyTorch ``autocast``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from mobileone_tf.benchmark import stats
from mobileone_tf.benchmark.workers import ONEDNN_HINT

CONTENDERS = ("tensorflow", "jax", "torch", "torch-compile", "timm")
READY = "READY"
TRAIN_BATCH = 32
"""Default images per training step (``--mode train``)."""


def _thread_env(contender: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2",
               TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
    if contender != "timm":
        env["KERAS_BACKEND"] = contender.split("-")[0]
    if contender == "jax":  # XLA's CPU thread pool
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                            + ("true" if threads > 1 else "false")
                            + f" intra_op_parallelism_threads={threads}").strip()
    return env


def _keras_step(spec):
    import keras
    from mobileone_tf.models import MobileOne
    contender, size, batch = spec["contender"], spec["size"], spec["batch"]
    if contender.startswith("torch"):
        import torch
        torch.set_num_threads(spec["threads"])
    policy = keras.mixed_precision.dtype_policy()
    if spec["precision"] == "bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = MobileOne(spec["variant"], weights=None, input_shape=(size, size, 3))
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy",
                  jit_compile=contender in ("jax", "torch-compile"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, (batch,)).astype(np.int32)
    return lambda: model.train_on_batch(x, y)


def _timm_step(spec):
    import timm
    import torch
    torch.set_num_threads(spec["threads"])
    model = timm.create_model(f"mobileone_{spec['variant']}", pretrained=False).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(0, 255, (spec["batch"], 3, spec["size"], spec["size"]))
                         .astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 1000, (spec["batch"],)))
    bf16 = spec["precision"] == "bfloat16"

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def serve(spec: dict, stdin=sys.stdin, stdout=sys.stdout):
    """The contender process (module docstring): warm-up, ``READY``, then one
    JSON list of step seconds per line ``N`` read."""
    step = (_timm_step if spec["contender"] == "timm" else _keras_step)(spec)
    for _ in range(spec["warmup"]):
        step()
    print(READY, file=stdout, flush=True)
    for line in stdin:
        times = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), file=stdout, flush=True)


def interleaved_train(contenders, variant: str, threads: int, runs: int, warmup: int,
                      rounds: int, batch: int, size: int, precision: str = "float32") -> tuple:
    """Times the training step of every contender in one interleaved run.

    Args:
        contenders: names from :data:`CONTENDERS`.
        variant: ``"s0"`` .. ``"s4"`` (the branched model).
        threads: CPU threads of every contender.
        runs: timed steps per contender in all; warmup: untimed steps first.
        rounds: the timed steps are split into this many rounds.
        batch, size: images per step, height = width (pixels).
        precision: ``"float32"`` or ``"bfloat16"``.

    Returns:
        ``(rows, errors)``: one row per contender that ran (``runtime``
        ``keras-<backend>-train`` or ``torch-train``, ``images_per_s`` from
        the median step, the :func:`stats.summarize` fields, and
        ``round_medians_ms`` / ``noise_pct`` as in
        :func:`stats.interleaved_timings`); one line per contender that
        failed to start or crashed.

    Raises:
        ValueError: an unknown contender, or ``runs``/``rounds`` < 1.
    """
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise ValueError(f"Unknown training contenders {bad}; expected {CONTENDERS}")
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs}, {rounds}")
    rounds = min(rounds, runs)
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    procs, logs, errors = {}, {}, []

    def failed(c, what):
        proc = procs.pop(c)
        proc.kill()
        rc = proc.wait()
        logs[c].seek(0)
        hint = ""
        if rc < 0 and c == "tensorflow" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0":
            hint = f" (killed by signal {-rc}: {ONEDNN_HINT})"  # docs/onednn_crash.md
        errors.append(f"{c} train: {what} (rc {rc}){hint}: {logs[c].read()[-1500:].strip()}")

    for c in contenders:  # one at a time: a warm-up never overlaps another's
        spec = {"contender": c, "variant": variant, "threads": threads, "warmup": warmup,
                "batch": batch, "size": size, "precision": precision}
        logs[c] = tempfile.TemporaryFile("w+")  # a full stderr pipe would block it
        procs[c] = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(spec)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=logs[c], text=True, env=_thread_env(c, threads))
        if procs[c].stdout.readline().strip() != READY:
            failed(c, "did not start")
    times = {c: [] for c in procs}
    for r in range(rounds):
        for c in list(procs):
            try:
                procs[c].stdin.write(f"{per_round[r]}\n")
                procs[c].stdin.flush()
                times[c].append(json.loads(procs[c].stdout.readline()))
            except (OSError, ValueError):
                failed(c, f"crashed in round {r + 1}")
                del times[c]
    for p in procs.values():
        p.stdin.close()
        p.wait()
    for log in logs.values():
        log.close()
    rows = []
    for c, per_round_times in times.items():
        s = stats.summarize([t for rnd in per_round_times for t in rnd])
        medians = [float(np.median(rnd)) * 1e3 for rnd in per_round_times]
        rows.append({"model": f"mobileone_{variant}", "form": "branched",
                     "runtime": "torch-train" if c == "timm" else f"keras-{c}-train",
                     "threads": threads, "batch": batch, "precision": precision,
                     "images_per_s": batch / (s["median_ms"] / 1e3), **s,
                     "round_medians_ms": medians,
                     "noise_pct": 100.0 * (max(medians) - min(medians)) / s["median_ms"]})
    return rows, errors


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("internal entry point: use scripts/benchmark.py --mode train")
    serve(json.loads(sys.argv[1]))
