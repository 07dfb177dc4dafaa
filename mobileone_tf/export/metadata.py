"""TFLite metadata (the tables of TFLite's ``metadata_schema.fbs``) for the
exported ``.tflite`` files, so that MediaPipe Tasks (``ImageClassifier``,
``ImageEmbedder``) and Android Studio's ML Model Binding take the file as is.

What goes in (:func:`tflite_spec`): model name, version
(``mobileone_tf.__version__``), description (variant, input and output
contract), author and licence (:data:`.common.AUTHOR`,
:data:`.common.DEFAULT_LICENSE`); the input's ``ImageProperties`` (RGB) and
``NormalizationOptions``; for a classifier, the class names as an associated
``TENSOR_AXIS_LABELS`` file ``labels.txt`` and no score calibration.

``NormalizationOptions`` state the float contract of the input tensor
(``(pixel - mean) / std``, pixels 0..255): mean 0, std 1 when the model
normalizes inside (the default), ``255 * ImageNet mean / std`` per channel
with ``include_preprocessing=False``. A quantized (int8/uint8) input carries
the same values as its float model: per the schema, a client normalizes,
then quantizes with the tensor's scale / zero point. For a uint8 input whose
quantization is ``(1.0, 0)`` with normalization inside (``int8_io="uint8"``
on a MobileOne) that is the identity, so raw camera pixels are the tensor
(what MediaPipe feeds a uint8 model); :func:`tflite_spec` reports
``raw_pixel_input``.

MediaPipe (the writer and the reader) runs in a subprocess
(``python -m mobileone_tf.export.metadata_worker``, never beside TensorFlow).
Where it comes from (:func:`mediapipe_dir`): the environment itself when
``mediapipe`` is installed there (``pip install mobileone_tf[metadata]``,
possible without the ``[qat]`` extra: TFMOT caps absl-py below 2, MediaPipe
needs absl-py 2.x), else a folder of its own put first on the worker's
``PYTHONPATH``, installed only when the user asks
(``python -m mobileone_tf.export.mediapipe_install``,
:func:`install_mediapipe`). Without either an export with metadata stops with
one line that gives both routes. Imports no TensorFlow (nor MediaPipe).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid

from mobileone_tf import fileio
from mobileone_tf.export.common import AUTHOR, DEFAULT_LICENSE, LABELS_FILE, ExportError

ENV_DIR = "MOBILEONE_TF_MEDIAPIPE_DIR"
MEDIAPIPE_VERSION = "1.2.2"
REQUIREMENTS = (f"mediapipe=={MEDIAPIPE_VERSION}", "absl-py==2.3.1", "flatbuffers==25.9.23")
"""Installed with ``--no-deps``: the writer and the Tasks image classifier and
embedder need nothing else that the main environment lacks (numpy,
matplotlib and certifi come with this package's own requirements; OpenCV,
used only by MediaPipe's drawing utilities, is stubbed by the worker)."""
WORKER = "mobileone_tf.export.metadata_worker"
INSTALLER = "mobileone_tf.export.mediapipe_install"
INSTALL_TIMEOUT_S = 600


def default_dir() -> str:
    """``<Keras cache>/mobileone_tf/mediapipe-<version>`` (``$KERAS_HOME`` or ``~/.keras``)."""
    from mobileone_tf.weights import download
    return os.path.join(download.keras_cache_dir(), "mobileone_tf",
                        f"mediapipe-{MEDIAPIPE_VERSION}")


def mediapipe_folder() -> str:
    """Where MediaPipe is looked for and installed: ``$MOBILEONE_TF_MEDIAPIPE_DIR``
    when set, else :func:`default_dir` (absolute)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV_DIR) or default_dir()))


def install_command() -> str:
    """The command that installs MediaPipe's metadata writer into
    :func:`mediapipe_folder` (:func:`install_mediapipe`)."""
    return shlex.join([sys.executable, "-m", INSTALLER])


def pip_command(folder) -> str:
    """The plain pip command that installs MediaPipe's metadata writer into
    ``folder`` (e.g. on a machine that reaches PyPI, for an offline one)."""
    return shlex.join([sys.executable, "-m", "pip", "install", "--no-deps", "--target",
                       str(folder), *REQUIREMENTS])


def installed(folder) -> bool:
    """Whether ``folder`` holds ``mediapipe`` (``""``: whether this
    environment has it, :func:`in_environment`)."""
    if not folder:
        return in_environment()
    return os.path.isfile(os.path.join(folder, "mediapipe", "__init__.py"))


def in_environment() -> bool:
    """Whether this Python environment has ``mediapipe`` (the ``[metadata]``
    extra); found without importing it."""
    import importlib.util
    return importlib.util.find_spec("mediapipe") is not None


def _hint() -> str:
    return (f"install it once with `{install_command()}` (offline: run `{pip_command('DIR')}` "
            f"where PyPI is reachable, copy DIR here and set {ENV_DIR}=DIR) or, without the "
            "[qat] extra, `pip install mobileone_tf[metadata]`; or skip the metadata with "
            "--nometadata (metadata=False)")


NOT_INSTALLED = ("skipped: MediaPipe's TFLite metadata writer is not installed (install it once "
                 "with `python -m mobileone_tf.export.mediapipe_install` and export again, or "
                 "pass --metadata to make it required)")
"""``report["metadata"]`` of a file exported with ``metadata=None`` (the
default) where the writer is not installed."""


def wanted(metadata) -> bool:
    """Whether to write TFLite metadata: ``metadata`` when it is True/False;
    for ``None`` (the default: "when available"), whether MediaPipe's
    writer is installed (in :func:`mediapipe_folder` or this environment)."""
    if metadata is not None:
        return bool(metadata)
    return installed(mediapipe_folder()) or in_environment()


def mediapipe_dir() -> str:
    """The folder that holds ``mediapipe`` for the worker: :func:`mediapipe_folder`
    when MediaPipe is installed there, else ``""`` when this environment has
    it (:func:`in_environment`). Nothing is installed here: that is
    :func:`install_mediapipe`, on request.

    Raises:
        ExportError: MediaPipe is in neither (one line: the install
            commands, what to do offline, and ``--nometadata``).
    """
    folder = mediapipe_folder()
    if installed(folder):
        return folder
    if in_environment():
        return ""
    raise ExportError(f"MediaPipe's TFLite metadata writer is not installed in {folder} "
                      "nor in this environment: " + _hint())


def install_mediapipe() -> str:
    """Installs MediaPipe's metadata writer (:data:`REQUIREMENTS`, pip
    ``--no-deps``, about 45 MB download, 130 MB on disk) into
    :func:`mediapipe_folder` and returns the folder; an installed one is kept,
    and where this environment has ``mediapipe`` nothing is installed (returns ``""``).
    The folder is written beside its place and moved there in one rename
    (:func:`mobileone_tf.fileio.atomic_dir`): never half-installed. Run by
    ``python -m mobileone_tf.export.mediapipe_install``.

    Raises:
        ExportError: pip failed, e.g. offline (one line: pip's error, the
            offline route and ``--nometadata``), or the folder exists and
            holds something else.
    """
    folder = mediapipe_folder()
    if installed(folder):
        return folder
    if in_environment():
        return ""  # the [metadata] extra: nothing to install
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)  # an empty folder made for it
    try:
        with fileio.atomic_dir(folder) as staged:
            command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
                       "--disable-pip-version-check", "--quiet", "--retries", "1",
                       "--timeout", "30", "--target", staged, *REQUIREMENTS]
            proc = subprocess.run(command, check=False, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT_S)
            if proc.returncode != 0:
                lines = [ln for ln in proc.stderr.splitlines()
                         if ln.strip().startswith("ERROR")]
                raise OSError((lines or proc.stderr.strip().splitlines() or ["pip failed"])[-1])
    except FileExistsError as e:
        if installed(folder):  # a concurrent install won the race
            return folder
        raise ExportError(f"{folder} exists and holds no MediaPipe: remove it or set "
                          f"{ENV_DIR} to another folder") from e
    except (OSError, subprocess.SubprocessError) as e:
        raise ExportError(f"could not install MediaPipe's metadata writer into {folder} "
                          f"(pip: {' '.join(str(e).split())}); offline? run "
                          f"`{pip_command('DIR')}` where PyPI is reachable, copy DIR here and set "
                          f"{ENV_DIR}=DIR, or skip the metadata with --nometadata "
                          "(metadata=False)") from e
    return folder


def worker_env(folder) -> dict:
    """The environment of a MediaPipe subprocess: ``folder`` (unless ``""``:
    this environment's MediaPipe) first on ``PYTHONPATH``, then the folder
    that holds this package."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [p for p in (folder, package_root) if p] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_worker(*args, folder=None, timeout=300) -> str:
    """Runs ``python -m mobileone_tf.export.metadata_worker ARGS``; returns its stdout.

    Raises:
        ExportError: the worker failed (its ``error:`` line).
    """
    folder = mediapipe_dir() if folder is None else folder
    proc = subprocess.run([sys.executable, "-m", WORKER, *map(str, args)], check=False,
                          capture_output=True, text=True, env=worker_env(folder),
                          timeout=timeout)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        tail = lines[-1][len("error:"):].strip() if lines else " ".join(proc.stderr.split()[-60:])
        raise ExportError(f"TFLite metadata ({args[0]}) failed: {tail}")
    return proc.stdout


def read_labels(path, classes=None) -> list:
    """Class names from a text file, one per line (blank lines at the end ignored).

    Raises:
        OSError: unreadable file (of the same type, naming the file and ``--labels``).
        ExportError: not UTF-8 text, an empty name, or not ``classes`` names
            (each names the file).
    """
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise ExportError(f"labels file {path} (--labels) is not UTF-8 text (byte "
                          f"0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8, "
                          "one class name per line") from None
    except OSError as e:
        raise type(e)(f"labels file {path} (--labels): {e.strerror or e}") from None
    while names and not names[-1].strip():
        names.pop()
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if empty:
        raise ExportError(f"labels file {path}: line {empty[0]} is empty (one class name per line)")
    if classes is not None and len(names) != int(classes):
        raise ExportError(f"labels file {path} has {len(names)} names; the model has "
                          f"{int(classes)} classes (one name per line)")
    return names


def _model_facts(fixed):
    """``(title, include_preprocessing, recorded info or {})`` of a prepared model."""
    from mobileone_tf import models
    try:
        info = models.model_info(fixed)
    except ValueError:  # not a MobileOne (e.g. a benchmark baseline)
        return fixed.name, True, {}
    return f"MobileOne-{info['variant'].upper()}", bool(info["include_preprocessing"]), info


def tflite_spec(fixed, labels, inputs, outputs, labels_path=None) -> dict:
    """The metadata of a TFLite export (the worker's ``SPEC_JSON``).

    Args:
        fixed: the prepared Keras model (:func:`.prepare.prepare_model`).
        labels: class names (``None`` for a features model).
        inputs, outputs: :func:`mobileone_tf.runtime.tflite_io` of the file.
        labels_path: where the worker reads the labels file from.
    """
    import mobileone_tf
    from mobileone_tf import models
    from mobileone_tf.export.prepare import output_name
    title, inside, info = _model_facts(fixed)
    tensor_in, tensor_out = inputs[0], outputs[0]
    if inside:
        mean, std = [0.0], [1.0]
        norm_text = "ImageNet normalization inside the model"
    else:
        mean = [round(255.0 * m, 6) for m in models.IMAGENET_MEAN]
        std = [round(255.0 * s, 6) for s in models.IMAGENET_STD]
        norm_text = "normalize as (pixel - mean) / std with the NormalizationOptions"
    dtype, (scale, zero) = tensor_in["dtype"], tensor_in.get("quantization") or (0.0, 0)
    raw = inside and (dtype == "float32" or (dtype == "uint8" and scale == 1.0 and zero == 0))
    if dtype != "float32":
        norm_text += f"; quantized: q = x / {scale:g} + {zero}"
    shape = "x".join(str(d) for d in tensor_in["shape"])
    kind = output_name(fixed)
    out_shape = "x".join(str(d) for d in tensor_out["shape"])
    if labels is not None:
        what = f"image classifier, {len(labels)} classes"
        out_text = (("Softmax probabilities" if kind == "probabilities" else "Logits")
                    + f" over the {len(labels)} classes of {LABELS_FILE}")
    else:
        what, out_text = "image feature extractor", "Image features"
    form = ("re-parameterized for inference" if info.get("fused", True)
            else "branched (training form)")
    description = (f"{title} {what}, {form} (Vasu et al., MobileOne, CVPR 2023). Input "
                   f"'{tensor_in['name']}': {shape} {dtype} RGB, pixels 0..255, {norm_text}. "
                   f"Output '{tensor_out['name']}': {out_shape} {tensor_out['dtype']}.")
    return {
        "name": title, "version": mobileone_tf.__version__, "description": description,
        "author": AUTHOR, "license": DEFAULT_LICENSE, "raw_pixel_input": bool(raw),
        "input": {"name": tensor_in["name"], "mean": mean, "std": std,
                  "description": f"RGB image {shape} {dtype}, pixels 0..255; {norm_text}."},
        "output": {"name": tensor_out["name"], "probabilities": kind == "probabilities",
                   "kind": "classification" if labels is not None else "features",
                   "labels": labels_path if labels is not None else None,
                   "description": f"{out_text}: {out_shape} {tensor_out['dtype']}."},
    }


def add_tflite_metadata(staged, fixed, labels, inputs, outputs) -> dict:
    """Packs the metadata of :func:`tflite_spec` into the staged file
    ``staged`` (in place, through a temporary file beside it); returns the
    report entry (``name``, ``version``, ``mean``, ``std``, ``labels``,
    ``raw_pixel_input``, ``mediapipe_dir``).

    Raises:
        ExportError: MediaPipe is not installed (:func:`mediapipe_dir`), or
            the writer failed.
    """
    folder = mediapipe_dir()
    base = f"{staged}.metadata-{uuid.uuid4().hex[:8]}"
    os.makedirs(base)
    try:
        labels_path = os.path.join(base, LABELS_FILE)
        if labels is not None:
            with open(labels_path, "w", encoding="utf-8") as f:
                f.write("\n".join(labels) + "\n")
        spec = tflite_spec(fixed, labels, inputs, outputs, labels_path)
        with open(os.path.join(base, "spec.json"), "w") as f:
            json.dump(spec, f)
        packed = os.path.join(base, "model.tflite")
        run_worker("write", staged, packed, os.path.join(base, "spec.json"), folder=folder)
        os.replace(packed, staged)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"name": spec["name"], "version": spec["version"], "mean": spec["input"]["mean"],
            "std": spec["input"]["std"], "labels": LABELS_FILE if labels is not None else None,
            "raw_pixel_input": spec["raw_pixel_input"], "mediapipe_dir": folder}


def read_tflite_metadata(path, folder=None) -> dict:
    """``{"metadata": <JSON of the metadata or None>, "files": {name: text}}``
    of a TFLite file, read by MediaPipe's ``MetadataDisplayer``.

    Raises:
        ExportError: MediaPipe unavailable or the file unreadable.
    """
    return json.loads(run_worker("read", os.path.abspath(path), folder=folder))
