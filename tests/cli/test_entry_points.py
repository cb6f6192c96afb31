"""The guide's entry points: the smoke-test script, the import, and its training snippet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unet_resnet.cli import main

REPO = Path(__file__).resolve().parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_script_runs_offline_with_one_notice(tmp_path):
    """`python u_net_resnet_50_encoder.py` on CPU with an empty cache and no network."""
    result = subprocess.run(
        [sys.executable, str(REPO / "u_net_resnet_50_encoder.py"), "--size", "96", "64"],
        capture_output=True,
        text=True,
        env=_clean_env(TORCH_HOME=str(tmp_path), UNET_RESNET_OFFLINE="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "input:  (2, 3, 96, 64)" in result.stdout
    assert "output: (2, 2, 96, 64)" in result.stdout
    notices = [line for line in result.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "random" in notices[0]
    assert "Traceback" not in result.stderr


def test_import_touches_neither_network_nor_cuda(tmp_path):
    """Importing the package and the guide's module opens no socket and initialises no CUDA."""
    code = """
import socket
def refuse(*args, **kwargs):
    raise AssertionError("network touched at import")
socket.socket.connect = refuse
socket.create_connection = refuse
import torch
import unet_resnet, unet_resnet.cli, u_net_resnet_50_encoder
from u_net_resnet_50_encoder import (
    UNetWithResnet50Encoder, ConvBlock, Bridge, UpBlockForUNetWithResNet50
)
assert not torch.cuda.is_initialized()
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # not the repo: the module must come from the installed package
        capture_output=True,
        text=True,
        env=_clean_env(TORCH_HOME=str(tmp_path)),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_guide_training_snippet_runs_unchanged(cached_imagenet):
    """The guide's training example, verbatim apart from data, with weights from the cache."""
    cached_imagenet("resnet50")
    from u_net_resnet_50_encoder import UNetWithResnet50Encoder

    torch.manual_seed(0)
    inputs = torch.rand(2, 3, 64, 64)
    labels = torch.randint(0, 2, (2, 64, 64))
    dataloader = [(inputs, labels)] * 3
    num_epochs = 2

    model = UNetWithResnet50Encoder(num_classes=2)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    losses = []
    for _epoch in range(num_epochs):
        for inputs, labels in dataloader:
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_cli_reports_bad_weights_path_without_traceback(tmp_path, capsys):
    code = main(
        [
            "smoke-test",
            "--encoder",
            "resnet18",
            "--encoder-weights",
            str(tmp_path / "missing.pth"),
            "--size",
            "32",
            "32",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.pth" in err and err.startswith("error: ")
    assert "Traceback" not in err


def test_cli_lists_models(capsys):
    assert main(["models"]) == 0
    assert "unet_resnet50" in capsys.readouterr().out.split()


@pytest.mark.parametrize("argv", [["smoke-test", "--help"], ["--version"]])
def test_cli_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "unet-resnet" in capsys.readouterr().out


def test_every_command_prints_its_help(capsys):
    """Each command's --help renders (argparse %-formats help texts built from the config)."""
    from unet_resnet.cli.registry import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name
        text = capsys.readouterr().out
        assert f"unet-resnet {name}" in text
        if name == "train":  # a literal percent sign survives
            assert "over 10% of" in " ".join(text.split())
