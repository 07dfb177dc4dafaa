"""Core ML export (ML program ``.mlpackage``) and its spec-level checks.

The input is an ``ImageType`` ``"image"`` (RGB, ``H x W``, scale 1, bias 0:
the model normalizes inside, so ImageType's single scalar scale is not needed
and the per-channel ImageNet std stays exact). A model with a top gets a
``ClassifierConfig`` (outputs ``classLabel`` and ``classLabelProbs``); a
features model outputs ``"features"``. Linux cannot run Core ML, so
verification is :func:`check_coreml` (spec level).
"""

from __future__ import annotations

import collections
import os
import sys

import numpy as np

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import prepare
from mobileone_tf.export.common import (AUTHOR, COREML_LABEL, COREML_PROBS, DEFAULT_LICENSE,
                                        INPUT_NAME, ExportError, ExportVerificationError,
                                        quiet, staging)
from mobileone_tf.export.images import verification_images
from mobileone_tf.export.job import check_classes, check_export, start
from mobileone_tf.export.options import export_options
from mobileone_tf.export.verify import compare

PALETTIZE_EXTRA = "coreml-palettize"
"""The extra that installs what ``quantize="palettize4"`` needs (scikit-learn:
coremltools' k-means palettization imports ``sklearn.cluster.KMeans``)."""


def check_palettize_dependencies():
    """Raises :class:`ExportError` (naming the extra to install) when
    scikit-learn, which coremltools' k-means palettization imports only
    after the whole conversion, is not importable."""
    try:
        from sklearn.cluster import KMeans  # noqa: F401
    except ImportError as e:
        raise ExportError(
            "quantize='palettize4' (--quantize palettize4) needs scikit-learn for "
            f"coremltools' k-means palettization ({e}); install it with "
            f"pip install 'mobileone_tf[{PALETTIZE_EXTRA}]' (or pip install scikit-learn)"
        ) from None


def check_options(output, options):
    """The cheap argument checks of :func:`to_coreml` (:func:`.job.check_export`,
    then the palettization dependencies); returns the output path.

    Raises:
        ExportError: see :func:`to_coreml`.
        OSError: an unreadable labels file (named).
    """
    output = check_export("coreml", output, options)
    if options.quantize == "palettize4":
        check_palettize_dependencies()
    return output


def _convert(ct, fixed, labels, quantize, target):
    """``ct.convert`` of the prepared model to an ML program (quiet)."""
    b, h, w = (int(d) for d in fixed.input.shape[:3])
    pipeline = ct.PassPipeline.DEFAULT
    # Keep the input normalization as mul/add: otherwise coremltools turns it
    # into a batch_norm op, which would hide real (unfused) BatchNorms.
    pipeline.remove_passes(["common::fuse_elementwise_to_batchnorm"])
    kwargs = {}
    if labels is not None:
        kwargs["classifier_config"] = ct.ClassifierConfig(labels)
    with quiet():
        return ct.convert(
            fixed,
            inputs=[ct.ImageType(name=INPUT_NAME, shape=(b, h, w, 3), scale=1.0,
                                 bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB)],
            convert_to="mlprogram", minimum_deployment_target=target,
            compute_precision=(ct.precision.FLOAT32 if quantize == "float32"
                               else ct.precision.FLOAT16),
            pass_pipeline=pipeline, **kwargs)


def _rename_outputs(ct, mlmodel, classifier, names=("features",)):
    """Names the outputs ``classLabelProbs`` (classifier) or ``names`` in
    order (:func:`.prepare.output_names`: ``"features"``, a segmenter's
    ``"logits"``, the pyramid levels of a feature extractor)."""
    spec = mlmodel.get_spec()
    outs = [o.name for o in spec.description.output]
    if classifier:
        if spec.description.predictedProbabilitiesName != COREML_PROBS:
            ct.utils.rename_feature(spec, spec.description.predictedProbabilitiesName,
                                    COREML_PROBS)
    else:
        for old, new in zip(outs, names):
            if old != new:
                ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def _compress(ct, mlmodel, quantize):
    """int8 (symmetric per-channel) or 4-bit k-means palettized weights."""
    opt = ct.optimize.coreml
    if quantize == "int8":
        return opt.linear_quantize_weights(mlmodel, config=opt.OptimizationConfig(
            global_config=opt.OpLinearQuantizerConfig(mode="linear_symmetric")))
    if quantize == "palettize4":
        return opt.palettize_weights(mlmodel, config=opt.OptimizationConfig(
            global_config=opt.OpPalettizerConfig(mode="kmeans", nbits=4)))
    return mlmodel


