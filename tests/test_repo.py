"""Repository hygiene: the CI entry point runs the README's test command."""

import re

from tests.conftest import ROOT


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_readme_test_command_verbatim():
    commands = _readme_commands()
    test_command = [c for c in commands if "pytest" in c]
    assert len(test_command) == 1, "README must show exactly one test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command[0].strip() in [line.strip() for line in ci]


def test_layout():
    for path in ("mobileone_tf", "scripts", "checkpoints", "tests", "setup.cfg", "README.md",
                 "pyproject.toml", ".ci/run", ".gitignore"):
        assert (ROOT / path).exists(), path


# --- structure (issue 11): the rules of docs/DESIGN.md, checked ---------------
import ast  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

PACKAGE = ROOT / "mobileone_tf"
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def _modules(root=ROOT):
    """{dotted module name: path} of every module of the package."""
    out = {}
    for path in sorted((root / "mobileone_tf").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path, module, top_level_only, mods=None):
    """Package modules imported by ``path`` (``from x import y`` counts as
    ``x.y`` when that is a module); function-level imports only when
    ``top_level_only`` is False."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    mods = _modules() if mods is None else mods
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                pkg = module.split(".")
                pkg = pkg[: len(pkg) - node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join(pkg + [node.module])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in mods and n != module)
    return found


def _cycle(graph):
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, stack + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def _module_graph(root=ROOT):
    mods = _modules(root)
    return {m: {i for i in _imports(p, m, top_level_only=False, mods=mods)
                if not m.startswith(i + ".")} for m, p in mods.items()}


def test_no_import_cycle_between_modules():
    """No module cycle, counting imports inside functions too."""
    graph = _module_graph()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_cycle_check_sees_function_level_imports(tmp_path):
    """The check above can fail: a function-level import that closes a cycle
    (models.state importing builders at the top, builders importing state
    inside a function, as before issue 24) is found."""
    pkg = tmp_path / "mobileone_tf"
    (pkg / "models").mkdir(parents=True)
    for name in ("__init__.py", "models/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "models" / "state.py").write_text("from mobileone_tf.models.builders import X\n")
    (pkg / "models" / "builders.py").write_text(
        "X = 1\n\ndef f():\n    from mobileone_tf.models.state import load\n")
    assert _cycle(_module_graph(tmp_path)) is not None


def test_no_import_cycle_between_subpackages():
    """Counting imports inside functions too, subpackages depend one way."""
    def unit(name):
        parts = name.split(".")
        return ".".join(parts[:2])
    graph = {}
    for m, p in _modules().items():
        for i in _imports(p, m, top_level_only=False):
            if unit(i) != unit(m):
                graph.setdefault(unit(m), set()).add(unit(i))
    assert _cycle(graph) is None, f"subpackage cycle: {' -> '.join(_cycle(graph))}"


STATE_KEY_LITERAL = re.compile(
    r"(^|/)(conv_kxk|conv_scale|identity|reparam|se|bn|head)/"
    r"|/(conv_kxk|conv_scale|identity|reparam|se|reduce|expand|head|kernel|bias|gamma|beta"
    r"|moving_mean|moving_variance)($|/)")
"""A piece of a flat weight-state key (``stem/conv_kxk/0/bn/gamma``,
``head/kernel``, ``"/reparam/kernel"`` ...) spelled in a string."""


def _code_strings(tree):
    """``(line, text)`` of the string constants of a module, f-string pieces
    included, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for i, node in enumerate(getattr(tree, "body", ())):  # attribute docstrings
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and i:
            docstrings.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.lineno, node.value


