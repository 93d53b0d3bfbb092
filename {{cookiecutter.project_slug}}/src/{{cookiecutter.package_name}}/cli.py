"""The command line: ``<command> key=value ...``. It parses, hands the pairs to the command
(one module each in ``commands/``) and turns a ``UserError`` into one ``ERROR:`` line (exit
status 2) and an interrupted training run into one ``STOPPED:`` line (128 + the signal)."""
from __future__ import annotations

import argparse
import sys

from .commands import COMMANDS
from .errors import Interrupted, UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and sample diffusion models.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(command.USAGE for command in COMMANDS.values()))
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command].run(args.overrides)
    except UserError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if stop.report:
            print(f"STOPPED: {stop}", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
