"""Command line: ``vista-finetune`` / ``python -m VistaFinetuneLib``; one module per command group, each with its
parsers and handlers side by side."""

from __future__ import annotations

import argparse
import sys

from VistaFinetuneLib import __version__
from VistaFinetuneLib.cli import bundles, datasets, jobs, prediction, results, training
from VistaFinetuneLib.errors import UserError

GROUPS = (training, datasets, bundles, results, jobs, prediction)


def build_parser() -> argparse.ArgumentParser:
    """The ``vista-finetune`` parser: every group's commands."""
    parser = argparse.ArgumentParser(
        prog="vista-finetune", description="Finetune the MONAI VISTA3D bundle on your CT data."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a UserError is one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
