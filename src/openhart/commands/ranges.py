"""Numeric flags with their ranges, checked at parse time (`type=integer(1, 1024)`), so that a
value such as `--batch-size 0`, `--dilate 1e12` or a 400-digit number is one usage line naming the
flag before anything is loaded."""

from __future__ import annotations

import argparse
import math

from ..seeding import MAX_SEED

MAX_DIGITS = 40  # longer numbers are refused before parsing (Python refuses > 4300 digits itself)


def integer(low: int, high: int):
    """An argparse type: an integer in [low, high] (written in decimal)."""

    def parse(text: str) -> int:
        text = text.strip()
        if len(text) > MAX_DIGITS:
            raise argparse.ArgumentTypeError(f"must be an integer between {low} and {high}, got a "
                                             f"{len(text)}-character value")
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer between {low} and {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def real(low: float, high: float, *, above: bool = False):
    """An argparse type: a finite number in [low, high] (or (low, high] with `above`)."""
    interval = f"{'above' if above else 'between'} {low:g}{' and at most ' if above else ' and '}{high:g}"

    def parse(text: str) -> float:
        text = text.strip()
        if len(text) > MAX_DIGITS:
            raise argparse.ArgumentTypeError(f"must be a number {interval}, got a {len(text)}-character value")
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {interval}, got {text!r}") from None
        if not math.isfinite(value) or not (low < value if above else low <= value) or value > high:
            raise argparse.ArgumentTypeError(f"must be a number {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def seed():
    """An argparse type: a seed in [0, 2^63 - 1] (`seeding.MAX_SEED`)."""
    return integer(0, MAX_SEED)
