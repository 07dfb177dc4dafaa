"""Training-step checks of the KerasHub integration, run as a SCRIPT in a
subprocess with ``TF_ENABLE_ONEDNN_OPTS=0`` (TensorFlow 2.21's oneDNN
corrupts the heap in branched MobileOne training steps of these graphs on
some Xeons, which would take the pytest process down):

    python tests/hub_worker.py OUT_DIR

Writes ``OUT_DIR/results.json``: per check, the largest weight / BatchNorm
statistic change after one training step (``freeze_stages``, ``norm_eval``),
and the RetinaNet run (the loss of 5 steps on one batch, the encoder's
largest weight change, fused-vs-branched difference, ``.keras``
round trip, TFLite and ONNX export reports, Core ML spec checks).
"""

import json
import os
import sys

import numpy as np


def _changes(model, before):
    """{stage or 'head': {'weights': max |change| of trainable-by-default
    weights, 'stats': max |change| of BatchNorm moving statistics}}."""
    from mobileone_tf.hub import backbone
    out = {}
    for layer in model.layers:
        stage = backbone.stage_of(layer.name)
        key = "head" if stage is None else backbone.STAGES[stage]
        for w in layer.weights:
            kind = "stats" if "moving_" in w.path else "weights"
            diff = float(np.abs(w.numpy() - before[w.path]).max())
            entry = out.setdefault(key, {"weights": 0.0, "stats": 0.0})
            entry[kind] = max(entry[kind], diff)
    return out


def calibrate(encoder, x):
    """Sets every BatchNorm's moving statistics to the batch statistics of
    ``x`` (momentum 0 for one training-mode pass), so that inference-mode
    BatchNorm keeps the random network's activations O(1)."""
    from mobileone_tf.hub import backbone
    bns = [bn for layer in encoder.layers for bn in backbone.batchnorm_layers(layer)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    encoder(x, training=True)
    for bn, m in zip(bns, momenta):
        bn.momentum = m


def step(freeze_stages, norm_eval, seed=0):
    import keras
    from mobileone_tf import hub
    from mobileone_tf.hub import backbone
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 64, 64, 3)).astype("float32")
    encoder = hub.MobileOneBackbone("s0", image_shape=(64, 64, 3))
    calibrate(encoder, x)
    backbone.apply_finetuning(encoder, freeze_stages, norm_eval)
    pooled = keras.layers.GlobalAveragePooling2D()(encoder.output)
    model = keras.Model(encoder.input, keras.layers.Dense(3, name="head_dense")(pooled))
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    before = {w.path: w.numpy().copy() for w in model.weights}
    shifted = (2.0 * rng.normal(size=x.shape) + 0.5).astype("float32")  # other statistics
    model.fit(shifted, rng.integers(0, 3, 4), batch_size=4, epochs=1, verbose=0)
    return _changes(encoder, before)


def retinanet(out):
    import keras
    import keras_hub
    import mobileone_tf as mo
    from mobileone_tf import export, hub
    from mobileone_tf.layers import MobileOneBlock
    size = 64
    encoder = hub.MobileOneBackbone("s0", image_shape=(size, size, 3), include_preprocessing=True)
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3,
                                                  max_level=5, use_p5=False,
                                                  image_shape=(size, size, 3))
    det = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=3,
                                                   bounding_box_format="yxyx",
                                                   pre_logits_num_conv_layers=1)
    det.compile(optimizer=keras.optimizers.Adam(1e-4, global_clipnorm=1.0),
                run_eagerly=True)  # tracing the train step costs more than two eager steps
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, size, size, 3)).astype("float32")
    # 32x32 boxes centred on stride-8 anchor centres ((i + 0.5) * 8): each
    # matches a level-3 anchor (KerasHub's default size 4 x 8 = 32) with IoU 1.
    # Smaller or off-grid boxes match no anchor (IoU < 0.5): the loss is then
    # exactly 0 and nothing trains.
    centre = 8 * rng.integers(2, 6, (4, 2, 2)) + 4
    boxes = np.concatenate([centre - 16, centre + 16], -1)
    y = {"boxes": boxes.astype("float32"), "labels": rng.integers(0, 3, (4, 2)).astype("int32")}
    encoder_before = [np.array(w.numpy()) for w in encoder.trainable_weights]
    # one step per epoch on the same 2 images: each epoch's loss is that step's
    history = det.fit(x[:2], {k: v[:2] for k, v in y.items()}, batch_size=2, epochs=5,
                      verbose=0).history
    encoder_change = max(float(np.abs(w.numpy() - b).max())
                         for w, b in zip(encoder.trainable_weights, encoder_before))
    branched = det(x, training=False)
    fused = mo.fuse(det)
    after = fused(x, training=False)
    diff = {k: float(np.abs(np.asarray(branched[k]) - np.asarray(after[k])).max()
                     / np.abs(np.asarray(branched[k])).max()) for k in branched}
    path = os.path.join(out, "detector.keras")
    det.save(path)
    reloaded = keras.saving.load_model(path)
    loaded = reloaded(x, training=False)
    reload_diff = {k: float(np.abs(np.asarray(branched[k]) - np.asarray(loaded[k])).max())
                   for k in branched}
    raw = hub.raw_detections_model(fused)
    exports = {}
    for fmt, to in (("tflite", export.to_tflite), ("onnx", export.to_onnx)):
        _, report = to(raw, os.path.join(out, f"detector.{fmt}"), input_size=size,
                       verify_data=x)
        exports[fmt] = {"outputs": report["outputs"], "verification": report["verification"]}
    package = os.path.join(out, "detector.mlpackage")
    export.to_coreml(raw, package, input_size=size)
    coreml = export.coreml.check_coreml(package, raw)
    return {"loss": history["loss"], "encoder_change": encoder_change,
            "fused_class": type(fused).__name__,
            "fused_blocks": sum(isinstance(layer, MobileOneBlock)
                                for layer in mo.models.all_layers(fused)),
            "rel_diff": diff, "reload_diff": reload_diff, "export": exports,
            "coreml": {"checks": coreml["checks"], "outputs": coreml["outputs"]},
            "reloaded_class": type(reloaded).__name__}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    import time
    results, seconds = {}, {}
    checks = {"freeze2": lambda: step(2, False), "norm_eval": lambda: step(0, True),
              "plain": lambda: step(0, False), "retinanet": lambda: retinanet(out)}
    for name, check in checks.items():
        if name == "retinanet" and "--no-retinanet" in sys.argv:
            continue
        start = time.perf_counter()
        results[name] = check()
        seconds[name] = round(time.perf_counter() - start, 1)
    results["seconds"] = seconds
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