def _describe(mlmodel, job, meta):
    """Author, licence, version, descriptions and mobileone_tf metadata."""
    from mobileone_tf import __version__
    fixed, names = job.fixed, prepare.output_names(job.fixed)
    name = names[0] if len(names) == 1 else "pyramid levels " + ", ".join(names)
    h, w = (int(d) for d in fixed.input.shape[1:3])
    mlmodel.author = meta["author"]
    mlmodel.license = meta["license"]
    mlmodel.version = meta["version"] or f"mobileone_tf {__version__}"
    mlmodel.short_description = meta["description"] or (
        f"MobileOne {fixed.name} (re-parameterized), {h}x{w} RGB image -> "
        + ("ImageNet-1k class" if job.report.get("labels_source") == "imagenet" else name))
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {w}x{h} (pixel values 0..255; ImageNet normalization is inside the model)")
    if job.labels is not None:
        mlmodel.output_description[COREML_LABEL] = "Most likely class"
        mlmodel.output_description[COREML_PROBS] = (
            "Probability of every class" if name == "probabilities"
            else "Score (logit) of every class")
    else:
        for out, tensor in zip(names, fixed.outputs):
            mlmodel.output_description[out] = f"{out.capitalize()} {tuple(tensor.shape)}"
    mlmodel.user_defined_metadata["com.mobileone_tf.quantize"] = job.report["quantize"]
    mlmodel.user_defined_metadata["com.mobileone_tf.fused"] = str(job.report["fused"])


def _verify(job, staged, check_weights):
    """:func:`check_coreml` of the staged package into the report; raises
    :class:`ExportVerificationError` when a check fails."""
    check = check_coreml(staged, keras_model=job.fixed if job.report["fused"] else None,
                         class_names=job.labels, check_weights=check_weights)
    job.report.update({k: check[k] for k in ("inputs", "outputs", "ops")})
    job.report["verification"] = check["checks"]
    failed = [k for k, v in check["checks"].items() if v is False]
    if failed:
        raise ExportVerificationError(f"Core ML spec checks failed: {failed}. "
                                      "Nothing was written.")


