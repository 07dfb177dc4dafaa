"""What the benchmark machine is (CPU, ISA, library versions) and what it can
do at best (the float32 GEMM peak every model's achieved GFLOP/s is compared
with). TensorFlow is imported only by :func:`gemm_peak`, inside a worker."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
from importlib import metadata

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.benchmark import stats

ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "neon")
VERSIONED = ("numpy", "tensorflow", "keras", "ai_edge_litert", "onnxruntime", "tf2onnx")


@mobileone_export("mobileone_tf.benchmark")
def machine_info() -> dict:
    """Machine description for a results file.

    Returns:
        ``{"cpu": str (``/proc/cpuinfo`` model name), "logical_cores": int,
        "isa": [flags of :data:`ISA_FLAGS` present], "platform", "python",
        "versions": {distribution: version or None}, "date_utc": str}``.
    """
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
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "isa": sorted(f for f in ISA_FLAGS if f in flags),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {mod: version(mod) for mod in VERSIONED},
        "date_utc": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"),
    }


def version(module: str) -> str | None:
    """Installed version of a distribution (``_`` read as ``-``), or None."""
    try:
        return metadata.version(module.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def gemm_peak(threads: int, n: int = 1024, repeats: int = 8) -> dict:
    """Float32 GEMM peak of this process.

    Best of ``repeats`` ``n x n x n`` matmuls with NumPy (BLAS) and with
    TensorFlow (Eigen), after one untimed call each. The thread count is set
    by the caller (OMP/OPENBLAS env vars and ``tf.config.threading``) and only
    recorded here.

    Returns:
        ``{"numpy_gflops", "tf_gflops", "gflops" (the larger), "threads", "n"}``
        (GFLOP/s = 2 n^3 / seconds / 1e9).
    """
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    flop = 2.0 * n ** 3

    def best(fn):
        return flop / (stats.time_callable(fn, repeats, warmup=1)["min_ms"] / 1e3) / 1e9

    res = {"numpy_gflops": best(lambda: a @ b)}
    import tensorflow as tf
    ta, tb = tf.constant(a), tf.constant(b)
    mm = tf.function(lambda: tf.linalg.matmul(ta, tb))
    res["tf_gflops"] = best(lambda: mm().numpy())
    res["gflops"] = max(res["numpy_gflops"], res["tf_gflops"])
    res.update(threads=threads, n=n)
    return res
