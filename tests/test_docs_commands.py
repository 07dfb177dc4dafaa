"""Every ``python scripts/NAME.py`` command that README.md and docs/*.md show
(fenced code blocks, and inline code spans that name a script) parses with
that script's own absl flags: a renamed or removed flag, or a value of the
wrong type, fails here (issue 21).

Each script's module code runs in a subprocess (``runpy.run_path`` with a
``__name__`` other than ``"__main__"``: its flags are defined, ``main`` does not
run, TensorFlow is not imported) and ``absl.flags.FLAGS(argv)`` parses every
command of that script (one subprocess per script): absl rejects
unknown flags and values of the wrong type. ``train.py``'s list flags are
also read back through ``TrainConfig`` (``config.from_flags``: their element
types). A command shortened with ``...`` may leave out required flags; a flag
named in a shell comment next to a command must exist (name only).

Also runnable as the worker: ``python tests/test_docs_commands.py SCRIPT JSON``
(prints one JSON list: the error of each command, or null).
"""

import json
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {p.stem for p in ROOT.glob("scripts/*.py")}
#: scripts whose commands the docs must keep showing (a parser regression
#: that finds none of them would make the test vacuous)
EXPECTED = {"classify", "port_weights", "evaluate", "convert", "qat", "benchmark",
            "train", "train_segmenter", "verify_coreml", "quant_sensitivity"}
FENCED_COMMAND = r"\bpython[\d.]*\s+(?:\S*/)?scripts/\w+\.py\b"
SCRIPT_TOKEN = re.compile(r"^(?:.*/)?scripts/(\w+)\.py$|^(\w+)\.py$")
REQUIRED_MISSING = "must have a value other than None"


# --- extraction --------------------------------------------------------------
def fenced_blocks(text):
    """The contents of the ``` fenced blocks of a markdown text, and the text
    with them blanked out."""
    blocks, rest, current = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
            rest.append("")
        elif current is not None:
            current.append(line)
            rest.append("")
        else:
            rest.append(line)
    return blocks, "\n".join(rest)


def _script_of(token, full_only):
    m = SCRIPT_TOKEN.match(token)
    if not m or (full_only and not m.group(1)):
        return None
    name = m.group(1) or m.group(2)
    return name if name in SCRIPTS else None


def commands_in(line, where, full_only=True):
    """``[{script, argv, partial, where}]`` for each script invocation in one
    logical shell line (``&&`` / ``;`` / ``|`` separate commands; env-var
    prefixes and ``python`` are skipped; ``[--opt x]`` brackets dropped)."""
    if not re.search(FENCED_COMMAND if full_only else r"\b\w+\.py\b", line):
        return []
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:  # unbalanced quotes: the doc is broken
        return [{"script": None, "argv": [], "partial": False, "where": where,
                 "error": f"unparsable shell line ({e}): {line}"}]
    found, segment = [], []
    for token in tokens + ["&&"]:
        if token not in ("&&", "||", ";", "|"):
            segment.append(token)
            continue
        for i, tok in enumerate(segment):
            name = _script_of(tok, full_only)
            if name:
                args = [a.strip("[]") for a in segment[i + 1:]]
                partial = "..." in args or not (i and segment[i - 1].startswith("python"))
                found.append({"script": name, "argv": [a for a in args if a != "..."],
                              "partial": partial, "where": where})
                break
        segment = []
    return found


def comment_flags(comment):
    """Flag names (``--name``, ``--noname``) mentioned in a shell comment."""
    return re.findall(r"(?<![\w-])--(\w+)", comment)


def doc_commands():
    """``(fenced, inline)``: the commands of README.md and docs/*.md; each
    fenced command may carry ``names`` (flags its comments mention)."""
    fenced, inline = [], []
    for doc in DOCS:
        rel = doc.relative_to(ROOT)
        blocks, prose = fenced_blocks(doc.read_text())
        for b, block in enumerate(blocks):
            logical = re.sub(r"\\\n", " ", block).splitlines()
            last = None
            for line in logical:
                where = f"{rel} (block {b + 1}): {line.strip()[:100]}"
                hash_ = re.search(r"(?:^|\s)#", line)  # a shell comment (no '#' in quotes here)
                code, comment = (line[:hash_.start()], line[hash_.end():]) if hash_ else (line, "")
                found = commands_in(code, where) if code.strip() else []
                fenced.extend(found)
                if code.strip() or not comment:  # a comment belongs to the command above
                    last = found[-1] if found else None
                if last is not None and comment_flags(comment):
                    last.setdefault("names", []).extend(comment_flags(comment))
        for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose):
            span = " ".join(span.split())
            if re.search(r"\b\w+\.py\b", span):
                inline.extend(commands_in(span, f"{rel} (inline): {span[:100]}",
                                          full_only=False))
    return fenced, inline


