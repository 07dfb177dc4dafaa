"""MediaPipe's side of the TFLite metadata, run in its own process:

    PYTHONPATH=DIR python -m mobileone_tf.export.metadata_worker write MODEL OUT SPEC_JSON
    PYTHONPATH=DIR python -m mobileone_tf.export.metadata_worker read MODEL

``DIR`` holds ``mediapipe`` (1.2.2) and ``absl-py`` 2.x, installed with
``pip install --no-deps --target DIR`` (:mod:`mobileone_tf.export.metadata`
does that): MediaPipe needs absl-py 2.x, the main environment pins 1.4.0 for
TFMOT, so the two never share a process. This module imports no TensorFlow
(it blocks the optional ``import tensorflow`` of MediaPipe's metadata module)
and nothing of ``mobileone_tf`` that needs it.

``write`` packs the metadata described by ``SPEC_JSON`` (a file: ``name``,
``version``, ``description``, ``author``, ``license``; ``input``: ``name``,
``description``, ``mean``, ``std``; ``output``: ``name``, ``description``,
``kind`` (``"classification"`` or ``"features"``), ``labels`` (a text file,
one name per line, packed as ``TENSOR_AXIS_LABELS``), ``probabilities``)
into ``MODEL`` and writes ``OUT``, through MediaPipe's public metadata API
(``metadata_writers.metadata_info`` for the tables, ``metadata.MetadataPopulator``
to pack them and the associated files; the schema is TFLite's
``metadata_schema.fbs``). ``read`` prints ``{"metadata": ..., "files":
{name: text}}`` as JSON (``metadata.MetadataDisplayer``).

Two gaps of the mediapipe 1.2.2 wheel are filled here: its ``metadata.py``
imports ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``,
which the wheel does not ship (:func:`min_parser_version` ports the C++
``GetMinimumMetadataParserVersion`` of ``mediapipe/tasks/cc/metadata/
metadata_version.cc``), and ``mediapipe.tasks.python.vision`` imports ``cv2``
for its drawing utilities only (a stub stands in when OpenCV is absent).

Errors: one line ``error: ...`` on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types

PYWRAP = "mediapipe.tasks.cc.metadata.python"


def _version_tuple(text):
    return tuple(int(p) for p in text.split("."))


def min_parser_version(buffer) -> str:
    """The lowest metadata-parser version that reads ``buffer`` (a packed
    ``ModelMetadata``): ``"1.0.0"`` raised by every schema member added later
    (the rules of MediaPipe's ``metadata_version.cc``)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    root = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(bytes(buffer), 0))
    found = {"1.0.0"}
    added = {  # (table kind, member) -> schema version that introduced it
        ("file", fb.AssociatedFileType.VOCABULARY): "1.0.1",
        ("file", fb.AssociatedFileType.SCANN_INDEX_FILE): "1.4.0",
        ("unit", fb.ProcessUnitOptions.BertTokenizerOptions): "1.1.0",
        ("unit", fb.ProcessUnitOptions.SentencePieceTokenizerOptions): "1.1.0",
        ("unit", fb.ProcessUnitOptions.RegexTokenizerOptions): "1.2.1",
        ("content", fb.ContentProperties.AudioProperties): "1.3.0",
    }

    def files(entries):
        for f in entries or ():
            found.add(added.get(("file", f.type), "1.0.0"))
            if f.version is not None:
                found.add("1.4.1")

    def units(entries):
        for u in entries or ():
            found.add(added.get(("unit", u.optionsType), "1.0.0"))

    def tensors(entries):
        for t in entries or ():
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None:
                found.add(added.get(("content", t.content.contentPropertiesType), "1.0.0"))

    for sub in root.subgraphMetadata or ():
        tensors(sub.inputTensorMetadata)
        tensors(sub.outputTensorMetadata)
        files(sub.associatedFiles)
        for entries in (sub.inputProcessUnits, sub.outputProcessUnits):
            if entries is not None:
                found.add("1.1.0")
                units(entries)
        if sub.inputTensorGroups is not None or sub.outputTensorGroups is not None:
            found.add("1.2.0")
        if sub.customMetadata is not None:
            found.add("1.5.0")
    files(root.associatedFiles)
    return max(found, key=_version_tuple)


def import_mediapipe():
    """Imports ``mediapipe`` with the two gaps above filled and TensorFlow
    blocked; returns the module."""
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # MediaPipe's optional TF import fails fast
    if importlib.util.find_spec("cv2") is None:
        stub = types.ModuleType("cv2", "Stand-in: only MediaPipe's drawing utils use OpenCV.")
        sys.modules["cv2"] = stub
    import mediapipe
    try:
        importlib.import_module(PYWRAP + "._pywrap_metadata_version")
    except ImportError:
        shim = types.ModuleType(PYWRAP + "._pywrap_metadata_version")
        shim.GetMinimumMetadataParserVersion = min_parser_version
        package = types.ModuleType(PYWRAP)
        package._pywrap_metadata_version = shim
        sys.modules[PYWRAP] = package
        sys.modules[shim.__name__] = shim
    return mediapipe


def write(model_path, out_path, spec):
    """Writes ``model_path`` with the metadata of ``spec`` to ``out_path``."""
    import flatbuffers
    import_mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, writer_utils

    with open(model_path, "rb") as f:
        model = bytearray(f.read())
    in_type = writer_utils.get_input_tensor_types(model)[0]
    out_type = writer_utils.get_output_tensor_types(model)[0]
    root = metadata_info.GeneralMd(name=spec["name"], version=spec["version"],
                                   description=spec["description"], author=spec["author"],
                                   licenses=spec["license"]).create_metadata()
    inp = spec["input"]
    image = metadata_info.InputImageTensorMd(
        name=inp["name"], description=inp["description"], norm_mean=inp["mean"],
        norm_std=inp["std"], color_space_type=fb.ColorSpaceType.RGB, tensor_type=in_type)
    out = spec["output"]
    files = [out["labels"]] if out.get("labels") else []
    if out["kind"] == "classification":
        result = metadata_info.ClassificationTensorMd(
            name=out["name"], description=out["description"],
            label_files=[metadata_info.LabelFileMd(p) for p in files],
            tensor_type=out_type if out.get("probabilities") else None)
    else:
        result = metadata_info.TensorMd(name=out["name"], description=out["description"])
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image.create_metadata()]
    subgraph.outputTensorMetadata = [result.create_metadata()]
    root.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(root.Pack(builder), metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    populator = metadata.MetadataPopulator.with_model_buffer(model)
    populator.load_metadata_buffer(builder.Output())
    if files:
        populator.load_associated_files(files)
    populator.populate()
    packed = populator.get_model_buffer()
    del populator  # its destructor removes a temporary file: run it now, not at exit
    with open(out_path, "wb") as f:
        f.write(packed)


def read(model_path):
    """``{"metadata": <the metadata as JSON>, "files": {name: text}}`` of a
    TFLite file (``metadata`` is ``None`` when it carries none)."""
    import_mediapipe()
    from mediapipe.tasks.python.metadata import metadata
    with open(model_path, "rb") as f:
        model = f.read()
    if metadata.get_metadata_buffer(model) is None:
        return {"metadata": None, "files": {}}
    shown = metadata.MetadataDisplayer.with_model_buffer(model)
    return {"metadata": json.loads(shown.get_metadata_json()),
            "files": {name: shown.get_associated_file_buffer(name).decode("utf-8")
                      for name in shown.get_packed_associated_file_list()}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mobileone_tf.export.metadata_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="pack metadata into a TFLite file")
    w.add_argument("model")
    w.add_argument("out")
    w.add_argument("spec", help="JSON file describing the metadata")
    r = sub.add_parser("read", help="print a TFLite file's metadata as JSON")
    r.add_argument("model")
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            with open(args.spec) as f:
                write(args.model, args.out, json.load(f))
        else:
            print(json.dumps(read(args.model)))
    except (ImportError, OSError, ValueError, KeyError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {type(e).__name__}: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
