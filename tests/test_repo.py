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
