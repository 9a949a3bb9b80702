"""What every ``sweep-magic`` command shares: one-line usage errors and argument types."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A mistake in the command line or its inputs: one line on stderr, exit 2, nothing started."""


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (usage and message together), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _whole(rule, wanted: str):
    """An argparse type: a whole number that ``rule`` (the API's own check) accepts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not rule(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


def _count_rule(value: int) -> bool:
    from sweep_magic.api import valid_count

    return valid_count(value)


def _nice_rule(value: int) -> bool:
    from sweep_magic.api import valid_nice

    return valid_nice(value)


count_type = _whole(_count_rule, "a whole number ≥ 1")
nice_type = _whole(_nice_rule, "a whole number from 0 to 19 (19 = lowest priority)")
