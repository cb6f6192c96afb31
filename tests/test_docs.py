"""The documentation cannot rot: every command it shows must parse, every file it names exist.

The commands are also run for real elsewhere: the recipes (tests/test_recipes.py), the demo's
pieces and every subcommand have their own tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from unet_resnet.cli import build_parser
from unet_resnet.training.config_io import config_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").glob("*/README.md")),
]


def _commands(prefix: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith(prefix):
                    found.append((page.name, line))
    return found


UNET = _commands("unet-resnet ")


def test_docs_show_commands():
    assert len(UNET) >= 20
    assert {cmd.split()[1] for _, cmd in UNET} >= {
        "train",
        "predict",
        "evaluate",
        "check-data",
        "make-demo-data",
    }


@pytest.mark.parametrize(("page", "command"), UNET, ids=[f"{p}:{c[:60]}" for p, c in UNET])
def test_every_documented_command_parses(page, command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on an unknown flag or a bad choice
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")


def test_documented_scripts_and_make_targets_exist():
    for page, command in _commands("python "):
        argv = shlex.split(command)[1:]
        if argv[0] == "-m":  # a module of the repository: its file or package must exist
            module = ROOT.joinpath(*argv[1].split("."))
            found = module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()
            assert found, f"{page}: module {argv[1]} does not exist"
        else:
            assert (ROOT / argv[0]).is_file(), f"{page}: {argv[0]} does not exist"
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for page, command in _commands("make "):
        assert command.split()[1] in targets, f"{page}: make {command.split()[1]} is no target"


def test_config_reference_is_current():
    assert config_reference() in (ROOT / "docs" / "config.md").read_text(), (
        "docs/config.md is out of date: run `make docs`"
    )
