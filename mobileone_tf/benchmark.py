"""Latency, MACs and throughput benchmark for MobileOne and mobile baselines.

What it measures (the paper's Sec. 3.1 / 4 argument: MACs and parameter
counts do not predict latency; activations and branches do):

* latency at batch 1, 224x224 NHWC float32 input, after ``warmup`` runs,
  median and p90 (milliseconds) over ``runs`` runs, for Keras
  (``tf.function``), TFLite (``ai_edge_litert`` Interpreter with its default
  XNNPACK delegate; float32, float16 and int8 models) and ONNX Runtime, at each
  thread count. TensorFlow's thread pools can only be set before TF starts,
  so every thread count runs in its own subprocess
  (``python -m mobileone_tf.benchmark --worker SPEC``);
* for every model: parameters, multiply-accumulates (MACs, counted by
  :func:`count_macs` from the Keras graph), model file size, achieved GFLOP/s
  (``2 * MACs / latency``) and its ratio to the float32 GEMM peak measured in
  the same subprocess at the same thread count (:func:`gemm_peak`);
* studies on TFLite (the paper's Tables 3 and 4): activations of a 30-layer
  conv net, architectural blocks (+SE, +skip), and MACs/params vs latency
  rank correlation (Fig. 1);
* training throughput (images/s) of a branched model vs timm's PyTorch
  MobileOne, each in a subprocess (TF and torch must not share a process).

MAC convention (:func:`count_macs`): convolutions (incl. grouped and
depthwise) and dense layers only: ``H_out * W_out * C_out * k_h * k_w *
C_in / groups``; BatchNorm, activations, pooling, padding, additions and the
squeeze-excite scaling multiply are elementwise and not counted (they are
reported separately as ``elementwise`` by :func:`count_macs_detail`). With
this convention keras.applications MobileNetV2 counts 300.8 M MACs (Keras
docs: 300 M) and fused MobileOne-S0 275 M (paper Table 7: 275 M).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from mobileone_tf import fileio

# Published ImageNet-1k top-1 (%) of the baselines, from the Keras
# applications documentation (keras.io/api/applications/ table; MobileNetV3
# page for V3: Large 1.0 224 = 75.6, Small 1.0 224 = 68.1).
BASELINE_TOP1 = {
    "mobilenet_v2": 71.3,
    "mobilenet_v3_small": 68.1,
    "mobilenet_v3_large": 75.6,
    "efficientnet_b0": 77.1,
}
BASELINES = tuple(BASELINE_TOP1)
TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")
RUNTIMES = ("keras", "tflite", "onnx", "torch")
IMAGE_SIZE = 224
TRAIN_BATCH = 32


# ---------------------------------------------------------------------------
# Machine description and small statistics
# ---------------------------------------------------------------------------
def machine_info() -> dict:
    """CPU model (``/proc/cpuinfo``), logical cores, ISA flags of interest,
    Python and library versions, and the UTC date."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu in ("unknown", "", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "tensorflow", "keras", "ai_edge_litert", "onnxruntime",
                "tf2onnx"):
        versions[mod] = _version(mod)
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "isa": sorted(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni",
                                  "avx_vnni", "neon") if f in flags),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "date_utc": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
    }


def _version(module: str) -> str | None:
    try:
        from importlib import metadata
        return metadata.version(module.replace("_", "-"))
    except Exception:  # noqa: BLE001 - not installed
        return None


def summarize(times_s) -> dict:
    """Latency statistics in milliseconds from per-run seconds."""
    t = np.asarray(times_s, np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "mean_ms": float(t.mean()), "min_ms": float(t.min()), "runs": int(t.size)}


