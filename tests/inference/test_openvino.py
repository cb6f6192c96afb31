"""OpenVINO's tests (tests/inference/openvino_cases.py) in a pytest process of their own.

Run late in the suite's one long process, after the data tests, OpenVINO crashed the
interpreter (SIGSEGV in CPython's frame setup, no Python traceback) in a test that did no
OpenVINO work itself, right after one that compiled models; alone, or first, every case
passes, and the CLI runs each command in a fresh process. Until the cause is found, the
cases run where nothing else has run before them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

ROOT = Path(__file__).resolve().parents[2]


def _cases(tmp_path, marks: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks,
         "tests/inference/openvino_cases.py", "--basetemp", str(tmp_path / "cases")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_openvino_cases_in_a_process_of_their_own(tmp_path):
    _cases(tmp_path, "not slow")


@pytest.mark.slow
def test_slow_openvino_cases_in_a_process_of_their_own(tmp_path):
    _cases(tmp_path, "slow")
