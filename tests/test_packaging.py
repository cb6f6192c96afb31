"""The wheel installs and works outside the source tree, with its package data, and every
third-party module the package imports is a declared dependency (core or an extra)."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob("unet_resnet-*.whl")
    return path


def test_wheel_holds_package_data_and_metadata(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "unet_resnet/py.typed" in names
    assert "unet_resnet/serve/static/index.html" in names
    assert "u_net_resnet_50_encoder.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    metadata = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    assert "Requires-Python: >=3.10" in metadata
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "example.com" not in metadata and "TODO" not in metadata


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # Dependencies (torch and the rest) come from this environment's site-packages, added as
    # a plain path: its .pth files (the editable install of the source tree) are not run.
    Path(site, "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run(
        [python, "-c", "import unet_resnet, importlib.resources as r; print(unet_resnet.__file__);"
         "print(r.files('unet_resnet.serve').joinpath('static/index.html').is_file())"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(venv)) and where[1] == "True"
    script = venv / "bin" / "unet-resnet"
    help_text = subprocess.run(
        [script, "--help"], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout
    assert "train" in help_text and "predict" in help_text
    smoke = subprocess.run(
        [script, "smoke-test", "--encoder", "resnet18", "--encoder-weights", "none",
         "--size", "64", "64", "--batch-size", "1"],
        check=True, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    ).stdout  # fmt: skip
    assert "output: (1, 2, 64, 64)" in smoke


def _third_party_imports(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("unet_resnet", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(package.parent)))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    declared = {
        _normal(re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0])
        for requirement in importlib.metadata.requires("unet-resnet") or []
    }
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports(ROOT / "unet_resnet").items():
        distributions = {_normal(d) for d in providers.get(module, [module])}
        if not distributions & declared:
            undeclared[module] = sorted(files)[:3]
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