def time_callable(fn, runs: int, warmup: int) -> dict:
    """Calls ``fn()`` ``warmup`` times, then times ``runs`` calls
    (``time.perf_counter``); returns :func:`summarize` of them."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(max(0, warmup)):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return summarize(times)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (like scipy's)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks).

    Raises:
        ValueError: fewer than 3 pairs or different lengths.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"need >= 3 paired values, got {x.shape} and {y.shape}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / den) if den else float("nan")


# ---------------------------------------------------------------------------
# MAC counting over Keras layers
# ---------------------------------------------------------------------------
def _conv_macs(out_shape, kernel_shape, groups=1) -> int:
    _, h, w, cout = out_shape
    kh, kw, cin_per_group, _ = kernel_shape
    return int(h) * int(w) * int(cout) * int(kh) * int(kw) * int(cin_per_group)


def _flat_layers(model):
    from mobileone_tf.models import _all_layers  # lazy: keeps TF out of --help
    return _all_layers(model)


def count_macs_detail(model) -> dict:
    """MACs of a built functional Keras 3 model with static spatial shapes.

    Counts ``Conv2D`` (incl. ``groups``), ``DepthwiseConv2D``, ``Dense`` and
    :class:`mobileone_tf.layers.MobileOneBlock` (every branch conv; BN and the
    identity branch are elementwise), per image (batch dimension ignored).

    Returns:
        dict ``{"conv": int, "depthwise": int, "dense": int, "total": int,
        "elementwise": int}``; ``total`` = conv + depthwise + dense (the MAC
        convention of the module docstring); ``elementwise`` counts the
        squeeze-excite / ``Multiply`` products, not included in ``total``.

    Raises:
        ValueError: if a counted layer has an unknown spatial size.
    """
    import keras
    from mobileone_tf.layers import MobileOneBlock
    out = {"conv": 0, "depthwise": 0, "dense": 0, "elementwise": 0}

    def shape(t):
        s = tuple(t.shape)
        if any(d is None for d in s[1:]):
            raise ValueError(f"Layer needs static shapes to count MACs, got {s}; "
                             "build the model with a fixed input_shape.")
        return s

    for layer in _flat_layers(model):
        if isinstance(layer, MobileOneBlock):
            o = shape(layer.output)
            h, w = o[1], o[2]
            cin, cout, k = layer.in_channels, layer.filters, layer.kernel_size
            per = cin if layer.depthwise else cin * cout
            key = "depthwise" if layer.depthwise else "conv"
            macs = h * w * per * k * k * layer.num_conv_branches
            if layer.conv_scale is not None:
                macs += h * w * per
            out[key] += macs
            if layer.use_se:
                rd = layer.se_reduce.filters
                out["conv"] += 2 * cout * rd
                out["elementwise"] += h * w * cout
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            o = shape(layer.output)
            kh, kw = layer.kernel_size
            out["depthwise"] += o[1] * o[2] * o[3] * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            o = shape(layer.output)
            out["conv"] += _conv_macs(o, layer.kernel.shape, layer.groups)
        elif isinstance(layer, keras.layers.Dense):
            o = shape(layer.output)
            lead = int(np.prod([d for d in o[1:-1]])) if len(o) > 2 else 1
            out["dense"] += lead * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
        elif isinstance(layer, keras.layers.Multiply):
            out["elementwise"] += int(np.prod(shape(layer.output)[1:]))
    out["total"] = out["conv"] + out["depthwise"] + out["dense"]
    return out


def count_macs(model) -> int:
    """Total MACs per image (see :func:`count_macs_detail`)."""
    return count_macs_detail(model)["total"]


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------
def model_names(variants, baselines=True) -> list:
    names = [f"mobileone_{v.lower()}" for v in variants]
    return names + (list(BASELINES) if baselines else [])


def build_model(name: str, form: str = "fused", image_size: int = IMAGE_SIZE):
    """A Keras 3 model with a fixed batch-1 NHWC float32 input.

    Args:
        name: ``mobileone_s0``..``mobileone_s4``, one of :data:`BASELINES`,
            or ``study_*`` (see :func:`study_net`).
        form: ``fused`` or ``branched`` (MobileOne only; baselines ignore it).

    Random weights (``weights=None``). The fused MobileOne is ``fuse()`` of
    the random branched model, not a randomly initialised fused model: with
    no identity branch folded in, the latter's activations shrink ~1e-35 by
    stage 4 and float32 denormals slow x86 kernels that do not flush them
    (ONNX Runtime ran S4's last 1x1 conv in 117 ms instead of ~2 ms). Real
    fused weights, like these, keep activations in the normal range.
    """
    import keras
    inp = keras.Input(batch_shape=(1, image_size, image_size, 3), name="image")
    if name.startswith("mobileone_"):
        from mobileone_tf.models import MobileOne
        if form not in ("fused", "branched"):
            raise ValueError(f"form must be 'fused' or 'branched', got {form!r}")
        # input_shape, not input_tensor: the export helper wants a single
        # model.input tensor; the runners/converters fix the batch to 1.
        from mobileone_tf.models import fuse
        model = MobileOne(name.split("_", 1)[1], weights=None,
                          input_shape=(image_size, image_size, 3), name=name)
        return fuse(model) if form == "fused" else model
    apps = keras.applications
    builders = {
        "mobilenet_v2": apps.MobileNetV2,
        "mobilenet_v3_small": apps.MobileNetV3Small,
        "mobilenet_v3_large": apps.MobileNetV3Large,
        "efficientnet_b0": apps.EfficientNetB0,
    }
    if name in builders:
        return builders[name](weights=None, input_tensor=inp)
    if name.startswith("study_"):
        return study_net(name[len("study_"):], image_size)
    raise ValueError(f"Unknown model {name!r}; expected mobileone_s0..s4, "
                     f"{', '.join(BASELINES)} or study_<activation|block>.")


def top1(name: str):
    """Published top-1 (%): Apple's for MobileOne, Keras' for the baselines."""
    if name.startswith("mobileone_"):
        from mobileone_tf.variants import get_variant
        return get_variant(name.split("_", 1)[1]).top1
    return BASELINE_TOP1.get(name)


# -- the paper's latency study networks (Tables 3 and 4) ---------------------
STUDY_ACTIVATIONS = ("relu", "gelu", "silu", "hard_swish", "se_relu")
STUDY_BLOCKS = ("baseline", "se", "skip")
STUDY_WIDTH = 64
STUDY_DEPTH = 30


def study_net(kind: str, image_size: int = IMAGE_SIZE):
    """The 30-layer convolutional network of the paper's latency study.

    The paper (Sec. 3.1, Tables 3-4) does not publish its exact layout; ours:
    3x3 conv stride 2 (3->32), 3x3 conv stride 2 (32->64), then 28 3x3 convs
    64->64 at stride 1 (56x56 for a 224 input), each followed by the
    activation, then global average pool. Dynamic ReLU is not included (not
    implementable faithfully with standard TFLite ops; see docs).

    Args:
        kind: an activation of :data:`STUDY_ACTIVATIONS` (``se_relu`` = ReLU
            with a squeeze-excite, ratio 1/16, after every conv), or a block
            of :data:`STUDY_BLOCKS` (``baseline`` = ReLU, ``se`` = the
            se_relu net, ``skip`` = ReLU with an identity skip around every
            stride-1 conv).
    """
    import keras
    L = keras.layers
    if kind not in STUDY_ACTIVATIONS + STUDY_BLOCKS:
        raise ValueError(f"Unknown study network {kind!r}; expected one of "
                         f"{STUDY_ACTIVATIONS + STUDY_BLOCKS}")
    act = {"baseline": "relu", "skip": "relu", "se": "relu", "se_relu": "relu"}.get(kind, kind)
    use_se = kind in ("se", "se_relu")
    inp = keras.Input(batch_shape=(1, image_size, image_size, 3), name="image")

    def block(x, filters, strides):
        y = L.Conv2D(filters, 3, strides=strides, padding="same")(x)
        y = L.Activation(act)(y)
        if use_se:
            s = L.GlobalAveragePooling2D(keepdims=True)(y)
            s = L.Conv2D(max(1, filters // 16), 1, activation="relu")(s)
            s = L.Conv2D(filters, 1, activation="sigmoid")(s)
            y = L.Multiply()([y, s])
        if kind == "skip" and strides == 1 and x.shape[-1] == filters:
            y = L.Add()([x, y])
        return y

    x = block(inp, STUDY_WIDTH // 2, 2)
    x = block(x, STUDY_WIDTH, 2)
    for _ in range(STUDY_DEPTH - 2):
        x = block(x, STUDY_WIDTH, 1)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, x, name=f"study_{kind}")


# ---------------------------------------------------------------------------
# Conversion (cached files)
# ---------------------------------------------------------------------------
def _calibration(n=8, image_size=IMAGE_SIZE, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield [rng.uniform(0, 255, (1, image_size, image_size, 3)).astype(np.float32)]


def to_tflite(model, path, quantize: str = "float32") -> str:
    """Writes a TFLite flatbuffer (fixed batch of the model's input).

    MobileOne models go through ``mobileone_tf.export.to_tflite`` (the
    deployed path; ``fuse=False`` so the given form is kept); baselines,
    study nets and int8 MobileOne without a calibration folder
    (env ``MOBILEONE_BENCH_CALIBRATION``) use
    ``tf.lite.TFLiteConverter.from_keras_model``. int8 is full-integer with
    float32 I/O; random-image calibration is fine for latency, not accuracy.
    """
    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {TFLITE_QUANTIZATIONS}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    calib = os.environ.get("MOBILEONE_BENCH_CALIBRATION")
    if model.name.startswith("mobileone_") and (quantize != "int8" or calib):
        # The project's export path (what users deploy). fuse=False: the
        # model is timed in the form it was built in (fused or branched).
        from mobileone_tf import export as mo_export
        mo_export.to_tflite(model, str(path), quantize="none" if quantize == "float32"
                            else quantize, calibration_data=calib, calibration_steps=8,
                            batch_size=1,
                            input_size=int(model.inputs[0].shape[1]), fuse=False,
                            overwrite=True, verify=False)
        return str(path)
    import tensorflow as tf
    if model.inputs[0].shape[0] is None:  # XNNPACK wants a fixed batch
        import keras
        inp = keras.Input(batch_shape=(1,) + tuple(model.inputs[0].shape[1:]), name="image")
        model = keras.Model(inp, model(inp), name=model.name)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        size = int(model.inputs[0].shape[1])
        conv.representative_dataset = lambda: _calibration(image_size=size)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    fileio.atomic_write(path, conv.convert())
    return str(path)


def to_onnx(model, path) -> str:
    """Writes an ONNX model (tf2onnx, opset 17, fixed batch 1)."""
    import tensorflow as tf
    import tf2onnx
    path = pathlib.Path(path)
    spec = [tf.TensorSpec((1,) + tuple(model.inputs[0].shape[1:]), tf.float32, name="image")]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    fileio.atomic_write(path, proto.SerializeToString())
    return str(path)


def tflite_graph_report(path, num_threads: int = 1) -> dict:
    """Op census of a TFLite file and XNNPACK coverage.

    Returns:
        ``{"ops": {op: count}, "delegated_ops": {...}, "delegate_partitions":
        n, "undelegated_ops": {...}, "all_delegated": bool}``. An op is
        delegated when it no longer appears in the interpreter's graph after
        the default XNNPACK delegate was applied (it is replaced by a
        ``DELEGATE`` node).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    plain = Interpreter(model_path=str(path), num_threads=num_threads,
                        experimental_op_resolver_type=
                        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    ops = _op_counts(plain)
    xnn = Interpreter(model_path=str(path), num_threads=num_threads)
    xnn.allocate_tensors()
    # The node list keeps the replaced nodes; the DELEGATE nodes appended by
    # XNNPACK say which tensors they consume and produce. Everything is
    # delegated when one partition reads the graph input and writes the
    # graph output.
    delegates = [d for d in xnn._get_ops_details()  # noqa: SLF001
                 if d["op_name"] == "DELEGATE"]
    graph_in = {d["index"] for d in xnn.get_input_details()}
    graph_out = {d["index"] for d in xnn.get_output_details()}
    whole = any(graph_in <= set(map(int, d["inputs"])) and
                graph_out <= set(map(int, d["outputs"])) for d in delegates)
    return {"ops": ops, "delegate_partitions": len(delegates),
            "undelegated_ops": {} if whole else {"unknown": -1},
            "all_delegated": len(delegates) == 1 and whole}


def _op_counts(interp) -> dict:
    counts = {}
    for d in interp._get_ops_details():  # noqa: SLF001 - only op census API
        counts[d["op_name"]] = counts.get(d["op_name"], 0) + 1
    return counts


# ---------------------------------------------------------------------------
# Runners (inside a worker subprocess with fixed threads)
# ---------------------------------------------------------------------------
def gemm_peak(threads: int, n: int = 1024, repeats: int = 8) -> dict:
    """Float32 GEMM peak (GFLOP/s): best of ``repeats`` n x n x n matmuls with
    NumPy (BLAS) and TensorFlow (Eigen), in this process (threads set by the
    caller: OMP/OPENBLAS env vars and tf.config.threading)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    flop = 2.0 * n ** 3

    def best(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return flop / min(ts) / 1e9

    res = {"numpy_gflops": best(lambda: a @ b)}
    import tensorflow as tf
    ta, tb = tf.constant(a), tf.constant(b)
    mm = tf.function(lambda: tf.linalg.matmul(ta, tb))
    res["tf_gflops"] = best(lambda: mm().numpy())
    res["gflops"] = max(res["numpy_gflops"], res["tf_gflops"])
    res.update(threads=threads, n=n)
    return res


def _input(size=IMAGE_SIZE):
    return np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)


def keras_runner(model):
    """A no-argument callable: one batch-1 forward pass of ``model`` through
    ``tf.function`` (inference mode, no XLA), result fetched to NumPy."""
    import tensorflow as tf
    x = tf.constant(_input(int(model.inputs[0].shape[1])))
    fn = tf.function(lambda t: model(t, training=False), jit_compile=False)
    return lambda: fn(x).numpy()


def tflite_runner(path, threads):
    """A no-argument callable: ``Interpreter.invoke`` of the ``.tflite`` file
    (``ai_edge_litert``, default XNNPACK delegate, ``threads`` threads); an
    int8/uint8 input gets the quantized image."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    x = _input(int(d["shape"][1]))
    if d["dtype"] != np.float32:
        scale, zero = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
    it.set_tensor(d["index"], x)
    return it.invoke


def onnx_runner(path, threads):
    """A no-argument callable: one ONNX Runtime (CPU) run of the ``.onnx`` file."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = _input(int(inp.shape[1]))
    return lambda: sess.run(None, {inp.name: x})


def run_keras(model, runs, warmup) -> dict:
    return time_callable(keras_runner(model), runs, warmup)


def run_tflite(path, threads, runs, warmup) -> dict:
    return time_callable(tflite_runner(path, threads), runs, warmup)


def run_onnx(path, threads, runs, warmup) -> dict:
    return time_callable(onnx_runner(path, threads), runs, warmup)


def interleaved_timings(fns, runs: int, warmup: int, rounds: int = 1) -> list:
    """Times several callables in ``rounds`` interleaved rounds.

    Each callable is warmed up ``warmup`` times first; then every round times
    about ``runs / rounds`` consecutive calls of each callable in turn, so a
    slow spell of the machine (another process, thermal or VM-steal) spreads
    over all models instead of biasing the one being timed at that moment.

    Args:
        fns: list of no-argument callables.
        runs: timed calls per callable in all (>= 1).
        warmup: untimed calls per callable before the first round.
        rounds: number of interleaved rounds (>= 1).

    Returns:
        One dict per callable: :func:`summarize` over all its timed calls, plus
        ``round_medians_ms`` and ``noise_pct`` = 100 x (max - min) / median of
        the round medians (the run-to-run spread the figure carries).
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be >= 1, got {runs}, {rounds}")
    rounds = min(rounds, runs)
    per_round = [runs // rounds + (r < runs % rounds) for r in range(rounds)]
    for fn in fns:
        for _ in range(max(0, warmup)):
            fn()
    times = [[[] for _ in range(rounds)] for _ in fns]
    for r in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(per_round[r]):
                t0 = time.perf_counter()
                fn()
                times[i][r].append(time.perf_counter() - t0)
    out = []
    for per_fn in times:
        stats = summarize([t for rnd in per_fn for t in rnd])
        medians = [float(np.median(rnd)) * 1e3 for rnd in per_fn]
        stats["round_medians_ms"] = medians
        stats["noise_pct"] = 100.0 * (max(medians) - min(medians)) / stats["median_ms"]
        out.append(stats)
    return out


@dataclasses.dataclass
class Job:
    """One model to time in a worker (JSON-serializable)."""
    model: str
    form: str = "fused"
    runtimes: tuple = ("keras", "tflite", "onnx")
    quantizations: tuple = ("float32",)


def worker(spec: dict) -> dict:
    """Runs in a subprocess whose thread count is fixed (see :func:`main`).

    ``spec``: ``{"threads", "runs", "warmup", "workdir", "jobs": [Job dicts],
    "gemm": bool, "graph_report": bool, "image_size"}``. Returns
    ``{"gemm": ..., "rows": [...], "graphs": {...}, "errors": [...]}``.
    """
    import tensorflow as tf
    threads = int(spec["threads"])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    workdir = pathlib.Path(spec["workdir"])
    runs, warmup = int(spec["runs"]), int(spec["warmup"])
    size = int(spec.get("image_size", IMAGE_SIZE))
    out = {"threads": threads, "rows": [], "graphs": {}, "errors": []}
    if spec.get("gemm", True):
        out["gemm"] = gemm_peak(threads)
    # 1) build, convert and load everything; 2) time all of it in interleaved rounds
    targets = []  # (row without timings, runner, tag, runtime name)
    for job in spec["jobs"]:
        job = Job(**job)
        form = job.form if job.model.startswith("mobileone_") else "-"
        tag = f"{job.model}_{form}" if form != "-" else job.model
        try:
            model = build_model(job.model, job.form, size)
        except Exception as e:  # noqa: BLE001 - reported, run continues
            out["errors"].append(f"{tag}: build failed: {e}")
            continue
        base = {"model": job.model, "form": form, "threads": threads,
                "params": int(model.count_params()), "macs": count_macs(model),
                "top1": top1(job.model)}
        for runtime in job.runtimes:
            variants_ = job.quantizations if runtime == "tflite" else (None,)
            for q in variants_:
                name = runtime if q is None else f"tflite-{q}"
                try:
                    if runtime == "keras":
                        fn, size_b = keras_runner(model), None
                    elif runtime == "tflite":
                        path = workdir / f"{tag}_{q}.tflite"
                        if not path.exists():
                            to_tflite(model, path, q)
                        if spec.get("graph_report") and f"{tag}_{q}" not in out["graphs"]:
                            out["graphs"][f"{tag}_{q}"] = tflite_graph_report(path, threads)
                        fn, size_b = tflite_runner(path, threads), path.stat().st_size
                    elif runtime == "onnx":
                        path = workdir / f"{tag}.onnx"
                        if not path.exists():
                            to_onnx(model, path)
                        fn, size_b = onnx_runner(path, threads), path.stat().st_size
                    else:
                        raise ValueError(f"unknown runtime {runtime!r}")
                    fn()  # fails here, not in the middle of the timing rounds
                except Exception as e:  # noqa: BLE001 - reported, run continues
                    out["errors"].append(f"{tag} {name}: {type(e).__name__}: {e}")
                    continue
                targets.append(({**base, "runtime": name, "file_bytes": size_b}, fn, tag, name))
        print(f"[{threads} thr] prepared {tag}", flush=True)
    stats = interleaved_timings([t[1] for t in targets], runs, warmup,
                                int(spec.get("rounds", 1)))
    for (row, _, tag, name), st in zip(targets, stats):
        out["rows"].append({**row, **st})
        print(f"[{threads} thr] {tag:28s} {name:16s} median {st['median_ms']:8.2f} ms "
              f"(noise {st['noise_pct']:.0f}%)", flush=True)
    return out


# ---------------------------------------------------------------------------
# PyTorch (timm) in a subprocess: never import torch next to TensorFlow
# ---------------------------------------------------------------------------
_TORCH_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch, timm
spec = json.loads(sys.argv[1])
torch.set_num_threads(int(spec["threads"]))
from timm.utils.model import reparameterize_model
rows = []
if spec["mode"] == "latency":
    # interleaved_timings(), the same rounds and noise as the TF runtimes
    models = [reparameterize_model(timm.create_model(f"mobileone_{v}", pretrained=False).eval())
              for v in spec["variants"]]
    x = torch.rand(1, 3, spec["size"], spec["size"]) * 255
    with torch.inference_mode():
        stats = interleaved_timings([lambda m=m: m(x) for m in models], spec["runs"],
                                    spec["warmup"], spec.get("rounds", 1))
    for v, m, s in zip(spec["variants"], models, stats):
        rows.append({"model": f"mobileone_{v}", "form": "fused", "runtime": "torch",
                     "threads": spec["threads"],
                     "params": int(sum(p.numel() for p in m.parameters())), **s})
else:
    v = spec["variants"][0]
    m = timm.create_model(f"mobileone_{v}", pretrained=False).train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(spec["batch"], 3, spec["size"], spec["size"])
    y = torch.randint(0, 1000, (spec["batch"],))
    def step():
        opt.zero_grad(); loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward(); opt.step()
    s = time_callable(step, spec["runs"], spec["warmup"])
    rows.append({"model": f"mobileone_{v}", "form": "branched", "runtime": "torch-train",
                 "threads": spec["threads"], "batch": spec["batch"],
                 "images_per_s": spec["batch"] / (s["median_ms"] / 1e3), **s})
print("@@RESULT@@" + json.dumps({"rows": rows, "torch": torch.__version__,
                                 "timm": timm.__version__}))
"""


def torch_available() -> bool:
    from importlib.util import find_spec
    return find_spec("torch") is not None and find_spec("timm") is not None


def run_torch(spec: dict, timeout=1800) -> dict:
    """Runs the timm script in a fresh interpreter; ``spec`` keys: mode
    (latency|train), variants, threads, runs, warmup, size, batch."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    # this module imports TensorFlow (through the package), which must not
    # share a process with torch: the script gets the timing helpers' source
    import inspect
    helpers = "".join(inspect.getsource(f) + "\n" for f in
                      (summarize, time_callable, interleaved_timings))
    script = _TORCH_SCRIPT.replace("rows = []\n", helpers + "rows = []\n", 1)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    raise RuntimeError(f"timm subprocess failed (rc {proc.returncode}): "
                       f"{proc.stderr[-2000:]}")


def run_train_keras(variant: str, threads: int, runs: int, warmup: int,
                    batch: int = TRAIN_BATCH, size: int = IMAGE_SIZE) -> dict:
    """images/s of ``train_on_batch`` (SGD, sparse CE) of the branched model
    (in a worker subprocess: threads are fixed before TF starts)."""
    import keras
    from mobileone_tf.models import MobileOne
    model = MobileOne(variant, weights=None, input_shape=(size, size, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, (batch,)).astype(np.int32)
    s = time_callable(lambda: model.train_on_batch(x, y), runs, warmup)
    return {"model": f"mobileone_{variant}", "form": "branched", "runtime": "keras-train",
            "threads": threads, "batch": batch,
            "images_per_s": batch / (s["median_ms"] / 1e3), **s}


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------
def _spawn_worker(spec: dict, timeout=3600) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as d:
        spec_path, out_path = pathlib.Path(d) / "spec.json", pathlib.Path(d) / "out.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "mobileone_tf.benchmark",
                               "--worker", str(spec_path), str(out_path)],
                              env=env, timeout=timeout, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out_path.exists():
            hint = ""
            if proc.returncode < 0 and env.get("TF_ENABLE_ONEDNN_OPTS") != "0":
                # seen 2026-12-01: TF 2.21's oneDNN kernels segfault in the
                # branched S0 training step (128-224 px) on a Xeon with
                # AVX512-FP16; TF's own kernels run it
                hint = (f"\nthe worker was killed by signal {-proc.returncode}; TensorFlow's "
                        "oneDNN kernels crash on some CPUs: rerun with TF_ENABLE_ONEDNN_OPTS=0")
            raise RuntimeError(f"benchmark worker failed (rc {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}{hint}")
        return json.loads(out_path.read_text())


def _finish_rows(rows, gemm: dict):
    for r in rows:
        peak = gemm.get(r["threads"], {}).get("gflops")
        if r.get("macs") and r.get("median_ms"):
            r["gflops"] = 2.0 * r["macs"] / (r["median_ms"] / 1e3) / 1e9
            r["peak_ratio"] = r["gflops"] / peak if peak and r["runtime"].startswith(
                ("tflite-float32", "tflite-float16", "keras", "onnx", "torch")) else None
    return rows


def run(config: dict) -> dict:
    """Runs a benchmark described by ``config`` and returns the results dict.

    ``config`` keys (all optional): ``mode`` (``latency``|``train``),
    ``study`` (``None``|``activations``|``blocks``|``flops``), ``variants``
    (list of ``s0``..), ``runtimes`` (subset of :data:`RUNTIMES`), ``threads``
    (list of ints), ``forms`` (``fused``/``branched``), ``quantizations``
    (TFLite, applied to fused MobileOne and baselines; branched models get
    float32 only), ``baselines`` (bool or list of names), ``runs``,
    ``warmup``, ``rounds`` (the ``runs`` are split into this many rounds
    interleaved across all models of a thread count, see
    :func:`interleaved_timings`), ``workdir`` (model file cache), ``image_size``,
    ``models`` (explicit model names, overrides variants/baselines).

    Returns:
        ``{"machine", "config", "gemm": {threads: ...}, "rows": [...],
        "graphs", "errors", "study"?}``; each row has model, form, runtime,
        threads, median_ms, p90_ms, mean_ms, min_ms, runs, round_medians_ms,
        noise_pct, params, macs, file_bytes, top1, gflops, peak_ratio.
    """
    cfg = {"mode": "latency", "study": None, "variants": ["s0", "s1", "s2", "s3", "s4"],
           "runtimes": ["keras", "tflite", "onnx"], "threads": [1, 2],
           "forms": ["fused", "branched"], "quantizations": ["float32", "float16", "int8"],
           "baselines": True, "runs": 100, "warmup": 10, "rounds": 5, "workdir": None,
           "image_size": IMAGE_SIZE, "models": None}
    unknown = set(config) - set(cfg)
    if unknown:
        raise ValueError(f"Unknown benchmark config keys: {sorted(unknown)}")
    cfg.update({k: v for k, v in config.items() if v is not None})
    bad = set(cfg["runtimes"]) - set(RUNTIMES)
    if bad:
        raise ValueError(f"Unknown runtimes {sorted(bad)}; expected {RUNTIMES}")
    if set(cfg["quantizations"]) - set(TFLITE_QUANTIZATIONS):
        raise ValueError(f"quantizations must be in {TFLITE_QUANTIZATIONS}")
    if cfg["runs"] < 1 or cfg["warmup"] < 0 or cfg["rounds"] < 1:
        raise ValueError("runs and rounds must be >= 1 and warmup >= 0")
    workdir = cfg["workdir"] or tempfile.mkdtemp(prefix="mobileone_bench_")
    result = {"machine": machine_info(), "config": dict(cfg, workdir=str(workdir)),
              "gemm": {}, "rows": [], "graphs": {}, "errors": []}
    if cfg["mode"] == "train":
        return _run_train(cfg, result)
    if cfg["mode"] != "latency":
        raise ValueError(f"mode must be 'latency' or 'train', got {cfg['mode']!r}")
    jobs = _jobs(cfg)
    tf_runtimes = [r for r in cfg["runtimes"] if r != "torch"]
    for threads in cfg["threads"]:
        spec = {"threads": threads, "runs": cfg["runs"], "warmup": cfg["warmup"],
                "rounds": cfg["rounds"],
                "workdir": str(workdir), "image_size": cfg["image_size"],
                "graph_report": True, "gemm": True,
                "jobs": [dict(j.__dict__, runtimes=tuple(tf_runtimes)) for j in jobs]}
        out = _spawn_worker(spec)
        result["gemm"][threads] = out.get("gemm", {})
        result["rows"] += out["rows"]
        result["graphs"].update(out["graphs"])
        result["errors"] += out["errors"]
        if "torch" in cfg["runtimes"] and cfg["study"] is None:
            _torch_latency(cfg, threads, result)
    _finish_rows(result["rows"], result["gemm"])
    if cfg["study"] in ("flops", None):
        result["correlation"] = correlations(result["rows"])
    result["findings"] = findings(result)
    return result


def _jobs(cfg) -> list:
    q = tuple(cfg["quantizations"])
    study = cfg["study"]
    if study == "activations":
        return [Job(f"study_{a}", quantizations=q) for a in STUDY_ACTIVATIONS]
    if study == "blocks":
        return [Job(f"study_{b}", quantizations=q) for b in STUDY_BLOCKS]
    if cfg["models"]:
        names = list(cfg["models"])
    else:
        base = cfg["baselines"]
        names = model_names(cfg["variants"], baselines=False)
        names += list(BASELINES) if base is True else list(base or [])
    jobs = []
    for name in names:
        if name.startswith("mobileone_"):
            for form in cfg["forms"]:
                jobs.append(Job(name, form, quantizations=q if form == "fused"
                                else tuple(x for x in q if x == "float32") or q[:1]))
        else:
            jobs.append(Job(name, quantizations=q))
    return jobs


def _torch_latency(cfg, threads, result):
    if not torch_available():
        result["errors"].append("torch/timm not installed: torch runtime skipped")
        return
    try:
        out = run_torch({"mode": "latency", "variants": cfg["variants"], "threads": threads,
                         "runs": cfg["runs"], "warmup": cfg["warmup"],
                         "rounds": cfg.get("rounds", 1), "size": cfg["image_size"],
                         "batch": 1})
    except Exception as e:  # noqa: BLE001
        result["errors"].append(f"torch latency: {e}")
        return
    macs = {(r["model"]): r["macs"] for r in result["rows"]
            if r["form"] == "fused" and r.get("macs")}
    for r in out["rows"]:
        r.update(macs=macs.get(r["model"]), top1=top1(r["model"]), file_bytes=None)
        result["rows"].append(r)
    result["machine"]["versions"].update(torch=out["torch"], timm=out["timm"])


def _run_train(cfg, result):
    variant = cfg["variants"][0]
    for threads in cfg["threads"]:
        spec = {"threads": threads, "runs": cfg["runs"], "warmup": cfg["warmup"],
                "train": variant, "image_size": cfg["image_size"]}
        out = _spawn_worker(spec)
        result["rows"] += out["rows"]
        result["errors"] += out["errors"]
        if torch_available():
            try:
                t = run_torch({"mode": "train", "variants": [variant], "threads": threads,
                               "runs": cfg["runs"], "warmup": cfg["warmup"],
                               "size": cfg["image_size"], "batch": TRAIN_BATCH})
                result["rows"] += t["rows"]
            except Exception as e:  # noqa: BLE001
                result["errors"].append(f"torch train: {e}")
    return result


def correlations(rows) -> dict:
    """Spearman rank correlation of latency with MACs and with params, per
    (runtime, threads), over fused MobileOne + baselines (>= 3 models)."""
    out = {}
    groups = {}
    for r in rows:
        if r.get("form") == "branched" or not r.get("macs") or r["runtime"].endswith("train"):
            continue
        groups.setdefault((r["runtime"], r["threads"]), []).append(r)
    for (rt, th), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if len(rs) < 3:
            continue
        lat = [r["median_ms"] for r in rs]
        out[f"{rt}@{th}"] = {"n": len(rs),
                            "spearman_macs": spearman([r["macs"] for r in rs], lat),
                            "spearman_params": spearman([r["params"] for r in rs], lat)}
    return out


def findings(result) -> dict:
    """Derived figures: fused vs branched speed-up, int8 vs float32, peak
    ratio of fused float32 TFLite, and fused-graph minimality checks."""
    idx = {(r["model"], r["form"], r["runtime"], r["threads"]): r for r in result["rows"]}
    f = {"fused_speedup": [], "int8_vs_float32": [], "graph_checks": {}}
    for (m, form, rt, th), r in idx.items():
        if form == "fused" and (m, "branched", rt, th) in idx:
            b = idx[(m, "branched", rt, th)]
            f["fused_speedup"].append({"model": m, "runtime": rt, "threads": th,
                                       "speedup": b["median_ms"] / r["median_ms"]})
        if rt == "tflite-int8" and (m, form, "tflite-float32", th) in idx:
            fl = idx[(m, form, "tflite-float32", th)]
            f["int8_vs_float32"].append({"model": m, "threads": th,
                                         "speedup": fl["median_ms"] / r["median_ms"]})
    from mobileone_tf.variants import block_specs
    for key, g in result.get("graphs", {}).items():
        if not key.startswith("mobileone_") or "_fused_" not in key:
            continue
        variant = key.split("_")[1]
        specs = block_specs(variant)
        strided = sum(1 for s in specs if s.strides == 2)
        convs = g["ops"].get("CONV_2D", 0) + g["ops"].get("DEPTHWISE_CONV_2D", 0)
        se = sum(1 for s in specs if s.use_se)
        f["graph_checks"][key] = {
            "pad_ops": g["ops"].get("PAD", 0), "expected_pad_ops": strided,
            "conv_ops": convs, "expected_conv_ops": len(specs) + 2 * se,
            # the input Rescaling layer ("preprocessing") is one MUL + one ADD
            "add_ops": g["ops"].get("ADD", 0), "expected_add_ops": 1,
            "mul_ops": g["ops"].get("MUL", 0), "expected_mul_ops": se + 1,
            "all_delegated": g["all_delegated"], "undelegated": g["undelegated_ops"],
            "delegate_partitions": g["delegate_partitions"]}
    return f


# ---------------------------------------------------------------------------
# Device results import
# ---------------------------------------------------------------------------
def parse_benchmark_model(text: str) -> list:
    """Parses Android/Linux TFLite ``benchmark_model`` logs (one or more runs
    concatenated) into rows.

    Uses ``Graph: [path]``, ``Num threads: [n]``, ``Use xnnpack: [1]`` /
    ``Use gpu: [1]`` and the final ``count=... avg=... std=...`` line of the
    timed run (microseconds; ``median=``/``p90``-style fields are used when
    the build prints them, else median := avg). The model name, form and
    quantization are read from file names written by the export scripts,
    ``{model}_{form}_{quantization}.tflite`` (e.g. ``mobileone_s0_fused_int8``).
    """
    import re
    rows, cur = [], None

    def flush():
        if cur and "avg_us" in cur:
            rows.append(cur)

    for line in text.splitlines():
        m = re.search(r"Graph: \[(.+?)\]", line)
        if m:
            flush()
            cur = {"graph": m.group(1), "threads": 1, "delegate": "cpu"}
            continue
        if cur is None:
            continue
        m = re.search(r"Num threads: \[(\d+)\]", line)
        if m:
            cur["threads"] = int(m.group(1))
        if re.search(r"Use gpu: \[(1|true)\]", line, re.I):
            cur["delegate"] = "gpu"
        elif re.search(r"Use xnnpack: \[(1|true)\]", line, re.I) and cur["delegate"] != "gpu":
            cur["delegate"] = "xnnpack"
        if line.strip().startswith("count=") or " count=" in line:
            kv = dict(re.findall(r"(\w+)=([-\d.]+)", line))
            if "avg" in kv:
                cur.update(count=int(float(kv["count"])), avg_us=float(kv["avg"]),
                           std_us=float(kv.get("std", "nan")),
                           median_us=float(kv.get("median", kv.get("p50", kv["avg"]))),
                           p90_us=float(kv["p90"]) if "p90" in kv else None)
    flush()
    out = []
    for r in rows:
        model, form, quant = _split_model_file(r["graph"])
        out.append({"model": model, "form": form,
                    "runtime": f"tflite-{quant}-{r['delegate']}", "threads": r["threads"],
                    "median_ms": r["median_us"] / 1e3,
                    "p90_ms": r["p90_us"] / 1e3 if r["p90_us"] else None,
                    "mean_ms": r["avg_us"] / 1e3, "runs": r["count"],
                    "top1": top1(model), "source": "device"})
    return out


def _split_model_file(path: str):
    stem = pathlib.Path(path).name
    for suffix in (".tflite", ".mlpackage", ".mlmodel"):
        stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
    parts = stem.split("_")
    quant = parts[-1] if parts[-1] in TFLITE_QUANTIZATIONS + ("dynamic",) else "float32"
    if parts[-1] == quant:
        parts = parts[:-1]
    form = parts[-1] if parts and parts[-1] in ("fused", "branched") else "fused"
    if parts and parts[-1] == form:
        parts = parts[:-1]
    return "_".join(parts) or stem, form, quant


def parse_coreml_report(data: dict) -> list:
    """Rows from the CoreML performance-report JSON documented in
    docs/benchmark.md: ``{"device": str, "os": str, "results": [{"model":
    "mobileone_s0_fused_float16.mlpackage", "compute_units": "all",
    "median_ms": 0.9, "p90_ms"?: .., "runs"?: ..}]}`` (numbers copied from
    Xcode's Performance report, "Median" of the Prediction row)."""
    if not isinstance(data, dict) or "results" not in data:
        raise ValueError("CoreML report JSON needs a 'results' list (docs/benchmark.md)")
    rows = []
    for r in data["results"]:
        model, form, quant = _split_model_file(r["model"])
        rows.append({"model": model, "form": form,
                     "runtime": f"coreml-{quant}-{r.get('compute_units', 'all')}",
                     "threads": r.get("threads"), "median_ms": float(r["median_ms"]),
                     "p90_ms": r.get("p90_ms"), "mean_ms": r.get("mean_ms"),
                     "runs": r.get("runs"), "top1": top1(model), "source": "device",
                     "device": data.get("device")})
    return rows


def import_device_results(path) -> dict:
    """Reads a ``benchmark_model`` log (any text file) or a CoreML report
    JSON into a results dict with the same row format as :func:`run`.

    Raises:
        FileNotFoundError, ValueError: unreadable file or no results in it.
    """
    text = pathlib.Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        rows = parse_coreml_report(data)
        machine = {"device": data.get("device"), "os": data.get("os")}
    else:
        rows = parse_benchmark_model(text)
        machine = {"device": "from benchmark_model log " + pathlib.Path(path).name}
    if not rows:
        raise ValueError(f"No benchmark results found in {path} (expected benchmark_model "
                         "output with 'Graph: [...]' and 'count=... avg=...' lines, or "
                         "the CoreML JSON of docs/benchmark.md)")
    return {"machine": machine, "config": {"import": str(path)}, "gemm": {}, "rows": rows,
            "graphs": {}, "errors": []}


# ---------------------------------------------------------------------------
# Output: markdown, JSON, plots
# ---------------------------------------------------------------------------
TABLE_COLUMNS = ("model", "form", "runtime", "threads", "median_ms", "p90_ms", "noise_pct",
                 "params_m",
                 "macs_m", "file_mb", "gflops", "peak_pct", "top1")


def _cell(r, col):
    v = {"params_m": (r.get("params") or 0) / 1e6 or None,
         "macs_m": (r.get("macs") or 0) / 1e6 or None,
         "file_mb": (r.get("file_bytes") or 0) / 2 ** 20 or None,
         "peak_pct": None if r.get("peak_ratio") is None else 100 * r["peak_ratio"],
         }.get(col, r.get(col))
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if col in ("macs_m", "top1", "gflops", "peak_pct", "noise_pct") \
            else f"{v:.2f}"
    return str(v)


SUMMARY_RUNTIMES = ("keras", "tflite-float32", "tflite-float16", "tflite-int8", "onnx", "torch")


def summary_table(result: dict, threads=None) -> list:
    """Markdown lines: one row per model and form, median latency (ms) per
    runtime at ``threads`` (default: the largest thread count measured), with
    params, MACs, published top-1 and the TFLite float32 share of the GEMM peak."""
    rows = [r for r in result.get("rows", []) if "images_per_s" not in r and r.get("median_ms")]
    if not rows:
        return []
    threads = threads or max(r.get("threads") or 0 for r in rows)
    rows = [r for r in rows if r.get("threads") == threads]
    runtimes = [rt for rt in SUMMARY_RUNTIMES if any(r["runtime"] == rt for r in rows)]
    keys = sorted({(r["model"], r.get("form", "-")) for r in rows},
                  key=lambda k: (not k[0].startswith("mobileone_"), k[0], k[1] != "fused"))
    head = ["model", "form", "params (M)", "MACs (M)", "top-1 (%)"] + \
        [f"{rt} (ms)" for rt in runtimes] + ["tflite-float32 % GEMM peak"]
    lines = [f"Median latency at batch 1, {threads} thread(s):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, form in keys:
        mine = {r["runtime"]: r for r in rows if r["model"] == model and r.get("form", "-") == form}
        any_row = next(iter(mine.values()))
        cells = [model, form, _cell(any_row, "params_m"), _cell(any_row, "macs_m"),
                 _cell(any_row, "top1")]
        cells += [_cell(mine[rt], "median_ms") if rt in mine else "-" for rt in runtimes]
        cells.append(_cell(mine["tflite-float32"], "peak_pct") if "tflite-float32" in mine
                     else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def to_markdown(result: dict) -> str:
    """A markdown report: machine line, GEMM peak, latency table (sorted by
    runtime, threads, model), then findings and study/correlation tables."""
    m = result.get("machine", {})
    lines = [f"Machine: {m.get('cpu', m.get('device', '?'))}, "
             f"{m.get('logical_cores', '?')} logical cores, {m.get('date_utc', '')}; "
             + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v), ""]
    if result.get("gemm"):
        lines.append("Float32 GEMM peak: " + ", ".join(
            f"{t} thread(s) {g['gflops']:.0f} GFLOP/s" for t, g in result["gemm"].items()
            if g) + "")
        lines.append("")
    lines += summary_table(result)
    header = ["model", "form", "runtime", "threads", "median (ms)", "p90 (ms)", "noise (%)",
              "params (M)",
              "MACs (M)", "file (MB)", "GFLOP/s", "% GEMM peak", "top-1 (%)"]
    rows = [r for r in result["rows"] if "images_per_s" not in r]
    if rows:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in sorted(rows, key=lambda r: (r["runtime"], r.get("threads") or 0,
                                             r["model"], r.get("form", ""))):
            lines.append("| " + " | ".join(_cell(r, c) for c in TABLE_COLUMNS) + " |")
    train = [r for r in result["rows"] if "images_per_s" in r]
    if train:
        lines += ["", "| model | runtime | threads | batch | step median (ms) | images/s |",
                  "|---|---|---|---|---|---|"]
        for r in train:
            lines.append(f"| {r['model']} ({r['form']}) | {r['runtime']} | {r['threads']} | "
                         f"{r['batch']} | {r['median_ms']:.0f} | {r['images_per_s']:.1f} |")
    f = result.get("findings") or {}
    if f.get("fused_speedup"):
        lines += ["", "Fused vs branched speed-up: " + "; ".join(
            f"{s['model']} {s['runtime']}@{s['threads']}: {s['speedup']:.2f}x"
            for s in f["fused_speedup"])]
    if f.get("int8_vs_float32"):
        lines += ["", "TFLite int8 vs float32 speed-up: " + "; ".join(
            f"{s['model']}@{s['threads']}: {s['speedup']:.2f}x" for s in f["int8_vs_float32"])]
    if f.get("graph_checks"):
        lines += ["", "| fused TFLite graph | PAD (expected) | conv ops (expected) | ADD (expected) | "
                  "MUL (expected) | XNNPACK partitions | all ops delegated |",
                  "|---|---|---|---|---|---|---|"]
        for k, g in f["graph_checks"].items():
            lines.append(f"| {k} | {g['pad_ops']} ({g['expected_pad_ops']}) | "
                         f"{g['conv_ops']} ({g['expected_conv_ops']}) | "
                         f"{g['add_ops']} ({g['expected_add_ops']}) | "
                         f"{g['mul_ops']} ({g['expected_mul_ops']}) | "
                         f"{g['delegate_partitions']} | {g['all_delegated']} |")
    if result.get("correlation"):
        lines += ["", "| runtime@threads | models | Spearman(latency, MACs) | "
                  "Spearman(latency, params) |", "|---|---|---|---|"]
        for k, c in result["correlation"].items():
            lines.append(f"| {k} | {c['n']} | {c['spearman_macs']:.2f} | "
                         f"{c['spearman_params']:.2f} |")
    if result.get("errors"):
        lines += ["", "Errors / skipped: " + "; ".join(result["errors"])]
    return "\n".join(lines) + "\n"


def write_json(result: dict, path):
    fileio.write_json(result, path, indent=1, default=str)


def write_markdown(result: dict, path):
    fileio.atomic_write(path, to_markdown(result))


def plot(result: dict, path, runtime: str = "tflite-float32", threads=None):
    """Two panels: latency vs top-1 (the paper's Fig. 6) and latency vs MACs,
    for one runtime and thread count (default: the largest measured)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if r["runtime"] == runtime and r.get("form") != "branched"]
    if threads is None and rows:
        threads = max(r["threads"] for r in rows)
    rows = [r for r in rows if r["threads"] == threads]
    if not rows:
        raise ValueError(f"No {runtime} rows to plot")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "top1", "ImageNet top-1 (%) (published)"),
                           (axes[1], "macs", "MACs (M)")):
        for family, marker in (("mobileone", "o"), ("other", "s")):
            pts = [r for r in rows if r.get(key) and
                   (r["model"].startswith("mobileone_") == (family == "mobileone"))]
            if not pts:
                continue
            xs = [r["median_ms"] for r in pts]
            ys = [r[key] / (1e6 if key == "macs" else 1) for r in pts]
            ax.plot(xs, ys, marker, linestyle="-" if family == "mobileone" else "",
                    label="MobileOne" if family == "mobileone" else "baselines")
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(r["model"].replace("mobileone_", "").replace("_", " "), (x, y),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"latency (ms), {runtime}, {threads} thread(s), batch 1, 224x224")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result.get("machine", {}).get("cpu", ""), fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------
def _worker_main(spec_path, out_path):
    spec = json.loads(pathlib.Path(spec_path).read_text())
    if "train" in spec:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(int(spec["threads"]))
        tf.config.threading.set_inter_op_parallelism_threads(1)
        rows, errors = [], []
        try:
            rows.append(run_train_keras(spec["train"], int(spec["threads"]), int(spec["runs"]),
                                        int(spec["warmup"]), size=int(spec["image_size"])))
        except Exception as e:  # noqa: BLE001
            errors.append(f"keras train: {type(e).__name__}: {e}")
        out = {"rows": rows, "errors": errors}
    else:
        out = worker(spec)
    fileio.atomic_write(out_path, json.dumps(out, default=str))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("internal entry point: use scripts/benchmark.py")