@mobileone_export("mobileone_tf.export")
def to_coreml(model, output, options=None, *, class_names=None,
              minimum_deployment_target="iOS16", author=AUTHOR, license=DEFAULT_LICENSE,
              version=None, description=None, **keywords):
    """Exports a Core ML ML program (``.mlpackage``).

    Args:
        options: an :class:`.options.ExportOptions`, ``keywords`` replacing
            its fields (as :func:`.tflite.to_tflite`): ``quantize``:
            ``"none"`` (float16 compute, the Core ML default), ``"float32"``,
            ``"int8"`` (``linear_quantize_weights``, symmetric per-channel
            int8 weights), ``"palettize4"`` (4-bit k-means palettization);
            ``labels``: a text file of class names, one per line (replaces
            ``class_names``; its line count must equal the classes): the
            ``classLabel`` values of the ``ClassifierConfig``; ``outputs``,
            ``fold``: see :func:`.prepare.prepare_model` (the ImageType keeps
            scale 1 / bias 0: the input offset is the model's first op);
            ``verify`` runs :func:`check_coreml` (spec-level checks; Linux
            cannot run Core ML; ``verify_data`` is not used).
        minimum_deployment_target: ``"iOS16"`` (default), ``"iOS17"``,
            ``"iOS18"``, ``"macOS13"``...
        class_names: classifier labels (default: ImageNet names for 1000
            classes, else indices).
        author, license, version, description: metadata.

    Returns:
        ``(path, report)``.

    Raises:
        ExportError: bad arguments (before any conversion work), e.g.
            ``palettize4`` without scikit-learn (the extra
            :data:`PALETTIZE_EXTRA` to install), a labels file that does not
            fit; ExportVerificationError if a spec check fails; TypeError:
            an unknown keyword.
    """
    from mobileone_tf import runtime
    options = export_options(options, **keywords)
    output = check_options(output, options)
    quantize = options.quantize
    class_names = check_classes(model, output, options.overwrite, options.labels, class_names,
                                labels_file=False)
    ct = runtime.import_coremltools()
    target = getattr(ct.target, minimum_deployment_target, None)
    if target is None:
        raise ExportError(f"Unknown minimum_deployment_target {minimum_deployment_target!r}")
    job = start("coreml", model, output, options, names=class_names)
    mlmodel = _convert(ct, job.fixed, job.labels, quantize, target)
    mlmodel = _compress(ct, _rename_outputs(ct, mlmodel, job.labels is not None,
                                                prepare.output_names(job.fixed)), quantize)
    _describe(mlmodel, job, {"author": author, "license": license, "version": version,
                             "description": description})
    with staging(output) as tmp:
        staged = os.path.join(tmp, "model.mlpackage")
        with quiet():
            mlmodel.save(staged)
        job.converted()
        if options.verify:
            _verify(job, staged, check_weights=quantize in ("none", "float32"))
        return job.install(staged, options.report_path, write_labels=False)


def _mil_ops(spec):
    fn = spec.mlProgram.functions["main"]
    ops = []

    def walk(block):
        for op in block.operations:
            ops.append(op)
            for b in op.blocks:
                walk(b)

    walk(fn.block_specializations[fn.opset])
    return ops


@mobileone_export("mobileone_tf.export")
def check_coreml(path, keras_model=None, class_names=None, check_weights=True):
    """Spec-level checks of an exported ``.mlpackage`` (runs on Linux).

    Reloads the package and checks: ML program; input ``"image"`` is an RGB
    ``ImageType`` of the model's size with no scale/bias op in front of the
    normalization (ImageType scale 1, bias 0); classifier labels (when
    ``class_names``) and output names; no ``batch_norm`` op (fully fused);
    and, with ``keras_model`` and ``check_weights``, that every Conv2D /
    DepthwiseConv2D kernel of the Keras model appears as a conv weight equal
    to it at float16 precision.

    Returns:
        dict with ``checks`` (name -> bool), ``inputs``, ``outputs``, ``ops``
        (MIL op type counts without consts), ``metadata``.
    """
    from mobileone_tf import runtime
    ct = runtime.import_coremltools()
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    desc = spec.description
    checks = {"ml_program": spec.WhichOneof("Type") == "mlProgram"}
    inp = desc.input[0]
    it = inp.type.imageType
    checks["input_is_rgb_image"] = (inp.name == INPUT_NAME and inp.type.WhichOneof("Type")
                                    == "imageType" and it.colorSpace == it.RGB)
    if keras_model is not None:
        checks["input_size"] = [it.height, it.width] == [int(d) for d in
                                                         keras_model.input.shape[1:3]]
    ops = _mil_ops(spec)
    op_types = dict(collections.Counter(op.type for op in ops if op.type != "const"))
    checks["no_batch_norm"] = "batch_norm" not in op_types
    # ImageType scale 1 / bias 0: the first non-const ops must be the model's
    # own normalization (folded: one add of -255*mean, the scale in the stem
    # conv; fold=False: mul by 1/(255*std), add), with no extra scale/bias op.
    first = [op.type for op in ops if op.type != "const"][:3]
    checks["image_scale_1_bias_0"] = first.count("mul") <= 1 and "sub" not in first and \
        first.count("add") <= 1
    if class_names is not None:
        checks["classifier_outputs"] = (desc.predictedFeatureName == COREML_LABEL
                                        and desc.predictedProbabilitiesName == COREML_PROBS)
        checks["classifier_labels"] = [str(c) for c in runtime.classifier_labels(spec)] == \
            [str(c) for c in class_names]
    if keras_model is not None and check_weights:
        checks["conv_weights_fp16_equal"] = _conv_weights_match(ct, mlmodel, keras_model)
    return {"checks": checks, "ops": op_types,
            "inputs": [{"name": inp.name, "type": "ImageType RGB",
                        "shape": [1, it.height, it.width, 3]}],
            "outputs": [{"name": o.name, "type": o.type.WhichOneof("Type")}
                        for o in desc.output],
            "metadata": {"author": desc.metadata.author, "license": desc.metadata.license,
                         "version": desc.metadata.versionString,
                         "description": desc.metadata.shortDescription}}