# --- the worker: parse with the script's flags --------------------------------
def _placeholders(argv, fv, partial):
    """``argv`` with an upper-case placeholder value of a number flag (``--classes
    N``: one capital letter) made a number, and (``partial``) a trailing value-less flag that is
    only named (```qat.py --exclude```) dropped once its name is checked."""
    out = list(argv)
    for i, token in enumerate(out):
        name = token[2:].split("=")[0] if token.startswith("--") else None
        if name not in fv or "=" in token or fv[name].boolean:
            continue
        if i + 1 == len(out) and partial:
            return out[:i]
        if i + 1 < len(out) and re.fullmatch(r"[A-Z]", out[i + 1]) \
                and fv[name].flag_type() in ("int", "float"):
            out[i + 1] = "1"
    return out


def _worker(script, commands):
    import runpy

    from absl import flags
    sys.path.insert(0, str(script.parent))
    # defines the flags; main() does not run (__name__ is not "__main__")
    module = runpy.run_path(str(script), run_name=f"docs_check_{script.stem}")
    fv, errors = flags.FLAGS, []
    known = set(fv)
    for command in commands:
        error = None
        for name in command.get("names", []):
            if name not in known and not (name.startswith("no") and name[2:] in known):
                error = f"--{name} (in a comment) is not a flag of {script.name}"
        try:
            fv.unparse_flags()
            fv([script.name, *_placeholders(command["argv"], fv, command["partial"])])
            config = module.get("config")
            if error is None and hasattr(config, "from_flags"):
                config.from_flags(fv)  # list flags: element types
        except (flags.Error, ValueError) as e:
            if not (command["partial"] and REQUIRED_MISSING in str(e)):
                error = error or f"{type(e).__name__}: {e}"
        errors.append(error)
    print(json.dumps(errors))


# --- the test -------------------------------------------------------------------
BROKEN = {  # commands each script must refuse: the check can fail
    "convert": [
        {"argv": ["--format", "tflite", "--output", "m.tflite", "--no_such_flag", "1"]},
        {"argv": ["--format", "tflite", "--output", "m.tflite", "--input_size", "DIR"]},
        {"argv": ["--format", "tfjs", "--output", "m.tflite"]},
        {"argv": ["--output", "m.tflite"]},
        {"argv": ["--format", "tflite", "--output", "m"], "names": ["calibration_excludes"]}],
    "train": [{"argv": ["--train_data", "D", "--output_dir", "O", "--image_sizes", "160,big"]}],
}


def test_every_documented_command_parses_with_its_script_flags():
    fenced, inline = doc_commands()
    bad_lines = [c["error"] for c in fenced + inline if c.get("error")]
    assert not bad_lines, bad_lines
    # a parser regression must not make this vacuous
    assert len(fenced) >= 25, [c["where"] for c in fenced]
    assert EXPECTED <= {c["script"] for c in fenced}, sorted({c["script"] for c in fenced})
    assert len(inline) >= 5, [c["where"] for c in inline]
    by_script = {}
    for command in fenced + inline:
        by_script.setdefault(command["script"], []).append(command)
    for name, broken in BROKEN.items():
        by_script[name] += [dict(b, partial=False, where="BROKEN") for b in broken]
    failures = []
    for name, commands in sorted(by_script.items()):
        proc = subprocess.run([sys.executable, __file__, str(ROOT / "scripts" / f"{name}.py"),
                               json.dumps(commands)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        errors = json.loads(proc.stdout.strip().splitlines()[-1])
        assert len(errors) == len(commands)
        for command, error in zip(commands, errors):
            if command["where"] == "BROKEN":
                assert error, f"the check accepted a broken command: {command['argv']}"
            elif error:
                failures.append(f"{command['where']}\n    {error}")
    assert not failures, "documented commands that the scripts reject:\n" + "\n".join(failures)


if __name__ == "__main__":
    _worker(pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]))


def test_every_python_example_is_executed_by_a_named_test():
    """Each ```python block of README.md and docs/*.md is listed in
    tests/doc_examples.py's EXECUTED, and the test named there exists and
    runs that block (``run_block`` / ``block_source`` with its document and
    index): an example added, moved or dropped without a test fails here."""
    sys.path.insert(0, str(ROOT))
    from tests import doc_examples
    blocks = doc_examples.all_blocks()
    assert len(blocks) >= 4  # README's quick start, android.md, backbone.md x 2
    assert set(blocks) == set(doc_examples.EXECUTED), (
        sorted(set(blocks) ^ set(doc_examples.EXECUTED)))
    for (doc, index), test in doc_examples.EXECUTED.items():
        path, name = test.split("::")
        source = (ROOT / path).read_text()
        start = source.index(f"def {name}(")
        end = source.find("\ndef ", start + 1)
        body = source[start:end if end > 0 else None]
        call = re.search(rf"(run_block|block_source)\(\s*\"{re.escape(doc)}\",\s*{index}\b", body)
        assert call, f"{test} does not run {doc}'s python block {index}"
