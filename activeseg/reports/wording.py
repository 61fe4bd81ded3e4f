"""Sentences about a change between two numbers that say what the printed numbers show.

"accuracy falls 0.882 -> 0.882" reads as a fall the numbers do not show; "rises 0.96x" calls a
drop a rise. The direction is decided on the *printed* (rounded) values, so a sentence never
claims a change its own digits cannot show.
"""

from __future__ import annotations

__all__ = ["change", "ratio_change"]


def change(before: float, after: float, digits: int = 3) -> str:
    """A verb phrase for a move from ``before`` to ``after`` at ``digits`` decimals.

    ``"is unchanged at 0.882"`` when both print the same, else ``"falls from 0.882 to 0.871"``
    or ``"rises from 0.882 to 0.905"``.
    """
    a, b = f"{before:.{digits}f}", f"{after:.{digits}f}"
    if a == b or float(a) == float(b):  # "-0.000" and "0.000" print differently
        return f"is unchanged at {b}"
    verb = "falls" if float(b) < float(a) else "rises"
    return f"{verb} from {a} to {b}"


def ratio_change(ratio: float, reference: str = "clean", digits: int = 2) -> str:
    """A verb phrase for a value that is ``ratio`` times its ``reference``.

    ``"is unchanged at 1.00x clean"`` when the printed ratio is 1, ``"falls to 0.96x clean"``
    below it and ``"rises to 2.31x clean"`` above it.
    """
    printed = f"{ratio:.{digits}f}"
    one = f"{1:.{digits}f}"
    if printed == one:
        return f"is unchanged at {printed}x {reference}"
    verb = "falls" if float(printed) < 1 else "rises"
    return f"{verb} to {printed}x {reference}"
