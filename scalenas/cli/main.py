"""The ``scalenas`` command line. Every user-facing problem is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from scalenas.errors import ScalenasError

# One module per command (group); each has add_parser(subparsers), which sets ``func(args) -> exit code``.
COMMANDS = ("inspect", "train_supernet", "train", "search", "extrapolate", "grow", "report", "latency", "demo")


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage + error otherwise)
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from scalenas import __version__

    p = OneLineParser(prog="scalenas", description="Search the model to scale: a base network and its scaling chain, "
                "jointly (ScaleNet). Train a super-supernet, search a family, extrapolate it, grow models.",
                epilog="Run 'scalenas demo' for the whole pipeline on the embedded animals data.")
    p.add_argument("--version", action="version", version=f"scalenas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    for name in COMMANDS:
        importlib.import_module(f"scalenas.cli.{name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    try:
        # Numeric flags check their values while parsing (cli.common.number): a bad one is a ScalenasError.
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            sys.stderr.write("scalenas: error: give a command (see scalenas --help)\n")
            return 2
        return int(args.func(args) or 0)
    except ScalenasError as exc:
        sys.stderr.write(f"scalenas: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("scalenas: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
