"""The launch options every front door takes (the API, the magic, the terminal), checked
by one rule each, and the argparse types the magic and ``sweep-magic`` parse them with."""

from __future__ import annotations

import argparse


def valid_count(count) -> bool:
    """``count``: None, or a whole number ≥ 1 (runs per agent)."""
    return count is None or (not isinstance(count, bool) and isinstance(count, int) and count >= 1)


def valid_nice(nice) -> bool:
    """``nice``: None, or a whole number from 0 to 19 (19 = lowest priority)."""
    return nice is None or (not isinstance(nice, bool) and isinstance(nice, int) and 0 <= nice <= 19)


def whole_number(rule, wanted: str):
    """An argparse type: a whole number that ``rule`` accepts."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not rule(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


count_type = whole_number(valid_count, "a whole number ≥ 1")
nice_type = whole_number(valid_nice, "a whole number from 0 to 19 (19 = lowest priority)")
