"""The ``unet-resnet`` command: one entry point, one subcommand per job.

Each command group lives in its own module and registers its subcommands in
:mod:`unet_resnet.cli.registry`; the modules only parse flags and call the library.
Problems a user can fix (:class:`~unet_resnet.errors.UnetResnetError`) are printed as one
message with no traceback and exit with code 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Sequence

from unet_resnet._version import __version__
from unet_resnet.accel.memory import keep_freed_memory
from unet_resnet.cli import data, demo, models, predict, serve, train  # noqa: F401 (registers)
from unet_resnet.cli.registry import COMMANDS
from unet_resnet.errors import UnetResnetError
from unet_resnet.hardware import device_class

__all__ = ["build_parser", "main"]

#: Faults of the machine, not of the program: reported in one line naming the path.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-resnet",
        description="Image segmentation with a U-Net on a pretrained ResNet-50 encoder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.setup(p)
        p.set_defaults(func=cmd.run, keeps_freed_memory=cmd.keeps_freed_memory)
    return parser


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    # Warnings are notices for a person at a terminal: the message, not the source line.
    print(f"notice: {message}", file=sys.stderr if file is None else file)


def _quiet_lightning() -> None:
    # Lightning's start-up banner (GPU/TPU availability, tips, limit_* notes) is noise at a
    # terminal; its warnings and errors still show.
    import logging

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def _keeps_freed_memory(args: argparse.Namespace) -> bool:
    """A command registered to keep freed memory does so where its model runs on the CPU
    (a glibc trick of the CPU device class; a GPU's allocator keeps its own)."""
    if not args.keeps_freed_memory:
        return False
    try:
        return device_class(getattr(args, "device", None) or "auto").cpu_memory_reuse
    except (RuntimeError, ValueError):  # a bad --device: the command itself reports it
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_lightning()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_notice
            with keep_freed_memory(_keeps_freed_memory(args)):
                return args.func(args)
    except UnetResnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # A full disk or a folder we may not write: the cause and the path, no traceback.
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write{where}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
