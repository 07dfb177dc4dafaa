"""One export in progress: the prepared model, its report, verification of
the staged file and the atomic install (shared by every format)."""

from __future__ import annotations

import os
import time

from mobileone_tf.export import prepare
from mobileone_tf.export.common import (FILE_FORMATS, SUFFIXES, ExportError, check_labels_output,
                                        check_output, install, labels_path, size_bytes,
                                        write_report)
from mobileone_tf.export.metadata import read_labels
from mobileone_tf.export.verify import verify_file


class ExportJob:
    """One export: prepared model, report, verification, atomic install.

    Attributes:
        output: checked output path (:func:`.common.check_output`).
        fixed: the prepared model the file is converted from
            (:func:`.prepare.prepare_model`; input normalization folded).
        reference: the same function unfolded (the fused Keras model at the
            export size), which verification compares the file with.
        labels: class names for ``labels.txt`` / the Core ML classifier
            (``None`` for a features model or when not wanted).
        report: the report dict (``format``, ``model``, ``form``, ``fused``,
            ``quantize``, ``batch_size``, ``input_size``, ``convert_seconds``,
            ``labels_source``, then what the format adds).
    """

    def __init__(self, fmt, output, fixed, quantize, fuse, labels=None, labels_source=None,
                 reference=None):
        from mobileone_tf import models
        self.output, self.fixed, self.labels = output, fixed, labels
        self.reference = fixed if reference is None else reference
        self.report = {"format": fmt, "model": fixed.name, "form": models.model_form(fixed),
                       "fused": bool(fuse), "quantize": quantize,
                       "batch_size": int(fixed.input.shape[0]),
                       "input_size": [int(d) for d in fixed.input.shape[1:3]],
                       "convert_seconds": None}
        if labels_source is not None:
            self.report["labels_source"] = labels_source
        self._start = time.time()

    def converted(self, **fields):
        """Records the conversion time (and ``fields``) in the report."""
        self.report["convert_seconds"] = round(time.time() - self._start, 2)
        self.report.update(fields)

    def finish(self, staged, options, strict, write_labels=True):
        """Verifies the staged file against :attr:`reference`
        (:func:`.verify.verify_file`, when ``options.verify``; ``strict``:
        a mismatch raises), then installs it; returns ``(path, report)``."""
        if options.verify:
            self.report["verification"] = verify_file(self.reference, staged,
                                                      options.verify_data, strict)
        return self.install(staged, options.report_path, write_labels)

    def install(self, staged, report_path=None, write_labels=True):
        """Moves the staged file to the output (``labels.txt`` beside it when
        there are labels), writes the report JSON; returns ``(path, report)``."""
        report = self.report
        if self.labels is not None and write_labels:
            path = labels_path(self.output)
            staged_labels = staged + ".labels.txt"
            with open(staged_labels, "w", encoding="utf-8") as f:
                f.write("\n".join(self.labels) + "\n")
            install(staged, self.output)
            os.replace(staged_labels, path)
            report["labels"] = path
        else:
            install(staged, self.output)
        report["path"] = self.output
        report["file_size_bytes"] = size_bytes(self.output)
        if report_path:
            write_report(report, report_path)
        return self.output, report


def check_export(fmt, output, options, calibrated=True):
    """The cheap checks every format makes first: the values of ``options``
    (:meth:`.options.ExportOptions.validate` with ``calibrated``), the output path
    (:func:`.common.check_output`), a labels file's text; returns the output
    path.

    Raises:
        ExportError: a bad value or output path (named).
        OSError: an unreadable labels file (named).
    """
    options.validate(fmt, calibrated)
    output = check_output(output, options.overwrite, SUFFIXES[fmt], is_file=fmt in FILE_FORMATS)
    if options.labels is not None:
        read_labels(options.labels)  # readable, one name per line (the count: check_classes)
    return output


def check_classes(model, output, overwrite, labels=None, class_names=None,
                  labels_file=True):
    """The class names an export of ``model`` takes, checked before any
    conversion work: those of the ``labels`` file (one per line, as many as
    the model's classes; :func:`.metadata.read_labels`), else
    ``class_names``. With ``labels_file`` (formats that write ``labels.txt``
    beside the output) and a classifier, an existing ``labels.txt`` with
    other names is refused unless ``overwrite``
    (:func:`.common.check_labels_output`).

    Raises:
        ExportError: a labels file for a model without a classifier, one
            that does not fit (count, empty line, not UTF-8), or an
            existing ``labels.txt`` (each names the file).
        OSError: an unreadable labels file (named, with ``--labels``).
    """
    n = prepare.num_classes(model)
    if labels is not None:
        if n is None:
            raise ExportError(f"labels file {labels} (--labels): the model has no classifier "
                              "(include_top)")
        class_names = read_labels(labels, n)
    if labels_file and n is not None:
        check_labels_output(output, overwrite, prepare.class_names(model, class_names)[0])
    return class_names


def start(fmt, model, output, options, names=None, labels=True):
    """The :class:`ExportJob` of ``model`` (prepared with
    :func:`.prepare.prepare_model` as ``options`` say: ``fuse``,
    ``batch_size``, ``input_size``, ``outputs``, then the input normalization
    folded unless ``options.fold`` is False) to an already checked
    ``output``; with ``labels``, the class names of
    :func:`.prepare.class_names` (``names`` or ImageNet's or indices) go
    with it."""
    reference = prepare.prepare_model(model, options.fuse, options.batch_size,
                                      options.input_size, outputs=options.outputs, fold=False)
    fixed = prepare.fold_input_normalization(reference) if options.fold else reference
    label_list, source = prepare.class_names(fixed, names) if labels else (None, None)
    job = ExportJob(fmt, output, fixed, options.quantize, options.fuse, label_list, source,
                    reference)
    job.report["normalization"] = prepare.normalization_form(fixed)
    return job
