"""Timing statistics shared by every benchmark process.

Imports NumPy and the standard library only -- no TensorFlow, no torch -- so
the TensorFlow workers and the timm worker
(:mod:`mobileone_tf.benchmark.torch_worker`) time their models with the same
code. All latencies are wall-clock (``time.perf_counter``) and reported in
milliseconds.
"""

from __future__ import annotations

import time

import numpy as np


def summarize(times_s) -> dict:
    """Latency statistics of per-run times.

    Args:
        times_s: per-run times in seconds (any sequence of numbers).

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms"}`` (float, milliseconds)
        and ``"runs"`` (int).

    Raises:
        ValueError: no timings.
    """
    t = np.asarray(times_s, np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "mean_ms": float(t.mean()), "min_ms": float(t.min()), "runs": int(t.size)}


def time_callable(fn, runs: int, warmup: int) -> dict:
    """Calls ``fn()`` ``warmup`` times, then times ``runs`` calls.

    Returns:
        :func:`summarize` of the timed calls.

    Raises:
        ValueError: ``runs < 1``.
    """
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
        rounds: number of interleaved rounds (>= 1; at most ``runs`` are used).

    Returns:
        One dict per callable: :func:`summarize` over all its timed calls, plus
        ``round_medians_ms`` (list of float, ms) and ``noise_pct`` =
        100 x (max - min) / median of the round medians (the run-to-run spread
        the figure carries).

    Raises:
        ValueError: ``runs < 1`` or ``rounds < 1``.
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