def _conv_weights_match(ct, mlmodel, keras_model):
    import keras
    with quiet("stderr"):
        meta = ct.optimize.coreml.get_weights_metadata(mlmodel, weight_threshold=1)
    by_shape = collections.defaultdict(list)
    for m in meta.values():
        by_shape[tuple(m.val.shape)].append(np.asarray(m.val, np.float32))
    for layer in keras_model.layers:
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            continue
        k = layer.get_weights()[0]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            oihw = np.transpose(k, (2, 3, 0, 1))  # (kh,kw,C,1) -> (C,1,kh,kw)
        else:
            oihw = np.transpose(k, (3, 2, 0, 1))
        want = oihw.astype(np.float16).astype(np.float32)
        if not any(np.array_equal(v, want) or
                   np.allclose(v, oihw, rtol=2 ** -10, atol=1e-7)
                   for v in by_shape.get(oihw.shape, [])):
            return False
    return True


@mobileone_export("mobileone_tf.export")
def verify_coreml(path, variant="s0", *, weights="imagenet", images=None, num_images=8,
                  rtol=1e-2):
    """Checks an exported ``.mlpackage`` against the Keras MobileOne it came from.

    Everywhere: :func:`check_coreml` with the package's own labels, and (with
    ``weights``) the conv weights of ``MobileOne(variant, weights)`` fused at
    the package's input size (input normalization folded as the exporter
    does, or not: a package exported with ``fold=False``). macOS only: also ``MLModel.predict`` on
    ``num_images`` images (folder ``images`` or generated) compared with the
    Keras outputs (:func:`.verify.compare`, strict, tolerance
    ``rtol * max|output|``: Core ML computes in float16).

    Args:
        weights: ``"imagenet"``, a weights file, or ``None`` (spec checks
            without weights).

    Returns:
        :func:`check_coreml`'s dict, plus ``predict`` (macOS) and ``passed``.

    Raises:
        FileNotFoundError: no such package.
    """
    from mobileone_tf import models, runtime
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such Core ML package: {path}")
    ct = runtime.import_coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    h = spec.description.input[0].type.imageType.height
    model = None
    if weights is not None:
        model = prepare.prepare_model(models.MobileOne(variant, weights=weights,
                                                       input_shape=(None, None, 3)),
                                      input_size=h)
    labels = runtime.classifier_labels(spec) if spec.description.predictedFeatureName else None
    result = check_coreml(path, keras_model=model, class_names=labels,
                          check_weights=model is not None)
    if result["checks"].get("conv_weights_fp16_equal") is False:  # exported with fold=False
        unfolded = check_coreml(path, keras_model=prepare.prepare_model(
            models.MobileOne(variant, weights=weights, input_shape=(None, None, 3)),
            input_size=h, fold=False), class_names=labels)
        result["checks"]["conv_weights_fp16_equal"] = unfolded["checks"][
            "conv_weights_fp16_equal"]
    passed = all(result["checks"].values())
    if sys.platform == "darwin" and model is not None:
        batch = verification_images(images, h, num_images)
        result["predict"] = compare(model.predict(batch, batch_size=1, verbose=0),
                                    runtime.load(path)(batch), strict=True, rtol=rtol)
        passed = passed and result["predict"]["passed"]
    result["passed"] = bool(passed)
    return result
