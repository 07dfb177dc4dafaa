"""The ```python examples of README.md and docs/*.md, executed as written.

Every example is listed in :data:`EXECUTED` with the test that runs it
(tests/test_docs_commands.py fails when an example is added, removed or
moved without this table, or when the named test does not call
:func:`run_block` for it). A test runs one with::

    namespace = run_block("README.md", 0, cwd=tmp_path)

in the pytest process (``exec`` of the block's text, compiled with the file
name and line, so a failure points at the document), with ``cwd`` as the
working directory (relative paths of the example resolve there).
"""

import contextlib
import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

# (document, index of its ```python block) -> the test that executes it
EXECUTED = {
    ("README.md", 0): "tests/test_classify.py::test_readme_python_example",
    ("docs/android.md", 0): "tests/test_mediapipe.py::test_classifier_top1_and_names",
    ("docs/backbone.md", 0): "tests/test_hub_presets.py::test_backbone_doc_preset_example",
    ("docs/backbone.md", 1): "tests/test_segmentation.py::test_backbone_doc_task_example",
}

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(doc):
    """``[(first line number of the code, code)]`` of a document's ```python blocks."""
    text = (ROOT / doc).read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def all_blocks():
    """``{(document, index): (line, code)}`` over README.md and docs/*.md."""
    return {(doc, i): block for doc in DOCS for i, block in enumerate(python_blocks(doc))}


@contextlib.contextmanager
def _chdir(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def block_source(doc, index):
    """The block's code and a file name ``doc:line`` for tracebacks."""
    line, code = python_blocks(doc)[index]
    return code, f"{ROOT / doc}:{line}"


def run_block(doc, index, cwd, namespace=None):
    """Executes block ``index`` of ``doc`` with ``cwd`` as working directory;
    returns its namespace (``namespace``: names defined before it runs)."""
    code, name = block_source(doc, index)
    ns = dict(namespace or {})
    ns.setdefault("__name__", "__doc_example__")
    with _chdir(cwd):
        exec(compile(code, name, "exec"), ns)  # noqa: S102 (the documented example)
    return ns