def test_state_key_literals_only_in_the_schema_module():
    """The flat state keys are built and parsed by ``mobileone_tf/state_keys.py``
    alone: no other module (or script) spells a piece of one in a string."""
    found = []
    for path in list(PACKAGE.rglob("*.py")) + SCRIPTS:
        if path == PACKAGE / "state_keys.py":
            continue
        for line, text in _code_strings(ast.parse(path.read_text())):
            if STATE_KEY_LITERAL.search(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "state-key literals outside state_keys.py:\n" + "\n".join(found)


def test_state_key_literal_check_can_fail():
    """The pattern above finds the spellings this package used before issue 24."""
    code = ('state[f"{name}/reparam/kernel"] = 1\n'
            'x = state["head/kernel"]\n'
            'pairs = [("se/reduce", a), (f"conv_kxk/{i}/bn", b)]\n'
            'm = {"running_var": "moving_variance"}\n'
            'def f():\n    """head/kernel in a docstring is fine."""\n')
    hits = sorted(text for _, text in _code_strings(ast.parse(code))
                  if STATE_KEY_LITERAL.search(text))
    assert hits == ["/reparam/kernel", "conv_kxk/", "head/kernel", "se/reduce"], hits


def test_module_sizes():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
    scripts = {p.name: n for p in SCRIPTS if (n := len(p.read_text().splitlines())) > 80}
    assert not scripts, f"scripts are thin shells (<= 80 lines): {scripts}"


def test_no_private_internals():
    """Public Keras API only; no private names of other modules; the TFLite
    op census (`_get_ops_details`) lives in runtime.py alone."""
    banned = ("_run_through_graph", "_keras_history", "_inbound_nodes", "keras.src",
              "tf_keras.src")
    for path in list(PACKAGE.rglob("*.py")) + SCRIPTS:
        text = path.read_text()
        for word in banned:
            assert word not in text, f"{path.relative_to(ROOT)} uses {word}"
        if path.name != "runtime.py":
            assert "_get_ops_details" not in text, f"{path.relative_to(ROOT)}: op census"
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mobileone_tf"):
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(ROOT)} imports {private}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                    and node.value.id in {"mo", "mobileone_tf", "models", "layers", "weights",
                                          "data", "export", "runtime", "quantization",
                                          "training", "benchmark", "variants", "fileio", "cli",
                                          "mo_layers", "mo_models", "mo_weights", "mo_data",
                                          "mo_export"}:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} uses "
                                     f"{node.value.id}.{node.attr}")


def test_keras_hub_private_module_in_one_place():
    """KerasHub has no public way to register preset names: its
    ``keras_hub.src.utils.preset_utils.register_presets`` is imported by
    ``hub/named_presets.py`` alone (documented there)."""
    users = sorted(str(p.relative_to(ROOT)) for p in list(PACKAGE.rglob("*.py")) + SCRIPTS
                   if "import" in p.read_text() and "keras_hub.src" in p.read_text())
    assert users == ["mobileone_tf/hub/named_presets.py"], users


def test_tests_do_not_import_scripts():
    for path in (ROOT / "tests").glob("*.py"):
        if path.name == "test_repo.py":
            continue
        text = path.read_text()
        assert 'ROOT / "scripts")' not in text and "spec_from_file_location" not in text, path


