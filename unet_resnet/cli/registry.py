"""The command registry: each command module registers its subcommands here."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "command"]

Handler = Callable[[argparse.Namespace], int]
Setup = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler
    setup: Setup
    #: Runs inside :func:`unet_resnet.accel.memory.keep_freed_memory`: commands that run a model
    #: over many inputs (each would otherwise page in its activations afresh).
    keeps_freed_memory: bool = False


COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def command(
    name: str,
    help: str,
    arguments: Setup = _no_arguments,
    *,
    keeps_freed_memory: bool = False,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as subcommand ``name``; ``arguments`` adds its options.

    The function takes the parsed arguments and returns the exit code.
    """

    def register(func: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, func, arguments, keeps_freed_memory)
        return func

    return register
