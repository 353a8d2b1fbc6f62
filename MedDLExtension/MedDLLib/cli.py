"""The ``meddl`` command: one command line for the shared library and the four tasks.

Each subcommand lives in the module that owns the concept and exposes ``add_parser(subparsers)``; this file
only assembles them and turns expected errors (:class:`~MedDLLib.errors.MedDLError`, and the system's
:class:`OSError` naming a path it refused) into one clear line on stderr and a non-zero exit status. Heavy
imports (torch, slicer) happen inside the subcommands.

Inside Slicer the same entry point runs as
``Slicer --no-main-window --python-script <MedDLExtension>/MedDLScripts/meddl_batch.py -- <subcommand> ...``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from typing import Sequence

from .errors import MedDLError

#: Modules (relative to MedDLLib) that provide ``add_parser(subparsers)``, in the order of ``meddl --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "commands_dicom",  # inspect, convert
    "commands_tasks",  # phantom, train, evaluate, infer, batch, bench
    "demo",  # demo
    "commands_models",  # models list|import|verify|remove
)

EXIT_USAGE = 2
EXIT_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    """The full ``meddl`` argument parser (every subcommand registered)."""
    parser = argparse.ArgumentParser(
        prog="meddl",
        description="MedDL: deep learning for brain and chest imaging (research use only).",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks for every error")
    subparsers = parser.add_subparsers(dest="command", metavar="<subcommand>")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet must not break the others
            if exc.name == f"{__package__}.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``meddl``; returns the exit status (0 success, 1 expected error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (MedDLError, OSError) as exc:  # OSError: a file or folder the system refused (path, permission, disk)
        if args.verbose:
            raise
        print(f"meddl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"meddl {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def run() -> int:
    """The ``meddl`` executable: :func:`main`, then the collector frozen for the interpreter's exit.

    After ``import torch`` a process holds millions of objects that the final collections at exit would walk
    (about 0.4 s of every run on a laptop CPU, measured). Freezing them (``gc.freeze``) leaves them to the
    system, which frees the whole process at once; destructors that free by reference count still run. Only
    the executable does this: a process that goes on after :func:`main` (tests, Slicer) keeps its collector.
    """
    status = main()
    gc.freeze()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
