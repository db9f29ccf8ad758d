"""The one exception type that the command-line tools turn into a one-line message and exit status 2."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable


class SnnlmError(Exception):
    """Bad input from the user: a missing file, a malformed checkpoint, an out-of-range option."""


def cli_main(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI entry point: SnnlmError becomes `snnlm: error: ...` on stderr and exit status 2,
    Ctrl-C becomes exit status 130 without a traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except SnnlmError as e:
            print(f"snnlm: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("snnlm: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are SnnlmErrors, so that `cli_main` reports them on one line, exit status 2."""

    def error(self, message: str):
        raise SnnlmError(f"{message} (see {self.prog} --help)")
