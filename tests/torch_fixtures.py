"""Session fixture: runs tests/torch_reference.py once in a subprocess.

torch/timm are never imported into the pytest process (importing torchvision
after TensorFlow crashes); the subprocess writes checkpoints and ``.npz``
logits into a temporary folder.
"""

import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REQUIRE_REFERENCE, SHARED_DATA, require_modules, require_shared

SCRIPT = pathlib.Path(__file__).with_name("torch_reference.py")


@pytest.fixture(scope="session")
def torch_ref(test_tmp):
    """Folder with the reference fixtures (see torch_reference.py); skips when
    torch/timm are not importable."""
    require_modules("torch", "timm", "safetensors")
    out = test_tmp / "torch_ref"
    cmd = [sys.executable, str(SCRIPT), str(out)]
    if REQUIRE_REFERENCE or (SHARED_DATA / "mobileone_s0.pth.tar").is_file():
        shared = require_shared("mobileone_s0.pth.tar", "imagenet-val-1300/labels.csv")
        cmd += ["--real", str(shared / "mobileone_s0.pth.tar"),
                "--images", str(shared / "imagenet-val-1300")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torch_reference.py failed:\n{proc.stderr[-4000:]}")
    return out
