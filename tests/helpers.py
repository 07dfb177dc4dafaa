"""Shared test utilities."""

import numpy as np


def randomize_batchnorm(model, seed=0):
    """Random BatchNorm statistics and affine parameters (so that fusing is
    exercised with non-trivial mean/variance/gamma/beta)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        path = w.path
        if "moving_mean" in path:
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
        elif "moving_variance" in path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "gamma" in path:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
        elif "beta" in path:
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return model


def rel_max_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))
