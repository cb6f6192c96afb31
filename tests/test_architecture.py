"""The layer contract holds: imports go only downward, no cycles, no private reach-ins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed: `make install` installs the dev extra")
    return subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_import_contract_is_kept():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is live: a copy of the package with one upward import fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "unet_resnet", copy / "unet_resnet")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bad = copy / "unet_resnet" / "grid.py"
    bad.write_text(bad.read_text() + "\nfrom unet_resnet.inference import Segmenter  # noqa\n")
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [exe, "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "unet_resnet.grid -> unet_resnet.inference" in result.stdout


def test_no_private_segmenter_methods_outside_inference():
    from unet_resnet.inference import Segmenter

    # The names come from the class itself: a renamed private method stays covered.
    private = [n[1:] for n, v in vars(Segmenter).items() if n.startswith("_")
               and not n.startswith("__") and callable(v)]  # fmt: skip
    assert "prepare" in private and "views" in private
    pattern = re.compile(r"\._(" + "|".join(map(re.escape, private)) + r")\(")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("unet_resnet", "benchmarks", "examples")
        for path in (ROOT / folder).rglob("*.py")
        if "inference" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
