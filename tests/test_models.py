"""Builders, the block, fuse(): parameter counts against the paper's table and
timm's exact counts, fused-vs-branched equivalence (the branched graph is the
reference: it runs every conv/BN branch separately, the fused graph runs one
conv per block)."""

import numpy as np
import pytest
import keras

import mobileone_tf as mo
from mobileone_tf import layers as mo_layers
from mobileone_tf import models, variants
from tests.helpers import TIMM_PARAMS, randomize_batchnorm, rel_max_diff

VARIANTS = ["s0", "s1", "s2", "s3", "s4"]
STANDARD_FUSED_LAYERS = {
    "InputLayer", "Rescaling", "ZeroPadding2D", "Conv2D", "DepthwiseConv2D", "ReLU",
    "GlobalAveragePooling2D", "Multiply", "Dense", "GlobalMaxPooling2D",
}


def _images(n=2, size=224, width=None, seed=1):
    shape = (n, size, width or size, 3)
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


# Parameters of the inference (fused) form as the MobileOne paper prints them
# (Vasu et al., CVPR 2023, Table 7/8: millions, one decimal).
PAPER_PARAMS_M = {"s0": 2.1, "s1": 4.8, "s2": 7.8, "s3": 10.1, "s4": 14.8}


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts_match_paper_table(variant):
    branched = mo.MobileOne(variant, weights=None)
    fused = mo.MobileOne(variant, weights=None, fused=True)
    trainable = sum(int(np.prod(w.shape)) for w in branched.trainable_weights)
    assert (trainable, fused.count_params()) == TIMM_PARAMS[variant]
    assert round(fused.count_params() / 1e6, 1) == PAPER_PARAMS_M[variant]
    assert not fused.non_trainable_weights
    # the fused model is what fuse() makes of the branched one
    assert mo.fuse(branched).count_params() == fused.count_params()


@pytest.mark.parametrize("variant", VARIANTS)
def test_fuse_equivalence_with_and_without_top(variant):
    model = randomize_batchnorm(
        mo.MobileOne(variant, weights=None, classifier_activation=None), seed=3)
    fused = mo.fuse(model)
    assert {type(layer).__name__ for layer in fused.layers} <= STANDARD_FUSED_LAYERS
    x = _images()
    a, b = model.predict(x, verbose=0), fused.predict(x, verbose=0)
    assert rel_max_diff(a, b) <= 1e-5
    assert (a.argmax(-1) == b.argmax(-1)).all()

    # no top, another input size (stride-2 padding must stay PyTorch-like)
    features = keras.Model(model.input, model.get_layer("stage4_1").output)
    fused_features = mo.fuse(features)
    x = _images(1, 256, seed=2)
    a, b = features.predict(x, verbose=0), fused_features.predict(x, verbose=0)
    assert a.shape == (1, 8, 8, variants.VARIANTS[variant].num_features)
    assert rel_max_diff(a, b) <= 1e-5


def test_fused_builder_matches_fuse_layout():
    model = mo.MobileOne("s4", weights=None, include_top=False, pooling="avg")
    direct = mo.MobileOne("s4", weights=None, include_top=False, pooling="avg", fused=True)
    fused = mo.fuse(model)
    def layout(m):
        return [(l.name, type(l).__name__) for l in m.layers if not isinstance(l, keras.layers.InputLayer)]
    assert layout(fused) == layout(direct)
    # state moves between them by name
    models.assign_state(direct, models.get_state(fused))
    x = _images(1, 96)
    assert rel_max_diff(fused.predict(x, verbose=0), direct.predict(x, verbose=0)) == 0


def test_fuse_leaves_input_untouched_and_is_idempotent():
    model = randomize_batchnorm(mo.MobileOne("s0", weights=None), seed=4)
    before = [w.copy() for w in model.get_weights()]
    n_layers = len(model.layers)
    fused = mo.fuse(model)
    assert len(model.layers) == n_layers
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    again = mo.fuse(fused)
    assert again is not fused
    x = _images(1, 64)
    assert np.array_equal(fused.predict(x, verbose=0), again.predict(x, verbose=0))


