"""``python scripts/classify.py`` with no argument: README's first command
(issue 13). Run as a user would, in a subprocess from a folder outside the
repository, with ``MOBILEONE_TF_CHECKPOINTS`` pointing at Apple's S0
checkpoint (the offline variant of the download); the top-5 classes of the
bundled CC0 photos are checked against what Apple's S0 is known to say.
"""

import csv
import os
import re
import subprocess
import sys

from tests.conftest import ROOT, require_shared

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
ROCKET = {657, 744, 812}  # missile, projectile, space shuttle


def test_classify_samples_without_arguments(tmp_path):
    shared = require_shared("mobileone_s0.pth.tar", "imagenet_classes.csv")
    with open(shared / "imagenet_classes.csv", newline="") as f:
        index = {row["synset"]: int(row["index"]) for row in csv.DictReader(f)}
    env = dict(os.environ, MOBILEONE_TF_CHECKPOINTS=str(shared), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "classify.py")], cwd=tmp_path,
                          env=env, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sample photos" in proc.stderr
    tops, current = {}, None
    for line in proc.stdout.splitlines():
        if not line.startswith(" "):
            current = os.path.basename(line.strip())
            tops[current] = []
        else:
            tops[current].append(index[re.search(r"\((n\d{8})\)$", line).group(1)])
    assert sorted(tops) == ["chelsea.jpg", "coffee.jpg", "rocket.jpg"], proc.stdout
    assert all(len(t) == 5 for t in tops.values()), proc.stdout
    # Apple's S0: Egyptian cat 75 %, espresso 94 %, rocket: drilling platform 42 % then missile
    assert tops["chelsea.jpg"][0] in CATS and set(tops["chelsea.jpg"][:3]) <= CATS, proc.stdout
    assert tops["coffee.jpg"][0] in COFFEE, proc.stdout
    assert ROCKET & set(tops["rocket.jpg"]), proc.stdout
    assert not list(tmp_path.iterdir())  # writes nothing where it runs


def test_readme_python_example(monkeypatch, capsys):
    """README's Python quick start, executed as written from the repository
    root (``weights="imagenet"``: Apple's S0 from ``MOBILEONE_TF_CHECKPOINTS``)."""
    shared = require_shared("mobileone_s0.pth.tar")
    monkeypatch.setenv("MOBILEONE_TF_CHECKPOINTS", str(shared))
    from tests.doc_examples import run_block
    ns = run_block("README.md", 0, cwd=ROOT)
    import mobileone_tf as mo
    probs = ns["probs"]
    assert probs.shape == (2, 1000) and abs(probs.sum(1) - 1).max() < 1e-4
    top1 = probs.argmax(1)
    assert top1[0] in CATS and top1[1] in COFFEE, top1
    printed = capsys.readouterr().out
    assert printed.count("(") >= 10 and "n0" in printed  # 2 x 5 (synset, name, p) tuples
    assert mo.models.model_form(ns["fused"]) == "fused"
    assert mo.models.model_form(ns["model"]) == "branched"
    assert mo.models.model_form(ns["deploy"]) == "fused"
    assert ns["backbone"].output.shape == (None, 2048)  # S4: last stage 1024 x 2.0
