"""Grouped branches (mobileone_tf.layers.grouped): the k kxk branches as one
convolution give the separate branches' outputs, gradients and BatchNorm
statistics, and the training-mode forward/backward of timm's MobileOne-S0
(PyTorch, in a subprocess) with the same weights."""

import numpy as np
import pytest
import tensorflow as tf

import mobileone_tf as mo
from mobileone_tf.layers import MobileOneBlock
from tests.helpers import rel_max_diff
from tests.torch_fixtures import torch_ref  # noqa: F401 (fixture)


def _pair(depthwise, k, kernel, strides, cin, cout, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 9, 11, cin)).astype("float32")
    blocks = [MobileOneBlock(cout, kernel, strides, depthwise=depthwise, num_conv_branches=k,
                             grouped_branches=g) for g in (True, False)]
    for b in blocks:
        b(x)
    weights = []
    for w in blocks[0].weights:
        v = rng.normal(size=w.shape).astype("float32") * 0.3
        if "variance" in w.path:
            v = np.abs(v) + 0.5
        if "gamma" in w.path:
            v += 1.0
        weights.append(v)
    for b in blocks:
        b.set_weights(weights)
    return x, blocks


@pytest.mark.parametrize("depthwise,k,kernel,strides,cin,cout", [
    (True, 4, 3, 1, 16, 16), (True, 4, 3, 2, 16, 16), (False, 4, 1, 1, 16, 32),
    (False, 3, 3, 2, 8, 24)])
@pytest.mark.parametrize("training", [False, True])
def test_grouped_equals_separate_branches(depthwise, k, kernel, strides, cin, cout, training):
    x, (grouped, separate) = _pair(depthwise, k, kernel, strides, cin, cout, seed=k + cout)
    before = [w.numpy() for w in separate.non_trainable_weights]
    xt = tf.constant(x)
    results = []
    for block in (grouped, separate):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = block(xt, training=training)
            loss = tf.reduce_sum(y * y)
        grads = tape.gradient(loss, [xt] + block.trainable_weights)
        results.append((y.numpy(), [g.numpy() for g in grads],
                        [w.numpy() for w in block.non_trainable_weights]))
    (yg, gg, sg), (ys, gs, ss) = results
    assert rel_max_diff(ys, yg) <= 1e-6
    for a, b in zip(gs, gg):  # input and every weight
        assert rel_max_diff(a, b) <= 1e-5
    for a, b in zip(ss, sg):  # moving mean/variance of every branch, updated alike
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(ss, before))
    assert (moved > 0) == training  # the statistics move in training mode only


@pytest.mark.parametrize("grouped", [True, False])
def test_grouped_model_matches_timm_in_training_mode(torch_ref, grouped):  # noqa: F811
    """S0 (k = 4 everywhere) with timm's weights, grouped branches, training
    mode: logits with batch statistics and the input gradient of
    sum(logits**2) equal timm's (PyTorch autograd, float64), within a few
    times PyTorch's own float32 error; both forms, so the separate branches
    are held to the same reference."""
    ref = np.load(torch_ref / "s0.npz")
    train = np.load(torch_ref / "s0_train.npz")
    x = tf.constant(train["x_nhwc"])
    model = mo.MobileOne("s0", weights=str(torch_ref / "s0_timm.pth"),
                         include_preprocessing=False, classifier_activation=None,
                         input_shape=x.shape[1:])
    blocks = [la for la in model.layers if isinstance(la, MobileOneBlock)]
    for block in blocks:
        block.grouped_branches = grouped
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=True)
        loss = tf.reduce_sum(logits ** 2)
    grad = tape.gradient(loss, x).numpy()
    # training-mode BatchNorm over 32 values per channel (stage 4) amplifies
    # rounding: held to 4x PyTorch's own float32 error against its float64 run
    for key, got in (("logits", logits.numpy()), ("grad_nhwc", grad)):
        torch32 = rel_max_diff(train[key], train[f"{key}_float32"])
        assert rel_max_diff(train[key], got) <= max(4 * torch32, 1e-5), (key, torch32)
    # fuse() of the grouped model: its eval-mode logits are timm's eval logits
    fresh = mo.MobileOne("s0", weights=str(torch_ref / "s0_timm.pth"),
                         include_preprocessing=False, classifier_activation=None,
                         input_shape=ref["x_nhwc"].shape[1:])
    for block in fresh.layers:
        if isinstance(block, MobileOneBlock):
            block.grouped_branches = True
    fused = mo.fuse(fresh)(tf.constant(ref["x_nhwc"]), training=False).numpy()
    assert rel_max_diff(ref["logits"], fused) <= 1e-4
