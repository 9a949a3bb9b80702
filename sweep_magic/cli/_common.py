"""What every ``sweep-magic`` command shares: one-line usage errors and argument types."""

from __future__ import annotations

import argparse

from sweep_magic.options import count_type, nice_type  # noqa: F401  (the commands take them from here)


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit 2, nothing started."""


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (usage and message together), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

