"""One entry point over the formats: :func:`export` (a model),
:func:`export_variant` (build a MobileOne, then export: what
``scripts/convert.py`` calls) and :func:`check_options` (every cheap
argument check of a format, no model or image touched). Each takes one
:class:`.options.ExportOptions` (``keywords`` replace its fields:
:func:`.options.export_options`)."""

from __future__ import annotations

from mobileone_tf.api_export import mobileone_export
from mobileone_tf.export import coreml, onnx, saved_model, tflite
from mobileone_tf.export.common import FORMATS, ExportError
from mobileone_tf.export.options import export_options

EXPORTERS = {"tflite": tflite.to_tflite, "coreml": coreml.to_coreml, "onnx": onnx.to_onnx,
             "saved_model": saved_model.to_saved_model}
_CHECKS = {"tflite": tflite.check_options, "coreml": coreml.check_options,
           "onnx": onnx.check_options, "saved_model": saved_model.check_options}


def _exporter(format):
    if format not in EXPORTERS:
        raise ExportError(f"Unknown format {format!r}; expected one of {FORMATS}")
    return EXPORTERS[format]


@mobileone_export("mobileone_tf.export")
def check_options(format, output, options=None, include_top=None, **keywords):
    """The argument checks ``to_{format}`` makes before touching the model
    (the values of ``options``: :meth:`.options.ExportOptions.validate`; the
    output path, a calibration folder must exist, a labels file must be
    readable text); returns the output path. ``to_{format}`` then checks
    what needs the model (the labels file's line count, an existing
    ``labels.txt``: :func:`.job.check_classes`) before any conversion work.

    Args:
        include_top: ``False`` (the model will have no classifier) also
            refuses a ``labels`` file; ``None``: not known yet.

    Raises:
        ExportError: unknown format or a bad argument (named).
        OSError: an unreadable labels file (named).
        TypeError: a keyword that is no option.
    """
    _exporter(format)
    options = export_options(options, **keywords)
    if options.labels is not None and include_top is False:
        raise ExportError(f"labels file {options.labels} (--labels): the model has no "
                          "classifier (include_top=False, --noinclude_top)")
    return _CHECKS[format](output, options)


@mobileone_export("mobileone_tf.export")
def export(model, output, format, options=None, **keywords):
    """Dispatches to ``to_{format}(model, output, options, **keywords)``.

    Raises:
        ExportError: unknown format (and whatever the exporter raises).
    """
    return _exporter(format)(model, output, options, **keywords)


@mobileone_export("mobileone_tf.export")
def export_variant(variant, output, format, options=None, *, weights="imagenet",
                   include_top=True, classes=1000, classifier_activation="softmax",
                   include_preprocessing=True, **keywords):
    """Builds a MobileOne (:func:`mobileone_tf.MobileOne` with
    ``input_shape=(None, None, 3)``) and exports it with :func:`export`.

    Every cheap argument check (:func:`check_options`) runs before the model
    is built, so a bad option fails fast with nothing written.

    Args:
        variant: ``"s0"`` .. ``"s4"``.
        options, keywords: the :class:`.options.ExportOptions` of the export.
        weights: ``"imagenet"``, ``None`` (random) or a weights file.
        include_top, classes, classifier_activation, include_preprocessing:
            as :func:`mobileone_tf.MobileOne`.

    Returns:
        ``(path, report)``.
    """
    options = export_options(options, **keywords)
    check_options(format, output, options, include_top=include_top)
    from mobileone_tf import models
    model = models.MobileOne(variant, weights=weights, input_shape=(None, None, 3),
                             include_top=include_top, classes=classes,
                             classifier_activation=classifier_activation,
                             include_preprocessing=include_preprocessing)
    return export(model, output, format, options)
