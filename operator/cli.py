"""The ``trainscale`` command line: one console script, one subcommand per job.

Why this module exists: users meet the operator through it (``trainscale operator``,
``trainscale crd``); it parses flags and hands over to the module that does the work, so
each subcommand's heavy imports happen only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_crd(args: argparse.Namespace) -> int:
    from trainscale.operator.crd import render_crd_yaml

    text = render_crd_yaml()
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``trainscale`` command."""
    parser = argparse.ArgumentParser(
        prog="trainscale",
        description="Kubernetes-native autoscaler for elastic data-parallel PyTorch training.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = sub.add_parser("crd", help="print (or write) the TrainingJob CRD generated from the API models")
    crd.add_argument("-o", "--output", help="file to write instead of standard output")
    crd.set_defaults(func=_cmd_crd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainscale`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
