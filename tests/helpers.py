"""Shared test utilities."""

import numpy as np

# Exact counts of an independent implementation: timm 1.0.31
# ``mobileone_sX`` (PyTorch), ``sum(p.numel() for p in parameters())`` of the
# training-time model and of ``timm.utils.model.reparameterize_model`` of it
# (BatchNorm running statistics are buffers, not parameters). The fused S0
# also equals Apple's released checkpoint (2,078,504, ../shared/data/README.md).
TIMM_PARAMS = {"s0": (5_293_272, 2_078_504), "s1": (4_825_192, 4_764_840),
               "s2": (7_884_648, 7_808_168), "s3": (10_170_600, 10_078_312),
               "s4": (14_951_248, 14_838_352)}


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


def colour_batch(n, size, classes=3, seed=0):
    """A tiny learnable data set: float32 ``(n, size, size, 3)`` RGB 0..240
    and int32 labels, class = the brightest colour channel."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    x = rng.uniform(0, 120, (n, size, size, 3)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, ..., c] += 120
    return x, y