def test_fuse_custom_head_model():
    backbone = mo.MobileOne("s1", weights=None, include_top=False, input_shape=(96, 96, 3))
    randomize_batchnorm(backbone, seed=5)
    inputs = keras.Input((96, 96, 3))
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="my_head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("my_head").set_weights(
        [np.random.default_rng(0).normal(size=(1280, 10)).astype("float32"), np.ones(10, "float32")])
    fused = mo.fuse(model)
    x = _images(2, 96)
    assert rel_max_diff(model.predict(x, verbose=0), fused.predict(x, verbose=0)) <= 1e-5


@pytest.mark.parametrize("depthwise,kernel_size,strides,branches,use_se,cin,cout", [
    (True, 3, 1, 4, False, 8, 8),     # depthwise with identity + scale + 4 branches
    (True, 3, 2, 2, True, 16, 16),    # stride 2: explicit pad, no identity, SE
    (False, 1, 1, 3, False, 8, 8),    # pointwise with identity, no scale branch
    (False, 1, 1, 1, True, 8, 16),    # pointwise widening, SE
    (False, 3, 2, 1, False, 3, 16),   # the stem
])
def test_block_fuse_against_branches(depthwise, kernel_size, strides, branches, use_se, cin, cout):
    block = mo_layers.MobileOneBlock(cout, kernel_size, strides, depthwise, branches, use_se)
    x = np.random.default_rng(0).normal(size=(2, 15, 15, cin)).astype("float32")
    y = keras.ops.convert_to_numpy(block(x, training=False))
    m = keras.Sequential([keras.Input((15, 15, cin)), block])
    randomize_batchnorm(m, seed=7)
    y = keras.ops.convert_to_numpy(block(x, training=False))
    assert y.shape == (2, -(-15 // strides), -(-15 // strides), cout)
    assert (block.identity is not None) == (cin == cout and strides == 1)
    assert (block.conv_scale is not None) == (kernel_size > 1)
    kernel, bias = block.fused_kernel_bias()
    assert kernel.dtype == np.float64
    deploy = block.fuse()  # the deploy-time layer: standard layers only
    assert not any(isinstance(layer, mo_layers.MobileOneBlock) for layer in deploy.layers)
    assert rel_max_diff(y, deploy.predict(x, verbose=0)) <= 1e-5
    spec = variants.BlockSpec("b", cin, cout, kernel_size, strides, depthwise, use_se, branches)
    inp = keras.Input((15, 15, cin))
    fused = keras.Model(inp, mo_layers.fused_block(inp, spec))
    fused.get_layer("b_conv").set_weights([kernel.astype("float32"), bias.astype("float32")])
    if use_se:
        fused.get_layer("b_se_reduce").set_weights(block.se_reduce.get_weights())
        fused.get_layer("b_se_expand").set_weights(block.se_expand.get_weights())
    assert rel_max_diff(y, fused.predict(x, verbose=0)) <= 1e-5


def test_pytorch_padding_for_stride_two():
    """A stride-2 3x3 conv must sample windows centred on even input pixels
    (PyTorch padding=1), not TF 'same' (which pads only after on even sizes)."""
    block = mo_layers.MobileOneBlock(1, 3, 2, depthwise=True, num_conv_branches=1)
    x = np.zeros((1, 8, 8, 1), "float32")
    x[0, 0, 0, 0] = 1.0  # only the top-left pixel is lit
    block.build(x.shape)
    kernel = np.zeros((3, 3, 1, 1), "float32")
    kernel[2, 2, 0, 0] = 1.0  # bottom-right tap: output(i,j) reads input(2i+1, 2j+1)
    block.conv_kxk[0].set_weights([kernel])
    block.conv_scale.set_weights([np.zeros((1, 1, 1, 1), "float32")])
    for bn in (block.bn_kxk[0], block.bn_scale):
        bn.set_weights([np.ones(1), np.zeros(1), np.zeros(1), np.ones(1) - 1e-5])
    y = keras.ops.convert_to_numpy(block(x, training=False))
    assert y.shape == (1, 4, 4, 1)
    assert y.sum() == 0  # with PyTorch padding no output reads pixel (0, 0) via that tap
    kernel[2, 2, 0, 0], kernel[1, 1, 0, 0] = 0.0, 1.0  # centre tap reads input(2i, 2j)
    block.conv_kxk[0].set_weights([kernel])
    y = keras.ops.convert_to_numpy(block(x, training=False))
    assert y[0, 0, 0, 0] == pytest.approx(1.0) and y.sum() == pytest.approx(1.0)


def test_load_fused_initialisation_is_exact():
    fused = mo.MobileOne("s0", weights=None, fused=True, classifier_activation=None)
    rng = np.random.default_rng(0)
    fused.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") for w in fused.get_weights()])
    branched = mo.MobileOne("s0", weights=None, classifier_activation=None)
    models.assign_state(branched, models.get_state(fused))
    x = _images(2, 64)
    assert rel_max_diff(fused.predict(x, verbose=0), branched.predict(x, verbose=0)) <= 1e-5
    # and fusing it back returns the original weights
    back = models.get_state(mo.fuse(branched))
    for key, value in models.get_state(fused).items():
        np.testing.assert_allclose(back[key], value, rtol=1e-5, atol=1e-6)


def test_assign_state_mismatch_changes_nothing():
    a = mo.MobileOne("s0", weights=None, fused=True)
    b = mo.MobileOne("s1", weights=None, fused=True)
    before = [w.copy() for w in a.get_weights()]
    with pytest.raises(ValueError, match="wrong shapes|expected"):
        models.assign_state(a, models.get_state(b))
    assert all(np.array_equal(x, y) for x, y in zip(before, a.get_weights()))
    state = models.get_state(b)
    del state["stem/reparam/bias"]
    with pytest.raises(ValueError, match="stem/reparam/bias"):
        models.assign_state(b, state)


@pytest.mark.parametrize("fused", [False, True])
def test_keras_saving_round_trip(test_tmp, fused):
    model = randomize_batchnorm(mo.MobileOne("s0", weights=None, input_shape=(64, 64, 3),
                                             include_top=False, pooling="avg"), seed=9)
    if fused:
        model = mo.fuse(model)
    path = test_tmp / f"s0_{fused}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _images(1, 64)
    assert np.array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    info = mo.model_info(loaded)
    assert (info["variant"], info["fused"], info["include_top"], info["pooling"]) == \
        ("s0", fused, False, "avg")
    assert info["input_shape"] == [64, 64, 3]


def test_fuse_nested_backbone_and_sequential():
    """A MobileOne nested in a larger model (a backbone inside a task model)
    and blocks inside a Sequential model are fused too; outputs unchanged."""
    backbone = randomize_batchnorm(mo.MobileOne("s1", weights=None, include_top=False,
                                                input_shape=(64, 96, 3)), seed=4)
    inp = keras.Input((64, 96, 3))
    feat = backbone(inp)
    out = keras.layers.Conv2D(5, 1, name="seg_head")(feat)
    outer = keras.Model(inp, keras.layers.UpSampling2D(32, name="up")(out), name="segmenter")
    fused = mo.fuse(outer)
    assert fused.name == "segmenter"
    assert not any(isinstance(layer, mo_layers.MobileOneBlock) for layer in models.all_layers(fused))
    info = mo.model_info(fused)
    assert info["nested"] and info["fused"] and info["variant"] == "s1"
    assert mo.model_info(outer)["fused"] is False  # the input model is untouched
    x = _images(2, 64, 96)
    assert rel_max_diff(outer.predict(x, verbose=0), fused.predict(x, verbose=0)) <= 1e-5

    seq = keras.Sequential([keras.Input((16, 16, 8)), mo_layers.MobileOneBlock(8, 3, 1, True, 2),
                            mo_layers.MobileOneBlock(16, 1, 1, False, 2), keras.layers.Flatten()])
    randomize_batchnorm(seq, seed=5)
    fused_seq = mo.fuse(seq)
    assert not any(isinstance(layer, mo_layers.MobileOneBlock) for layer in models.all_layers(fused_seq))
    z = np.random.default_rng(1).normal(size=(3, 16, 16, 8)).astype("float32")
    assert rel_max_diff(seq.predict(z, verbose=0), fused_seq.predict(z, verbose=0)) <= 1e-5


def test_model_info_errors():
    inp = keras.Input((32, 32, 3))
    plain = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
    with pytest.raises(ValueError, match="no recorded MobileOne configuration"):
        mo.model_info(plain)
    with pytest.raises(ValueError, match="functional keras.Model"):
        mo.fuse("not a model")


def test_preprocessing_inside_matches_torch_mode():
    with_pre = mo.MobileOne("s0", weights=None, fused=True, input_shape=(64, 64, 3))
    without = mo.MobileOne("s0", weights=None, fused=True, input_shape=(64, 64, 3),
                           include_preprocessing=False)
    models.assign_state(without, models.get_state(with_pre))
    x = _images(2, 64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    manual = ((x / 255.0 - mean) / std).astype("float32")
    np.testing.assert_allclose(mo.preprocess_input(x, include_preprocessing=False), manual,
                               rtol=1e-5, atol=1e-5)
    assert mo.preprocess_input(x) is x
    assert rel_max_diff(with_pre.predict(x, verbose=0),
                        without.predict(manual, verbose=0)) <= 1e-5


@pytest.mark.parametrize("kwargs,message", [
    (dict(variant="s9", weights=None), "Unknown MobileOne variant"),
    (dict(weights="imagenet", classes=10), "should be 1000"),
    (dict(weights="no/such/file.weights.h5"), "path to the weights file"),
    (dict(weights=None, pooling="mean", include_top=False), "`pooling` must be one of"),
    (dict(weights=None, input_shape=(16, 16, 3)), "at least 32x32"),
    (dict(weights=None, input_shape=(224, 224)), r"\(height, width, channels\)"),
    (dict(weights="imagenet", classifier_activation="relu"), "Only `None` and `softmax`"),
    (dict(weights=None, classes=0), "positive integer"),
])
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mo.MobileOne(**kwargs)


def test_block_argument_validation():
    with pytest.raises(ValueError, match="strides"):
        mo_layers.MobileOneBlock(8, 3, strides=3)
    with pytest.raises(ValueError, match="num_conv_branches"):
        mo_layers.MobileOneBlock(8, 3, num_conv_branches=0)
    with pytest.raises(ValueError, match="squeeze-excite needs at least 16"):
        mo_layers.MobileOneBlock(8, 3, use_se=True)(np.zeros((1, 8, 8, 8), "float32"))
    with pytest.raises(ValueError, match="filters == input channels"):
        mo_layers.MobileOneBlock(8, 3, depthwise=True)(np.zeros((1, 8, 8, 4), "float32"))


def test_variant_lookup_and_specs():
    assert variants.get_variant("S4") is variants.VARIANTS["s4"]
    assert variants.get_variant("mobileone_s2").name == "s2"
    specs = variants.block_specs("s4")
    assert len(specs) == 1 + 2 * sum(variants.NUM_BLOCKS)
    se = [s.name for s in specs if s.use_se]
    # last 5 pairs of stage 3 and the pair of stage 4, both halves
    assert se == [f"stage3_{j}" for j in range(10, 20)] + ["stage4_0", "stage4_1"]
    assert specs[0].filters == 64 and specs[-1].filters == 2048
