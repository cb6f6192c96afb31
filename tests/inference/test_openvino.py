"""OpenVINO's tests (tests/inference/openvino_cases.py) in a pytest process of their own.

Run late in the suite's one long process, OpenVINO used to kill the interpreter (SIGSEGV, no
Python traceback) while a later test waited for a child process. The cause: OpenVINO's CPU
plugin gave the main thread a signal stack per Core and, with Cores unloaded out of order, left
it pointing at unmapped memory, so the child's SIGCHLD (PyTorch's handler, installed by the
DataLoader tests) could not be delivered. Models now share one Core and NNCF runs with the
thread's signal stack put back (unet_resnet/inference/openvino.py); the cases check that. They
still run in a process of their own: NNCF's quantization holds GBs that the rest of the suite
does not need to share a heap with.
"""

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
