"""timm's PyTorch MobileOne, timed in its own interpreter.

PyTorch must never share a process with TensorFlow, so :func:`run_torch`
starts ``python -m mobileone_tf.benchmark.torch_worker SPEC_JSON``; that
process imports torch, timm and :mod:`mobileone_tf.benchmark.stats` (NumPy
only) -- never TensorFlow -- times the models with the same interleaved
rounds as the TensorFlow runtimes, and prints one line
``@@RESULT@@{"rows": [...], "torch": version, "timm": version}``.

Latency: timm ``mobileone_<v>`` re-parameterized
(``timm.utils.model.reparameterize_model``), eval, ``torch.inference_mode``,
NCHW float32 ``(1, 3, size, size)`` uniform 0..255. (timm's training step
is timed by :mod:`mobileone_tf.benchmark.train_steps`.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mobileone_tf.benchmark import stats

RESULT_MARK = "@@RESULT@@"


def torch_available() -> bool:
    """Whether torch and timm are installed (without importing them)."""
    from importlib.util import find_spec
    return find_spec("torch") is not None and find_spec("timm") is not None


def run_torch(spec: dict, timeout: float = 1800) -> dict:
    """Runs this module in a fresh interpreter and returns its result.

    Args:
        spec: ``{"mode": "latency", "variants": [...], "threads",
            "runs", "warmup", "rounds"?, "size", "batch"}``.
        timeout: seconds.

    Returns:
        ``{"rows": [...], "torch": str, "timm": str}``; the rows have
        runtime ``"torch"`` and the :func:`~mobileone_tf.benchmark.stats.
        interleaved_timings` fields.

    Raises:
        RuntimeError: the subprocess failed (with the end of its stderr).
        subprocess.TimeoutExpired: it ran longer than ``timeout``.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"timm subprocess failed (rc {proc.returncode}): "
                       f"{proc.stderr[-2000:]}")


def _latency(spec, torch, timm):
    from timm.utils.model import reparameterize_model
    models = [reparameterize_model(timm.create_model(f"mobileone_{v}", pretrained=False).eval())
              for v in spec["variants"]]
    x = torch.rand(1, 3, spec["size"], spec["size"]) * 255
    with torch.inference_mode():
        timings = stats.interleaved_timings([lambda m=m: m(x) for m in models], spec["runs"],
                                            spec["warmup"], spec.get("rounds", 1))
    return [{"model": f"mobileone_{v}", "form": "fused", "runtime": "torch",
             "threads": spec["threads"],
             "params": int(sum(p.numel() for p in m.parameters())), **s}
            for v, m, s in zip(spec["variants"], models, timings)]


def main(spec: dict) -> dict:
    """Runs ``spec`` (see :func:`run_torch`) in this process; imports torch."""
    import timm
    import torch
    torch.set_num_threads(int(spec["threads"]))
    rows = _latency(spec, torch, timm)
    return {"rows": rows, "torch": torch.__version__, "timm": timm.__version__}


if __name__ == "__main__":
    print(RESULT_MARK + json.dumps(main(json.loads(sys.argv[1]))), flush=True)