def test_import_is_light():
    code = ("import sys, mobileone_tf, mobileone_tf.fileio, mobileone_tf.cli, "
            "mobileone_tf.variants, mobileone_tf.state_keys; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_script_help_imports_no_tensorflow(script):
    """``--help`` answers without importing TensorFlow (the slow part of a
    start-up), so it stays fast."""
    proc = subprocess.run([sys.executable, "-X", "importtime", f"scripts/{script}", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "USAGE" in proc.stdout or "flags" in proc.stdout.lower()
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" not in imported and "keras" not in imported, script


def test_user_error_is_one_line_without_tensorflow_noise(tmp_path):
    """A script that builds models imports TensorFlow first, quietly: a user
    error prints exactly one ``error:`` line, no start-up logs, no traceback."""
    missing = tmp_path / "missing.jpg"
    proc = subprocess.run([sys.executable, "scripts/classify.py", str(missing)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: No such image file: {missing}"]


# --- public API (issue 24): declared by mobileone_export where each name is
# defined, written into every package __init__.py by tools/gen_api.py ---------
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

TOP_LEVEL_API = ["MobileOne", "MobileOneS0", "MobileOneS1", "MobileOneS2", "MobileOneS3",
                 "MobileOneS4", "decode_predictions", "feature_extractor", "feature_info",
                 "fuse", "load_weights", "model_info", "preprocess_input"]
INTERNALS = ("BASE_DOCSTRING", "FailAt", "take_images")


def _packages(root=ROOT):
    return sorted(".".join(p.parent.relative_to(root).parts)
                  for p in (root / "mobileone_tf").rglob("__init__.py"))


def _exports(package, root=ROOT):
    """The generated ``{name: module}`` table of ``package``, read with ast."""
    path = root.joinpath(*package.split("."), "__init__.py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] \
                == ["_EXPORTS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no generated _EXPORTS table")


def _gen_api(*args, root=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gen_api.py"), f"--root={root}",
                           *args], capture_output=True, text=True, timeout=120)


def test_generated_api_is_current():
    proc = _gen_api("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gen_api_names_a_stale_file_and_rewrites_it(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "mobileone_tf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    init = tmp_path / "mobileone_tf" / "export" / "__init__.py"
    tflite = tmp_path / "mobileone_tf" / "export" / "tflite.py"
    assert _exports("mobileone_tf.export", tmp_path)["to_tflite"] == ".tflite"
    declaration = '@mobileone_export("mobileone_tf.export")\ndef to_tflite('
    tflite.write_text(tflite.read_text().replace(declaration, "def to_tflite("))
    proc = _gen_api("--check", root=tmp_path)
    assert proc.returncode == 1
    assert "stale: mobileone_tf/export/__init__.py" in proc.stderr, proc.stderr
    assert proc.stderr.count("stale:") == 1
    assert _gen_api(root=tmp_path).returncode == 0
    assert "to_tflite" not in _exports("mobileone_tf.export", tmp_path)
    assert init.read_text().startswith('"""Deployment export')  # hand-written part kept
    assert _gen_api("--check", root=tmp_path).returncode == 0
    # a declaration naming no package: one error line naming file and line, nothing written
    before = init.read_text()
    tflite.write_text(tflite.read_text().replace(
        "def to_tflite(", '@mobileone_export("mobileone_tf.exports")\ndef to_tflite('))
    proc = _gen_api(root=tmp_path)
    assert proc.returncode == 2 and init.read_text() == before
    assert re.fullmatch(r"error: \S+/export/tflite\.py:\d+: 'mobileone_tf\.exports' is not a "
                        r"package\n", proc.stderr), proc.stderr


def test_top_level_api_is_small():
    import mobileone_tf
    assert sorted(mobileone_tf.__all__) == sorted(TOP_LEVEL_API)
    assert re.fullmatch(r"\d+\.\d+\.\d+", mobileone_tf.__version__)


def test_internals_are_not_exported():
    for package in _packages():
        leaked = sorted(set(INTERNALS) & set(_exports(package)))
        assert not leaked, f"{package} exports {leaked}"


def test_every_exported_name_resolves_to_its_defining_module():
    """Each package imports without TensorFlow (KerasHub's ``hub`` aside);
    then every name of every ``__all__`` resolves, functions and classes to
    the module the table names."""
    code = """if True:
        import importlib, inspect, json, sys
        packages = json.loads(sys.argv[1])
        for p in packages:
            if p != "mobileone_tf.hub":
                importlib.import_module(p)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, heavy[:5]
        for p in packages:
            package = importlib.import_module(p)
            assert sorted(package.__all__) == sorted(package._EXPORTS), p
            for name in package.__all__:
                value = getattr(package, name)
                module = package._EXPORTS[name]
                module = p + module if module.startswith(".") else module
                if inspect.isfunction(value) or inspect.isclass(value):
                    assert value.__module__ == module, (p, name, value.__module__, module)
                assert name in dir(package), (p, name)
        print(sum(len(importlib.import_module(p).__all__) for p in packages))
    """
    packages = _packages()
    assert len(packages) >= 11, packages
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(packages)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) == sum(len(_exports(p)) for p in packages)


def _package_uses(path, packages):
    """{(package, name)} that ``path`` reaches as ``package.name`` or ``from
    package import name`` (aliases followed; ``import mobileone_tf as mo``)."""
    tree = ast.parse(path.read_text())
    alias, uses = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in packages:
                    alias[a.asname or a.name.split(".")[0]] = a.asname and a.name or "mobileone_tf"
        elif isinstance(node, ast.ImportFrom) and node.module in packages and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in packages:
                    alias[a.asname or a.name] = full
                else:
                    uses.add((node.module, a.name))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in alias:
            continue
        package = alias[base.id]
        while chain and f"{package}.{chain[0]}" in packages:
            package = f"{package}.{chain.pop(0)}"
        if chain:
            uses.add((package, chain[0]))
    return uses


def test_users_reach_only_exported_names():
    """Scripts, tests, tools and the package itself use a package's exported
    names (or its modules): nothing reaches a name the tables lost."""
    packages = set(_packages())
    tables = {p: _exports(p) for p in packages}
    files = [p for p in [*PACKAGE.rglob("*.py"), *SCRIPTS, *(ROOT / "tests").glob("*.py"),
                         *(ROOT / "tools").glob("*.py")] if p.name != "__init__.py"]
    missing = set()
    for path in files:
        for package, name in _package_uses(path, packages):
            folder = ROOT.joinpath(*package.split("."))
            if name not in tables[package] and not name.startswith("__") \
                    and not (folder / f"{name}.py").exists() and not (folder / name).is_dir():
                missing.add(f"{path.relative_to(ROOT)}: {package}.{name}")
    assert not missing, sorted(missing)
